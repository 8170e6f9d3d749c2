"""Production hardening (issue 17): inputs that must not poison a registry, idempotent retries,
versions and rollback, structured logs, reproducible updates.

Every refusal is checked through the CLI as an operator meets it: exit status 2, a message naming
the file and the problem, and not one byte written to the registry.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from _production_data import DAY, T0, synthetic_log, tiny_settings, write_periods
from smlrec.cli import main
from smlrec.production import Recommender, init_registry, update_once
from smlrec.production.registry import ModelRegistry
from test_production import PRODUCTION_STRATEGIES

HISTORY = 4


@pytest.fixture(scope="module")
def initialised(tmp_path_factory):
    """A fine-tune registry at version 1 (number ids from a generic CSV) and the next two periods."""
    root = tmp_path_factory.mktemp("hardening")
    history, batches = write_periods(synthetic_log(6), root / "data", HISTORY)
    init_registry(history, root / "reg", "fine-tune", tiny_settings("fine-tune", HISTORY))
    return root / "reg", batches


@pytest.fixture()
def reg(initialised, tmp_path):
    source, batches = initialised
    shutil.copytree(source, tmp_path / "reg")
    return tmp_path / "reg", batches


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file of the registry with its bytes (the lock file's pid line aside)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def refused(capsys, root: Path, batch: Path, *flags: str) -> str:
    """Run `smlrec update` expecting a refusal: exit 2, nothing written; returns stderr."""
    before = snapshot(root)
    assert main(["update", "--registry", str(root), "--data", str(batch), *flags]) == 2
    assert snapshot(root) == before
    err = capsys.readouterr().err
    assert str(batch) in err
    return err


def batch_file(path: Path, users, items, times) -> Path:
    pd.DataFrame({"user": users, "item": items, "time": times}).to_csv(path, index=False)
    return path


# -- defect 1: millisecond timestamps ---------------------------------------------------------------

def test_a_batch_in_milliseconds_is_refused_with_a_clear_message(reg, tmp_path, capsys):
    root, _ = reg
    batch = batch_file(tmp_path / "ms.csv", [1000, 1001], [5000, 5001],
                       [(T0 + 9 * DAY) * 1000, (T0 + 9 * DAY + 60) * 1000])
    err = refused(capsys, root, batch)
    assert "look like milliseconds" in err and "unix seconds" in err and "Traceback" not in err
    history = tmp_path / "history-ms.csv"                # init refuses a history in milliseconds too
    batch_file(history, [1, 2], [3, 4], [T0 * 1000, (T0 + 1) * 1000])
    assert main(["init", "--data", str(history), "--registry", str(tmp_path / "new"), "--periods", "2",
                 "--plan", "1,0,0,1"]) == 2
    assert "look like milliseconds" in capsys.readouterr().err
    assert not (tmp_path / "new" / "LATEST").exists()


# -- defect 2: far-future timestamps ----------------------------------------------------------------

def test_a_batch_ending_in_the_far_future_is_refused_unless_forced_and_does_not_poison(reg, tmp_path, capsys):
    root, batches = reg
    year_2334 = int(pd.Timestamp("2334-01-01").timestamp())
    future = batch_file(tmp_path / "future.csv", [1000, 1001], [5000, 5001], [T0 + 9 * DAY, year_2334])
    err = refused(capsys, root, future)
    assert "2334-01-01" in err and "beyond now + 1 days" in err and "--force" in err
    # a correct batch after the refusal is applied as usual: the bad file changed nothing
    assert main(["update", "--registry", str(root), "--data", str(batches[0])]) == 0
    assert ModelRegistry(root).latest_version() == 2
    assert main(["update", "--registry", str(root), "--data", str(future), "--force"]) == 0
    assert "beyond now" in capsys.readouterr().err                    # printed as a forced warning
    assert main(["update", "--registry", str(root), "--data", str(batches[1]),
                 "--max-future", "banana"]) == 2
    assert "--max-future 'banana'" in capsys.readouterr().err


# -- defect 3: the format is the registry's, not the batch file name's ------------------------------

def test_the_format_recorded_at_init_reads_every_batch_whatever_its_name(tmp_path, capsys):
    frame = synthetic_log(6).rename(columns={"user": "userId", "item": "movieId", "time": "timestamp"})
    frame.insert(2, "rating", 4.0)
    history, batches = write_periods(frame, tmp_path / "data", HISTORY)
    history = history.rename(history.with_name("ratings.csv"))         # MovieLens, by its name
    init_registry(history, tmp_path / "reg", "fine-tune", tiny_settings("fine-tune", HISTORY))
    reading = ModelRegistry(tmp_path / "reg").load().manifest["reading"]
    assert reading["format"] == "movielens" and reading["user_ids"] == reading["item_ids"] == "number"
    assert reading["user_col"] == "userId" and reading["time_unit"] == "s"
    b1 = batches[0].rename(batches[0].with_name("b1.csv"))               # same columns, another name
    assert main(["update", "--registry", str(tmp_path / "reg"), "--data", str(b1)]) == 0
    assert ModelRegistry(tmp_path / "reg").load().manifest["reading"] == reading


def test_a_separator_recorded_at_init_is_used_for_every_batch(tmp_path, capsys):
    frame = synthetic_log(6)
    history, batches = write_periods(frame, tmp_path / "data", HISTORY)
    for path in (history, *batches):       # rewrite with ';' (detected from the history's header)
        pd.read_csv(path).to_csv(path, sep=";", index=False)
    init_registry(history, tmp_path / "reg", "fine-tune", tiny_settings("fine-tune", HISTORY))
    assert ModelRegistry(tmp_path / "reg").load().reading["sep"] == ";"
    comma = batch_file(tmp_path / "comma.csv", [1000], [5000], [T0 + 9 * DAY])
    err = refused(capsys, tmp_path / "reg", comma)
    assert "no user column 'user'" in err
    assert main(["update", "--registry", str(tmp_path / "reg"), "--data", str(batches[0])]) == 0


# -- defect 4: ids normalised one way --------------------------------------------------------------

def test_number_ids_accept_whole_numbers_in_any_spelling_and_refuse_text(reg, tmp_path, capsys):
    root, _ = reg
    before = ModelRegistry(root).load()
    assert before.user_ids.dtype.kind == "i"              # the history's CSV ids were all numbers
    path = tmp_path / "spellings.csv"
    path.write_text(f"user,item,time\n 1000 ,5000.0,{T0 + 9 * DAY}\n1000.0, 5001 ,{T0 + 9 * DAY + 1}\n"
                    f"1e3,5002,{T0 + 9 * DAY + 2}\n")
    assert main(["update", "--registry", str(root), "--data", str(path)]) == 0
    after = ModelRegistry(root).load()
    assert (after.n_users, after.n_items) == (before.n_users, before.n_items)   # user 1000, no new ids
    bad = tmp_path / "abc.csv"
    bad.write_text(f"user,item,time\n1000,5000,{T0 + 10 * DAY}\nabc,5001,{T0 + 10 * DAY}\n")
    err = refused(capsys, root, bad)
    assert "line 3, column 'user': non-numeric id 'abc'" in err
    half = tmp_path / "half.csv"
    half.write_text(f"user,item,time\n339.5,5001,{T0 + 10 * DAY}\n")
    assert "id '339.5' is not a whole number" in refused(capsys, root, half)


def test_text_ids_are_stripped_and_decimal_numbers_refused(tmp_path, capsys):
    frame = synthetic_log(6)
    frame["user"] = "u" + frame["user"].astype(str)         # text ids
    history, _ = write_periods(frame, tmp_path / "data", HISTORY)
    init_registry(history, tmp_path / "reg", "fine-tune", tiny_settings("fine-tune", HISTORY))
    registry = ModelRegistry(tmp_path / "reg")
    assert registry.load().reading["user_ids"] == "text" and registry.load().reading["item_ids"] == "number"
    n_users = registry.load().n_users
    decimal = tmp_path / "decimal.csv"
    decimal.write_text(f"user,item,time\nu1000,5000,{T0 + 9 * DAY}\n339.0,5001,{T0 + 9 * DAY}\n")
    err = refused(capsys, tmp_path / "reg", decimal)
    assert "id '339.0' looks like a whole number written as a decimal" in err and "'user'" in err
    spaced = tmp_path / "spaced.csv"
    spaced.write_text(f"user,item,time\n  u1000  ,5000,{T0 + 9 * DAY}\n")
    assert main(["update", "--registry", str(tmp_path / "reg"), "--data", str(spaced)]) == 0
    assert registry.load().n_users == n_users                             # "  u1000  " is u1000
    served = Recommender.from_registry(tmp_path / "reg")
    assert served.lookup([" u1000 ", "u1000", "339.0"]).tolist()[:2] == [served.user_row["u1000"]] * 2


def test_queries_are_normalised_like_batches(reg):
    root, _ = reg
    served = Recommender.from_registry(root)
    row = served.user_row[1000]
    assert served.lookup([" 1000 ", "1000", 1000, "1000.0", "abc", "1000.5"]).tolist() == [row] * 4 + [-1, -1]
    top = served.recommend([" 1000 ", "abc"], k=3)
    assert list(top.groupby("user", sort=False)["fallback"].all().items()) == [(" 1000 ", False), ("abc", True)]


# -- defect 7: idempotent retries, versions, rollback, recommend --version, JSON logs ----------------

def test_retrying_the_committed_batch_exits_0_and_writes_nothing(reg, capsys):
    root, batches = reg
    assert main(["update", "--registry", str(root), "--data", str(batches[0])]) == 0
    before = snapshot(root)
    capsys.readouterr()
    # as if the first run was killed after its commit and the scheduler retries it
    assert main(["update", "--registry", str(root), "--data", str(batches[0])]) == 0
    assert "already applied: version 2 was built from this batch" in capsys.readouterr().out
    assert snapshot(root) == before
    assert main(["update", "--registry", str(root), "--data", str(batches[1])]) == 0
    err = refused(capsys, root, batches[0])                  # an older batch is a refusal
    assert "already applied" in err and "period 4" in err


def test_versions_rollback_and_recommend_a_chosen_version(reg, tmp_path, capsys):
    root, batches = reg
    for batch in batches:
        assert main(["update", "--registry", str(root), "--data", str(batch)]) == 0
    capsys.readouterr()
    assert main(["versions", "--registry", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["version", "created", "strategy"] and len(lines) == 4
    assert lines[3].startswith("*") and lines[3].split()[1] == "3" and "period-05.csv" in lines[3]
    assert "2020-09-13" in lines[1]                          # the data range starts with the history
    assert main(["rollback", "--registry", str(root), "--to", "v1", "--log-json"]) == 0
    out, err = capsys.readouterr()
    assert "LATEST is version 1 again (was 3)" in out
    event = json.loads(err.strip().splitlines()[-1])
    assert event["event"] == "rollback" and event["version"] == 1 and event["previous"] == 3
    registry = ModelRegistry(root)
    assert registry.latest_version() == 1 and registry.versions() == [1, 2, 3]
    assert [e["event"] for e in registry.journal()] == ["commit"] * 3 + ["rollback"]
    assert main(["versions", "--registry", str(root), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["latest"] for r in rows] == [True, False, False]
    out_csv = tmp_path / "v2.csv"
    assert main(["recommend", "--registry", str(root), "--user", "1000", "--version", "2", "--out", str(out_csv)]) == 0
    assert pd.read_csv(out_csv)["version"].eq(2).all()
    assert main(["recommend", "--registry", str(root), "--user", "1000", "--version", "9"]) == 2
    assert "version 9 is missing" in capsys.readouterr().err
    # the next update builds on version 1 and gets a new number; 2 and 3 are kept and still load
    assert main(["update", "--registry", str(root), "--data", str(batches[0])]) == 0
    assert registry.latest_version() == 4 and registry.versions() == [1, 2, 3, 4]
    assert [d["period"] for d in registry.load(4).data] == [3, 4]
    assert registry.load(3).version == 3
    assert main(["rollback", "--registry", str(root), "--to", "7"]) == 2
    assert "no committed version 7" in capsys.readouterr().err


def test_update_logs_json_lines_for_updates_and_refusals(reg, tmp_path, capsys):
    root, batches = reg
    assert main(["update", "--registry", str(root), "--data", str(batches[0]), "--log-json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    update = [e for e in events if e["event"] == "update"][0]
    assert update["version"] == 2 and update["previous"] == 1 and update["rows"] == 120
    assert len(update["sha256"]) == 64 and update["level"] == "info" and update["time"].endswith("Z")
    empty = tmp_path / "empty.csv"
    empty.write_text("user,item,time\n")
    assert main(["update", "--registry", str(root), "--data", str(empty), "--log-json"]) == 2
    lines = capsys.readouterr().err.splitlines()
    refusal = json.loads(lines[0])
    assert refusal["event"] == "update_refused" and refusal["level"] == "error" and "no rows" in refusal["error"]


# -- defect 5: reproducible updates ------------------------------------------------------------------

@pytest.mark.parametrize("strategy", PRODUCTION_STRATEGIES)
def test_two_updates_from_the_same_version_are_byte_identical_on_two_threads(tmp_path, strategy):
    # 600 rows a period and 32-d: large enough that SML's two-thread reductions differed (by ~1e-7)
    # without torch's deterministic kernels; the default tiny log never showed it.
    history, batches = write_periods(synthetic_log(6, rows=600), tmp_path / "data", HISTORY, rows=600)
    settings = tiny_settings(strategy, HISTORY)
    settings["threads"] = 2          # multi-threaded reductions: the case that used to differ
    settings["mf"]["dim"] = 32
    init_registry(history, tmp_path / "a", strategy, settings)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for name in ("a", "b"):
        update_once(tmp_path / name, batches[0])
    weights = [(tmp_path / name / "v000002" / "weights.safetensors").read_bytes() for name in ("a", "b")]
    assert weights[0] == weights[1]
    assert ModelRegistry(tmp_path / "a").load().settings["threads"] == 2


# -- defect 8 (start-up): `smlrec recommend` loads only what it needs --------------------------------

def test_recommend_imports_neither_the_web_stack_nor_plotting_nor_the_compiler(reg, tmp_path):
    """Nor torch and pandas (issue 25): a version with served tables is answered with numpy."""
    import os
    import subprocess
    import sys

    root, _ = reg
    script = ("import sys\nfrom smlrec.cli import main\n"
              f"assert main(['recommend', '--registry', {str(root)!r}, '--user', '1000', '--k', '3']) == 0\n"
              "print(sorted(m for m in ('matplotlib', 'fastapi', 'uvicorn', 'starlette', 'torch._dynamo', "
              "'torch', 'pandas') if m in sys.modules))\n")
    src = str(Path(__file__).resolve().parent.parent / "src")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=src), timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "user,rank,item,score,fallback,version" and len(lines) == 5
    assert lines[-1] == "[]"          # the served tables answer without rebuilding the strategy
