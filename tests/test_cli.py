"""`smlrec replay` end to end, in-process: files, columns, and clean failures."""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import pandas as pd
import pytest

import smlrec
from smlrec.cli import main
from smlrec.evaluation.metrics import METRIC_NAMES
from smlrec.experiment.results import PERIOD_COLUMNS, SUMMARY_COLUMNS

from helpers import random_rows, write_generic_log

BREAKDOWN_COLUMNS = ["strategy", "period", "role", "user_group", "item_group", "interactions",
                     *METRIC_NAMES]
BREAKDOWN_COLUMNS += ["protocol", "auc", "logloss"]   # added with the protocols, after the old ones
FAST = ["--threads", "1", "--no-progress", "--set", "mf.dim=8",
        "--set", "strategy.full-retrain.epochs=1", "--set", "strategy.fine-tune.epochs=1"]


def _replay(data, out, *extra) -> int:
    return main(["replay", "--data", str(data), "--periods", "7", "--plan", "2,2,1,2",
                 "--strategies", "full-retrain,fine-tune", "--pretrain-epochs", "2",
                 "--out", str(out), *FAST, *extra])


def test_replay_writes_the_documented_results(tmp_path, capsys):
    data = write_generic_log(tmp_path / "log.csv", n_rows=300, seed=2)
    out = tmp_path / "runs" / "one"
    assert _replay(data, out) == 0
    printed = capsys.readouterr().out
    assert "full-retrain" in printed and str(out) in printed
    assert sorted(p.name for p in out.iterdir()) == ["breakdown.csv", "config.json", "periods.csv",
                                                     "report", "significance.csv", "summary.csv",
                                                     "test_rows.csv.gz", "warm_cold.csv"]
    assert (out / "report" / "report.md").is_file()

    periods = pd.read_csv(out / "periods.csv")
    assert list(periods.columns) == PERIOD_COLUMNS
    assert list(periods.columns[:5]) == ["strategy", "period", "role", "label", "interactions"]
    assert list(zip(periods["strategy"], periods["period"], periods["role"])) == [
        (s, p, r) for s in ("full-retrain", "fine-tune")
        for p, r in ((4, "validation"), (5, "test"), (6, "test"))]
    metrics = periods[list(METRIC_NAMES)].to_numpy()
    assert ((metrics >= 0) & (metrics <= 1)).all()
    assert (periods["recall@5"] <= periods["recall@10"]).all()
    assert (periods["ndcg@5"] <= periods["recall@5"]).all()
    assert (periods["update_seconds"] >= 0).all()

    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert list(summary["strategy"]) == ["full-retrain", "fine-tune"]
    test = periods[periods["role"] == "test"]
    assert (summary["test_interactions"] == test.groupby("strategy", sort=False)["interactions"].sum().to_numpy()).all()
    assert ((summary[list(METRIC_NAMES)] >= 0) & (summary[list(METRIC_NAMES)] <= 1)).all().all()

    breakdown = pd.read_csv(out / "breakdown.csv")
    assert list(breakdown.columns) == BREAKDOWN_COLUMNS
    assert len(breakdown) == 4 * len(periods)
    per_period = breakdown.groupby(["strategy", "period"], sort=False)["interactions"].sum()
    assert list(per_period) == list(periods["interactions"])
    filled = breakdown[breakdown["interactions"] > 0][list(METRIC_NAMES)].to_numpy()
    assert ((filled >= 0) & (filled <= 1)).all()

    config = json.loads((out / "config.json").read_text())
    assert config["smlrec_version"] == smlrec.__version__
    assert config["data"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert config["data"]["interactions"] == 300
    assert config["settings"]["plan"] == {"pretrain": 2, "offline": 2, "validation": 1, "test": 2}
    assert config["settings"]["pretrain"]["epochs"] == 2
    assert config["strategies"] == ["full-retrain", "fine-tune"]
    assert [p["role"] for p in config["periods"]] == ["pretrain"] * 2 + ["offline"] * 2 + \
        ["validation"] + ["test"] * 2
    assert len(config["pretrain"]["losses"]) == 2
    assert not [p for p in out.parent.iterdir() if p.name != "one"]  # no temp dirs left


def test_same_seed_gives_same_results(tmp_path):
    data = write_generic_log(tmp_path / "log.csv", n_rows=300, seed=2)
    args = ["--strategies", "fine-tune"]
    assert main(["replay", "--data", str(data), "--periods", "7", "--plan", "2,2,1,2",
                 "--pretrain-epochs", "1", "--out", str(tmp_path / "a"), *FAST, *args]) == 0
    assert main(["replay", "--data", str(data), "--periods", "7", "--plan", "2,2,1,2",
                 "--pretrain-epochs", "1", "--out", str(tmp_path / "b"), *FAST, *args]) == 0
    a = pd.read_csv(tmp_path / "a" / "periods.csv")
    b = pd.read_csv(tmp_path / "b" / "periods.csv")
    timings = ["update_seconds", "scoring_seconds"]
    pd.testing.assert_frame_equal(a.drop(columns=timings), b.drop(columns=timings))


def test_malformed_data_fails_cleanly(tmp_path, capsys):
    data = write_generic_log(tmp_path / "log.csv", n_rows=300, seed=2)
    lines = data.read_text().splitlines()
    lines[150] = "u1,i2,not-a-time"
    data.write_text("\n".join(lines) + "\n")
    runs = tmp_path / "runs"
    runs.mkdir()
    assert _replay(data, runs / "bad") == 2
    err = capsys.readouterr().err
    assert "error" in err and str(data) in err and "line 151" in err and "not-a-time" in err
    assert "Traceback" not in err
    assert list(runs.iterdir()) == []  # no results directory, no temp directory
    cache = tmp_path / "cache"
    assert not cache.exists() or not list(cache.rglob("*.tmp"))


def test_missing_data_file(tmp_path, capsys):
    assert _replay(tmp_path / "nope.csv", tmp_path / "out") == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_existing_non_empty_out_is_refused(tmp_path, capsys):
    data = write_generic_log(tmp_path / "log.csv", n_rows=300, seed=2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _replay(data, out) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("assignment, shown", [("mf.dimm=3", "dimm"), ("mf.batch_size=0", "mf.batch_size"),
                                               ("seed=many", "seed")])
def test_bad_setting_exit_code(tmp_path, capsys, assignment, shown):
    data = write_generic_log(tmp_path / "log.csv", n_rows=300, seed=2)
    assert _replay(data, tmp_path / "out", "--set", assignment) == 2
    err = capsys.readouterr().err
    assert shown in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_empty_calendar_window_exit_code(tmp_path, capsys):
    # 300 rows 10 minutes apart span ~2 days; a 1-day gap leaves an empty 8h window.
    users, items, times = random_rows(300, 20, 30, seed=1)
    times = times.copy()
    times[150:] += 86400
    path = tmp_path / "log.csv"
    path.write_text("user,item,time\n" + "".join(f"u{u},i{i},{t}\n" for u, i, t in zip(users, items, times)))
    assert main(["replay", "--data", str(path), "--every", "8h", "--plan", "2,2,1,2",
                 "--out", str(tmp_path / "out"), *FAST]) == 2
    assert "--drop-empty" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_udata_with_explicit_format(tmp_path):
    users, items, times = random_rows(250, 15, 25, seed=9)
    path = tmp_path / "interactions.txt"
    path.write_text("".join(f"{u + 1}\t{i + 100}\t{1 + (u + i) % 5}\t{t}\n"
                            for u, i, t in zip(users, items, times)))
    out = tmp_path / "out"
    assert main(["replay", "--data", str(path), "--format", "movielens-100k", "--periods", "7",
                 "--plan", "2,2,1,2", "--strategies", "fine-tune", "--pretrain-epochs", "1",
                 "--out", str(out), *FAST]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["interactions"] == 250
    assert config["settings"]["data"]["format"] == "movielens-100k"
    periods = pd.read_csv(out / "periods.csv")
    assert list(periods["period"]) == [4, 5, 6]
    assert np.isfinite(periods[list(METRIC_NAMES)].to_numpy()).all()


def test_empty_existing_out_is_used(tmp_path):
    data = write_generic_log(tmp_path / "log.csv", n_rows=300, seed=2)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["replay", "--data", str(data), "--periods", "7", "--plan", "2,2,1,2",
                 "--strategies", "fine-tune", "--pretrain-epochs", "1", "--out", str(out), *FAST]) == 0
    assert (out / "summary.csv").exists()


def test_strategies_command_lists_registered(capsys):
    assert main(["strategies"]) == 0
    printed = capsys.readouterr().out
    assert "full-retrain" in printed and "fine-tune" in printed


def test_every_strategy_declares_the_history_a_scored_row_reads(capsys):
    from smlrec.strategies import STRATEGIES

    undeclared = [name for name, spec in STRATEGIES.items() if not spec.history]
    assert undeclared == [], f"register(..., history=...) missing for {undeclared}"
    assert main(["strategies"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("history: ") == len(STRATEGIES)
    assert "history: last 20 items before the row" in printed          # itemknn


def test_precision_flag_reaches_the_settings():
    import argparse

    from smlrec.cli.common import replay_arguments, settings_layers
    from smlrec.config import replay_settings

    parser = argparse.ArgumentParser()
    replay_arguments(parser)
    args = parser.parse_args(["--precision", "bf16"])
    assert replay_settings(*settings_layers(args)).precision == "bf16"
    assert replay_settings(*settings_layers(parser.parse_args([]))).precision == "fp32"


def test_the_cli_log_handler_writes_to_the_current_stderr_even_after_the_old_one_closed(monkeypatch):
    import io
    import logging

    from smlrec.cli.common import configure_logging

    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    handler = configure_logging()
    try:
        logging.getLogger("smlrec.production").info("one")
        first.close()                       # what pytest's capture does between tests
        monkeypatch.setattr(sys, "stderr", second)
        errors = []
        monkeypatch.setattr(handler, "handleError", lambda record: errors.append(record))
        logging.getLogger("smlrec.production").info("two")
        assert errors == [] and "two" in second.getvalue() and "one" not in second.getvalue()
    finally:
        logging.getLogger("smlrec").removeHandler(handler)
