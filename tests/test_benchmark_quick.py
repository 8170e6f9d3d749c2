"""The benchmark's core functions at a tiny size: they run and produce every result key.

Times are not asserted (the machine is shared); only the shape of the results and the cost
models, whose numbers follow from the formulas in benchmarks/run.py.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from smlrec.config import MFSettings
from smlrec.data.synth import generate, synth_settings, write_log

RUN = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("smlrec_benchmark_run", RUN)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_cost_models(bench):
    assert bench.mf_triple_cost(64) == (2560.0, 4608.0)
    assert bench.eval_cost(64) == (128_000.0, 264_000.0)
    machine = {"matmul_gflops": 10.0, "bandwidth_gbs": 2.0}
    # 20 GFLOP take 2 s at 10 GFLOP/s; 2 GB take 1 s at 2 GB/s: compute-bound, 2 s of 4 s measured.
    r = bench.roofline(20e9, 2e9, 4.0, machine)
    assert r["bound_by"] == "compute" and r["flop_bound_s"] == pytest.approx(2.0)
    assert r["fraction_of_limit"] == pytest.approx(0.5)


def test_plan_for_reduced_and_paper_plans(bench):
    assert bench.plan_for(40, "10,20,3,7", None) == {"pretrain": 10, "offline": 20, "validation": 3, "test": 7}
    assert bench.plan_for(40, "10,20,3,7", 3) == {"pretrain": 35, "offline": 2, "validation": 0, "test": 3}
    assert bench.plan_for(40, "10,20,3,7", 2, offline=1) == {"pretrain": 37, "offline": 1, "validation": 0, "test": 2}


def test_quick_core_produces_every_key(bench, tmp_path):
    machine = bench.measure_machine("cpu", size=64, copy_mb=4, repeats=1)
    assert {"matmul_gflops", "bandwidth_gbs", "threads", "device"} <= set(machine)
    assert machine["matmul_gflops"] > 0 and machine["bandwidth_gbs"] > 0

    mf = bench.measure_mf_training(np.arange(600) % 50, np.arange(600) % 70, 50, 70,
                                   MFSettings(dim=8, batch_size=256))
    assert mf["triples"] == 600 and mf["triples_per_s"] > 0

    settings = synth_settings(regime="stable", interactions=2_000, users=100, items=150, periods=6)
    path = write_log(generate(settings), tmp_path / "log.parquet")
    config = {"data": {"path": str(path), "periods": 6}, "plan": bench.plan_for(6, "3,1,1,1", None),
              "pretrain_epochs": 1, "device": "cpu", "cache_dir": str(tmp_path / "cache"), "seed": 1,
              "strategies": ["fine-tune", "no-such-strategy"], "threads": 1, "mf_rows": 500,
              "epochs": 1}
    threads = torch.get_num_threads()
    try:  # one thread: on a shared, oversubscribed machine two spin-waiting threads crawl
        phase = bench.replay_phase(config)
    finally:
        torch.set_num_threads(threads)
    assert {"log", "pretrain", "candidates", "records", "evaluation", "mf_training",
            "peak_rss_bytes", "update_rows", "notes"} <= set(phase)
    assert any("no-such-strategy" in note for note in phase["notes"])
    assert phase["log"]["interactions"] == 2_000
    # Validation period 4 and test period 5 are scored; fine-tune updated on 4 before 5.
    assert [(r["strategy"], r["period"]) for r in phase["records"]] == [("fine-tune", 4), ("fine-tune", 5)]
    assert phase["update_rows"]["fine-tune"] == {"epochs": 1, "rows": {5: 333}, "epochs_run": {5: 1}}
    assert [(p, e) for p, _, e in phase["all_updates"]["fine-tune"]] == [(3, 1), (4, 1)]
    assert phase["mf_training_torch"]["kernel"] == "torch" and phase["evaluation_torch"]["interactions"] > 0
    assert phase["evaluation"]["interactions"] == 334

    analysis = bench.analyse("tiny", phase, machine)
    assert set(analysis["targets"]) == {"mf_training_triples_per_s", "evaluation_interactions_per_s",
                                        "peak_rss_gb", "sml_update_vs_flop_bound"}
    assert {"mf_training", "pretrain", "evaluation", "update:fine-tune"} <= set(analysis["phases"])
    assert analysis["ratios"] == {"fine-tune/sml-s": None}
    # the first update (on offline period 3) is labelled, not timed for a test period here
    assert analysis["first_update"]["fine-tune"]["period"] == 3
    text = bench.render_markdown({"command": "test", "date": "now", "machine": machine,
                                  "scales": [{"name": "tiny", "regime": "stable", "synth_seconds": 0.1,
                                              "phase": phase, "analysis": analysis}]})
    assert "## tiny" in text and "fine-tune" in text and "Targets" in text


def test_steady_state_excludes_the_first_update_from_means_ratios_and_targets(bench):
    # one offline period: SML's first (round-0-only) update, on period 4, is timed for test period 5
    records = [{"strategy": s, "period": t, "role": "test", "interactions": 10, "update_seconds": sec,
                "recall@20": 0.1, "ndcg@20": 0.05}
               for s, t, sec in (("sml", 5, 7.5), ("sml", 6, 160.0), ("sml", 7, 170.0),
                                 ("full-retrain", 5, 100.0), ("full-retrain", 6, 110.0), ("full-retrain", 7, 120.0))]
    mf = {"triples": 1000, "seconds": 1.0, "triples_per_s": 1000.0}
    phase = {"dim": 64, "records": records, "mf_training": mf,
             "pretrain": {"rows": 10, "epochs": 1, "seconds": 1.0},
             "all_updates": {"sml": [(4, 7.5, None), (5, 160.0, None), (6, 170.0, None)],
                             "full-retrain": [(4, 100.0, 5), (5, 110.0, 5), (6, 120.0, 5)]},
             "update_rows": {"full-retrain": {"epochs": 5, "rows": {5: 10, 6: 10, 7: 10},
                                              "epochs_run": {5: 5, 6: 5, 7: 5}}},
             "counted_flops": {"sml": 1e12}, "peak_rss_bytes": 1e9}
    analysis = bench.analyse("x", phase, {"matmul_gflops": 100.0, "bandwidth_gbs": 10.0})
    assert analysis["mean_update_seconds"]["sml"] == 165.0            # 7.5 s left out
    assert analysis["first_update"]["sml"] == {"period": 4, "seconds": 7.5}
    assert analysis["mean_update_seconds"]["full-retrain"] == 115.0
    assert analysis["ratios"]["full-retrain/sml"] == 115.0 / 165.0
    # The FLOP count repeats one more update like the latest one (t=7: 170 s), not the mean's.
    assert analysis["targets"]["sml_update_vs_flop_bound"]["value"] == 170.0 / 10.0   # 1e12 / 1e11 s
    assert analysis["phases"]["update:sml"]["seconds"] == 170.0 and analysis["last_test"] == 7


def test_waiting_threads_table_has_a_row_per_busy_count_and_a_column_per_setting(bench):
    machine = {"device": "cpu", "torch": "x", "threads": 2, "cpu_count": 2, "platform": "p",
               "matmul_size": 64, "matmul_gflops": 1.0, "copy_mb": 4, "bandwidth_gbs": 1.0}
    default, passive = bench.WAIT_CASES
    waits = [{"busy": b, "setting": name, "seconds": seconds}
             for b, name, seconds in [(0, default, 2.5), (0, passive, 3.5), (2, default, None), (2, passive, 6.0)]]
    io = {"log": "tiny", "cores": 2, "competitors": 2, "timeout": 9, "waits": waits,
          "cases": [{"imports": "import smlrec; import torch", "seconds": 1.0, "threads": 2}]}
    text = bench.render_markdown({"command": "test", "date": "now", "machine": machine, "scales": [],
                                  "import_order": io})
    table = text.split("### Waiting threads")[1]
    assert f"| busy processes | {default} | {passive} |" in table
    assert "| 0 | 2.5 | 3.5 |" in table and "| 2 | timed out | 6.0 |" in table


def test_flop_bound_gap_splits_the_update_into_products_and_the_rest(bench):
    # 40 s measured against a 20 s bound; matrix products 60% of the profile: the other 40% is
    # 16 s, 0.80x the bound by itself. Strategies without a FLOP bound are left out.
    analysis = {"phases": {"update:sml": {"seconds": 40.0, "flop_bound_s": 20.0},
                           "update:fine-tune": {"seconds": 1.0, "flop_bound_s": 0.0}}}
    ops = [{"op": "aten::addmm", "share": 0.35}, {"op": "aten::silu", "share": 0.3},
           {"op": "aten::mm", "share": 0.2}, {"op": "aten::bmm", "share": 0.05},
           {"op": "aten::index", "share": 0.1}]
    lines = bench.flop_bound_gaps(analysis, {"profiles": {"sml": ops, "fine-tune": ops}})
    assert len(lines) == 2 and lines[1] == ""
    assert lines[0].startswith("- sml: 2.00x its FLOP bound. Matrix products are 60% of its profile")
    assert "~16 s of its 40 s, 0.80x the bound by themselves" in lines[0]

    # sml-bf16's own count includes its padding rows: it is set against fp32 SML's bound (20 s).
    analysis["phases"]["update:sml-bf16"] = {"seconds": 30.0, "flop_bound_s": 25.0}
    lines = bench.flop_bound_gaps(analysis, {"profiles": {"sml-bf16": ops}})
    assert lines[0].startswith("- sml-bf16: 1.50x its FLOP bound (sml's).")
