"""smlrec.replay(): the replay from Python gives the command line's numbers, as DataFrames."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import smlrec
from smlrec.cli import main
from smlrec.data.log import bundled_movielens_path
from smlrec.errors import ConfigError, DataError
from smlrec.strategies import STRATEGIES
from smlrec.strategies.popularity import Popularity, PopularitySettings

from helpers import random_rows, write_generic_log

TIMING = ("update_seconds", "scoring_seconds")
FAST_FLAGS = ["--periods", "10", "--plan", "3,4,1,2", "--strategies", "pop-recent,fine-tune",
              "--pretrain-epochs", "1", "--set", "strategy.fine-tune.epochs=1", "--set", "mf.dim=16",
              "--set", "n_negatives=99", "--bootstrap", "30", "--threads", "1", "--no-progress"]
FAST_SETTINGS = dict(periods=10, plan="3,4,1,2", strategies=["pop-recent", "fine-tune"], pretrain={"epochs": 1},
                     strategy={"fine-tune": {"epochs": 1}}, mf={"dim": 16}, n_negatives=99, bootstrap_resamples=30,
                     threads=1, progress=False)


def same_table(ours: pd.DataFrame, theirs: pd.DataFrame) -> None:
    """Equal tables but for the timings (floats read back from CSV: a relative 1e-12)."""
    ours = ours.drop(columns=[c for c in TIMING if c in ours]).reset_index(drop=True)
    theirs = theirs.drop(columns=[c for c in TIMING if c in theirs]).reset_index(drop=True)
    assert list(ours.columns) == list(theirs.columns)
    assert len(ours) == len(theirs) > 0
    for column in ours.columns:
        a, b = ours[column], theirs[column]
        if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
            np.testing.assert_allclose(a.to_numpy(float), b.to_numpy(float), rtol=1e-12, atol=0,
                                       equal_nan=True, err_msg=column)
        else:
            assert a.astype(str).tolist() == b.astype(str).tolist(), column


def test_a_dataframe_of_the_bundled_data_gives_the_cli_numbers(tmp_path):
    out = tmp_path / "cli"
    assert main(["replay", "--out", str(out), "--no-report", *FAST_FLAGS]) == 0
    frame = pd.read_csv(bundled_movielens_path())      # userId, movieId, rating, timestamp
    results = smlrec.replay(frame, **FAST_SETTINGS)
    assert results.strategies == ["pop-recent", "fine-tune"]
    same_table(results.summary, pd.read_csv(out / "summary.csv"))
    same_table(results.periods, pd.read_csv(out / "periods.csv"))
    same_table(results.significance, pd.read_csv(out / "significance.csv"))
    same_table(results.warm_cold, pd.read_csv(out / "warm_cold.csv"))
    assert results.summary["recall@20"].between(0, 1).all()
    assert set(results.summary["recall@20_lo"] <= results.summary["recall@20"]) == {True}

    saved = results.save(tmp_path / "api")           # the CLI's results directory, report included
    assert {p.name for p in out.iterdir()} | {"report"} == {p.name for p in saved.iterdir()}
    for name in ("summary.csv", "periods.csv", "breakdown.csv", "warm_cold.csv", "significance.csv"):
        same_table(pd.read_csv(saved / name), pd.read_csv(out / name))
    ours, theirs = (json.loads((d / "config.json").read_text()) for d in (saved, out))
    assert ours["settings"]["plan"] == theirs["settings"]["plan"]
    assert ours["data"]["interactions"] == theirs["data"]["interactions"]
    assert (saved / "report" / "report.html").is_file()


def test_a_path_and_renamed_columns(tmp_path):
    path = write_generic_log(tmp_path / "log.csv")
    by_path = smlrec.replay(path, periods=7, plan="2,2,1,2", strategies="pop", bootstrap_resamples=0,
                            progress=False)
    users, items, times = random_rows()
    frame = pd.DataFrame({"who": [f"u{u}" for u in users], "what": [f"i{i}" for i in items],
                          "when": pd.to_datetime(times, unit="s")})
    by_frame = smlrec.replay(frame, user_col="who", item_col="what", time_col="when", periods=7,
                             plan=(2, 2, 1, 2), strategies=["pop"], bootstrap_resamples=0, progress=False)
    same_table(by_frame.summary, by_path.summary)
    assert "pop" in str(by_frame)


def test_a_strategy_class_from_user_code(tmp_path):
    class Recent(Popularity):
        """Popularity halving every period, defined outside the package."""

        name = "test-api-recent"
        Settings = PopularitySettings

    frame = pd.read_csv(write_generic_log(tmp_path / "log.csv"))
    try:
        results = smlrec.replay(frame, periods=7, plan="2,2,1,2", strategies=[Recent, "pop-recent"],
                                strategy={"test-api-recent": {"decay": 0.5}}, bootstrap_resamples=0,
                                progress=False)
    finally:
        STRATEGIES.pop("test-api-recent", None)
    summary = results.summary.set_index("strategy")
    # the same class and decay as the built-in pop-recent: the same numbers
    np.testing.assert_allclose(summary.loc["test-api-recent", "ndcg@20"], summary.loc["pop-recent", "ndcg@20"],
                               rtol=0, atol=0)
    report = results.report(tmp_path / "report")
    assert (report / "report.html").is_file()


def test_bad_input_is_a_clear_error(tmp_path):
    frame = pd.DataFrame({"user": [1, 2], "item": [3, 4]})
    with pytest.raises(DataError, match="no time column found"):
        smlrec.replay(frame, progress=False)
    with pytest.raises(ConfigError, match="expected a DataFrame, a path"):
        smlrec.replay(42, progress=False)
    with pytest.raises(ConfigError, match="subclass of smlrec.strategies.Strategy"):
        smlrec.replay(frame, strategies=[dict], progress=False)
    with pytest.raises(ConfigError, match="unknown strategy 'nope'"):
        smlrec.replay(write_generic_log(tmp_path / "log.csv"), strategies=["nope"], progress=False)
