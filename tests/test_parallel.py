"""Parallel replays (--jobs K): the same results directory as the sequential loop, timings aside."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from smlrec.cli import main
from smlrec.config import replay_settings
from smlrec.experiment.parallel import run_in_pool, worker_threads
from smlrec.experiment.sweep import parse_grid, run_sweep

from helpers import write_generic_log

TIMED = ("update_seconds", "scoring_seconds")
RESULT_FILES = ["breakdown.csv", "config.json", "periods.csv", "significance.csv", "summary.csv",
                "test_rows.csv.gz", "warm_cold.csv"]


def _replay(data: Path, out: Path, jobs: int, cache: Path) -> int:
    # Every default strategy (pop ... sml-s): each draws from streams named by (seed, name).
    return main(["replay", "--data", str(data), "--periods", "7", "--plan", "2,2,1,2",
                 "--pretrain-epochs", "2", "--threads", "1", "--no-progress", "--no-report",
                 "--set", "mf.dim=8", "--set", "n_negatives=20", "--cache-dir", str(cache),
                 "--jobs", str(jobs), "--out", str(out)])


def _untimed(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    return frame.drop(columns=[c for c in frame.columns if c in TIMED])


def _untimed_config(path: Path) -> dict:
    config = json.loads(path.read_text())
    for key in ("wall_seconds", "scoring_seconds", "bootstrap_seconds"):
        config.pop(key, None)
    config["pretrain"].pop("seconds")
    config["settings"].pop("cache_dir")     # each run below draws its candidates into its own cache
    return config


def test_jobs_2_writes_the_results_of_jobs_1(tmp_path):
    data = write_generic_log(tmp_path / "log.csv", n_rows=400, seed=2)
    one, two = tmp_path / "one", tmp_path / "two"
    assert _replay(data, one, 1, tmp_path / "cache1") == 0
    assert _replay(data, two, 2, tmp_path / "cache2") == 0      # draws its own candidates
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir()) == RESULT_FILES
    for name in ("periods.csv", "summary.csv", "breakdown.csv", "warm_cold.csv", "significance.csv",
                 "test_rows.csv.gz"):
        pd.testing.assert_frame_equal(_untimed(two / name), _untimed(one / name), check_exact=True)
    periods = pd.read_csv(two / "periods.csv")
    assert list(dict.fromkeys(periods["strategy"])) == json.loads((one / "config.json").read_text())["strategies"]
    assert _untimed_config(two / "config.json") == _untimed_config(one / "config.json")


def test_sweep_jobs_2_equals_jobs_1(tmp_path):
    data = write_generic_log(tmp_path / "log.csv", n_rows=400, seed=3)
    layers = [{"data": {"path": str(data), "periods": 7},
               "plan": {"pretrain": 2, "offline": 1, "validation": 2, "test": 2},
               "pretrain": {"epochs": 1}, "mf": {"dim": 8}, "n_negatives": 20,
               "strategies": ["fine-tune", "pop"], "cache_dir": str(tmp_path / "cache"), "threads": 1}]
    axes = [parse_grid("strategy.fine-tune.epochs=1,2"), parse_grid("mf.lr=0.01,0.05")]
    seen: list[int] = []
    one = run_sweep(layers, axes)
    two = run_sweep(layers, axes, jobs=2, on_point=lambda number, total, point: seen.append(number))
    assert sorted(seen) == [0, 1, 2, 3]
    for a, b in ((one.table, two.table), (one.periods, two.periods)):
        pd.testing.assert_frame_equal(b.drop(columns=[c for c in b.columns if c in TIMED]),
                                      a.drop(columns=[c for c in a.columns if c in TIMED]), check_exact=True)


def test_worker_threads_share_the_cores():
    unset = replay_settings({})
    assert worker_threads(unset, 2, cores=8) == 4
    assert worker_threads(unset, 3, cores=8) == 2
    assert worker_threads(unset, 16, cores=8) == 1                 # at least one
    assert worker_threads(replay_settings({"threads": 3}), 2, cores=8) == 3   # --threads wins


def _stamp(_item: int) -> int:
    return time.monotonic_ns()   # CLOCK_MONOTONIC: one clock for every process on Linux


def test_run_in_pool_keeps_item_order_and_raises_a_workers_error():
    assert run_in_pool(abs, [-3, 2, -1], jobs=2, threads=1) == [3, 2, 1]
    finished: list[int] = []
    stamps = run_in_pool(_stamp, [0, 1, 2], jobs=1, threads=1, start_order=[2, 0, 1],
                         on_done=lambda index, result: finished.append(index))
    assert sorted(finished) == [0, 1, 2]
    assert stamps[2] < stamps[0] < stamps[1]          # one worker ran them in the start order
    with pytest.raises(TypeError):
        run_in_pool(abs, ["x"], jobs=2, threads=1)


def test_jobs_must_be_positive(tmp_path, capsys):
    data = write_generic_log(tmp_path / "log.csv", n_rows=200, seed=2)
    assert _replay(data, tmp_path / "out", 0, tmp_path / "cache") != 0
    assert "--jobs must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
