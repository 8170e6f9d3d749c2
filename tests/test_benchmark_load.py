"""benchmarks/load.py's report, and benchmarks/run.py keeping it: the serving section of BENCHMARKS.md
must survive a regeneration of the rest (issue 25, D4). No load is generated here: the load test is
a measurement, run by hand."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def load():
    return _module("smlrec_benchmark_load", BENCH / "load.py")


def test_the_committed_serving_results_render_with_cpu_commit_and_command(load):
    results = json.loads((BENCH / "results-serve.json").read_text())
    text = load.markdown(results)
    assert text.startswith(load.SECTION)
    assert f"Commit {results['conditions']['commit']}" in text and results["conditions"]["cpu"] in text
    assert "python benchmarks/load.py" in text and "smlrec / minimal requests/s" in text
    assert "users/s at k = 20" in text and "from a cold process" in text
    assert len({row["concurrency"] for row in results["servers"]["smlrec"]}) == len(results["ratios"])


def test_wrk_output_is_parsed_into_milliseconds(load):
    assert load._ms("812.00us") == 0.812 and load._ms("1.50ms") == 1.5 and load._ms("2.00s") == 2000.0


def test_a_regenerated_report_keeps_the_serving_section(load, tmp_path):
    run = _module("smlrec_benchmark_run_for_load", BENCH / "run.py")
    report = tmp_path / "BENCHMARKS.md"
    report.write_text("# Benchmarks\n\nold body\n")
    section = load.markdown(json.loads((BENCH / "results-serve.json").read_text()))
    load.write_section(report, section)
    assert report.read_text().count(load.SECTION) == 1 and "old body" in report.read_text()
    regenerated = run.with_serving_section(report, "# Benchmarks\n\nnew body\n")
    assert "new body" in regenerated and "old body" not in regenerated
    assert regenerated.endswith(section.rstrip("\n") + "\n") and run.SERVING_SECTION == load.SECTION
    assert run.with_serving_section(tmp_path / "missing.md", "x\n") == "x\n"
