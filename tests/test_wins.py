"""Who wins where: history-length buckets, the saved per-row results, per-group intervals, the
figure and table, several runs and several logs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from smlrec.cli import main
from smlrec.errors import ConfigError
from smlrec.evaluation.groups import (bucket_labels, history_buckets, history_lengths, history_lengths_reference,
                                      parse_edges)
from smlrec.evaluation.uncertainty import RowOutcomes, bootstrap
from smlrec.experiment.results import format_summary, order_line, top_order
from smlrec.random import make_rng
from smlrec.report.tables import top_three_table, top_three_text
from smlrec.report.wins import TIED_MARK, WINNER_MARK, group_table, wins_text

from helpers import write_generic_log


def test_history_lengths_count_only_earlier_rows_of_the_user():
    # log order: u7 u3 u7 u7 u3 u9 u7
    users = np.array([7, 3, 7, 7, 3, 9, 7])
    assert history_lengths(users).tolist() == [0, 0, 1, 2, 1, 0, 3]
    assert history_buckets(history_lengths(users), (0, 1, 3)).tolist() == [0, 0, 1, 1, 1, 0, 2]


def test_history_lengths_equal_the_slow_twin():
    rng = np.random.default_rng(4)
    users = rng.integers(0, 50, 3000)
    np.testing.assert_array_equal(history_lengths(users), history_lengths_reference(users))


def test_default_buckets_and_their_labels():
    assert bucket_labels() == ["0", "1-4", "5-19", "20+"]
    lengths = np.array([0, 1, 4, 5, 19, 20, 300])
    assert history_buckets(lengths).tolist() == [0, 1, 1, 2, 2, 3, 3]
    assert parse_edges("0,2") == (0, 2) and bucket_labels((0, 2)) == ["0-1", "2+"]
    for bad in ("1,5", "0,5,5", "0,x"):
        with pytest.raises(ConfigError, match="history buckets"):
            parse_edges(bad)


# ----------------------------------------------------------------------------------------------
# per-group R@20 and intervals from rows


def hand_rows() -> pd.DataFrame:
    """Eight test rows of four users; ranks of three strategies.

    rows 0-3: users 0, 1 warm with long histories; rows 4-7: users 2, 3 cold, histories 0 and 1.
    a hits (rank < 20) on every row, b on none, c on every row but row 0.
    """
    return pd.DataFrame({
        "protocol": "sampled", "period": [5, 5, 5, 5, 6, 6, 6, 6], "position": range(100, 108),
        "user": [0, 1, 0, 1, 2, 3, 2, 3], "cold_user": [0, 0, 0, 0, 1, 1, 1, 1],
        "history": [25, 7, 26, 8, 0, 0, 1, 1],
        "rank:a": [0, 3, 19, 1, 5, 0, 2, 7], "rank:b": [20, 50, 999, 21, 30, 40, 20, 25],
        "rank:c": [20, 0, 1, 2, 3, 4, 5, 6]})


def test_group_values_are_the_share_of_hits_and_winner_and_ties_are_marked():
    table = group_table(hand_rows(), ["a", "b", "c"], 200, seed=1).set_index(["group", "strategy"])
    assert table.loc[("warm users", "a"), "interactions"] == 4
    assert table.loc[("warm users", "c"), "recall@20"] == pytest.approx(3 / 4)
    assert table.loc[("cold users", "c"), "recall@20"] == pytest.approx(1.0)
    assert table.loc[("history 0", "a"), "interactions"] == 2
    assert table.loc[("history 1-4", "b"), "recall@20"] == 0.0
    assert table.loc[("history 5-19", "c"), "recall@20"] == pytest.approx(1.0)      # rows 1, 3
    assert table.loc[("history 20+", "c"), "recall@20"] == pytest.approx(1 / 2)     # rows 0, 2
    # warm users: a wins (1.0, interval [1, 1]); c (.75) has an interval reaching 1: tied; b does not.
    warm = table.loc["warm users"]
    assert warm["winner"].to_dict() == {"a": True, "b": False, "c": False}
    assert warm["tied"].to_dict() == {"a": False, "b": False, "c": True}
    assert (warm.loc["a", "recall@20_lo"], warm.loc["a", "recall@20_hi"]) == (1.0, 1.0)
    assert warm.loc["c", "recall@20_hi"] == 1.0 and warm.loc["b", "recall@20_hi"] == 0.0
    # cold users: a and c both hit every row: both win, nobody is merely tied.
    cold = table.loc["cold users"]
    assert cold["winner"].to_dict() == {"a": True, "b": False, "c": True}
    assert not cold["tied"].any()
    text = wins_text(table.reset_index().assign(log="L", protocol="sampled"), "L", "sampled").markdown()
    assert f"0.7500 [" in text and TIED_MARK in text and WINNER_MARK in text


def test_group_intervals_are_the_bootstrap_of_the_groups_rows_by_user():
    rows = hand_rows()
    table = group_table(rows, ["a", "c"], 300, seed=7, stream=("sampled",)).set_index(["group", "strategy"])
    warm = rows[rows["cold_user"] == 0]
    hits = np.stack([(warm[f"rank:{s}"].to_numpy() < 20).astype(float) for s in ("a", "c")])
    direct = bootstrap(RowOutcomes(["a", "c"], warm["user"].to_numpy(), warm["period"].to_numpy(),
                                   {"recall@20": hits}), 300, make_rng(7, "who-wins", "sampled", "warm users"))
    expected = direct.intervals().set_index("strategy")
    for s in ("a", "c"):
        assert table.loc[("warm users", s), "recall@20_lo"] == expected.loc[s, "recall@20_lo"]
        assert table.loc[("warm users", s), "recall@20_hi"] == expected.loc[s, "recall@20_hi"]
    # users 0 and 1 each hit 1 of 2 or 2 of 2 rows under c: a resample's value is 2/4, 3/4 or 4/4
    assert set(direct.samples["recall@20"][1]) <= {0.5, 0.75, 1.0}


def test_a_strategy_without_a_rank_on_every_row_is_left_out():
    rows = hand_rows()
    rows.loc[0, "rank:b"] = -1
    assert set(group_table(rows, ["a", "b"], 10, seed=1)["strategy"]) == {"a"}


def test_top_three_lines_put_the_protocols_side_by_side():
    assert top_order(["x", "y", "z", "w"], [0.2, 0.3, np.nan, 0.2]) == [("y", 0.3), ("x", 0.2), ("w", 0.2)]
    assert order_line([("y", 0.3), ("x", 0.2), ("w", 0.2)]) == "y (0.3000) > x (0.2000) = w (0.2000)"
    summary = pd.DataFrame({"strategy": ["pop", "ease", "sml", "knn"] * 2,
                            "protocol": ["sampled"] * 4 + ["full"] * 4,
                            "recall@20": [.29, .35, .27, .34, .05, .09, .04, .10]})
    for column in ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "ndcg@20"):
        summary[column] = 0.0
    summary["test_interactions"], summary["update_seconds"] = 10, 0.0
    text = format_summary(summary)
    assert "  sampled: ease (0.3500) > knn (0.3400) > pop (0.2900)" in text
    assert "  full: knn (0.1000) > ease (0.0900) > pop (0.0500)" in text
    order = pd.DataFrame({"sampled R@20": [.29, .35, .27, .34], "full R@20": [.05, .09, .04, .10]},
                         index=["pop", "ease", "sml", "knn"])
    top = top_three_table(order)
    assert top["sampled R@20 strategy"].tolist() == ["ease", "knn", "pop"]
    assert top["full R@20 strategy"].tolist() == ["knn", "ease", "pop"]
    assert "| 1 | ease (0.3500) | knn (0.1000) |" in top_three_text(top).markdown()


# ----------------------------------------------------------------------------------------------
# the rows a replay saves, the report's section and figure, several runs and logs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = ["--periods", "7", "--plan", "2,2,1,2", "--pretrain-epochs", "1", "--threads", "1", "--no-progress",
        "--set", "mf.dim=8", "--set", "n_negatives=49", "--bootstrap", "50", "--protocol", "sampled,full"]


@pytest.fixture(scope="module")
def replays(tmp_path_factory) -> dict[str, Path]:
    """Two runs of one log (different strategies), one run of another log; no report."""
    root = tmp_path_factory.mktemp("wins")
    # 150 users over 600 rows: test periods hold cold users and every history bucket.
    log_a = write_generic_log(root / "log-a.csv", n_rows=600, n_users=150, n_items=80, seed=3)
    log_b = write_generic_log(root / "log-b.csv", n_rows=500, n_users=100, n_items=60, seed=5)
    runs = {"a1": (log_a, "pop,pop-recent"), "a2": (log_a, "itemknn"), "b1": (log_b, "pop,itemknn")}
    for name, (data, strategies) in runs.items():
        assert main(["replay", "--data", str(data), "--strategies", strategies, "--no-report",
                     "--out", str(root / name), *FAST]) == 0
    return {"root": root, "log-a": log_a, **{name: root / name for name in runs}}


def test_saved_rows_hold_each_test_row_its_history_and_every_rank(replays):
    rows = pd.read_csv(replays["a1"] / "test_rows.csv.gz")
    log = pd.read_csv(replays["log-a"])          # time-sorted, one row per log position
    config = json.loads((replays["a1"] / "config.json").read_text())
    tests = [p for p in config["periods"] if p["role"] == "test"]
    assert len(rows) == 2 * sum(p["interactions"] for p in tests)
    assert list(dict.fromkeys(rows["protocol"])) == ["sampled", "full"]
    assert list(rows.columns[-2:]) == ["rank:pop", "rank:pop-recent"]
    users = log["user"].to_numpy()
    first_period = {}
    bounds = np.cumsum([0, *[p["interactions"] for p in config["periods"]]])
    for position in rows["position"].unique():
        user = users[position]
        # history: that user's rows strictly before the scored one (never the row itself)
        assert rows.loc[rows["position"] == position, "history"].iloc[0] == int((users[:position] == user).sum())
    for user in np.unique(users):
        first_period[user] = int(np.searchsorted(bounds, np.flatnonzero(users == user)[0], side="right") - 1)
    cold = np.array([first_period[users[g]] >= p for g, p in zip(rows["position"], rows["period"])])
    np.testing.assert_array_equal(rows["cold_user"].to_numpy() == 1, cold)
    assert rows["cold_user"].any() and (rows["history"] == 0).any() and (rows["history"] >= 5).any()
    # the ranks are the ones the summary averages: R@20 = share of rows ranked < 20
    summary = pd.read_csv(replays["a1"] / "summary.csv").set_index(["protocol", "strategy"])
    for (protocol, strategy), row in summary.iterrows():
        mine = rows[rows["protocol"] == protocol]
        assert (mine[f"rank:{strategy}"] < 20).mean() == pytest.approx(row["recall@20"], abs=1e-12)
        assert (mine[f"rank:{strategy}"] < 10).mean() == pytest.approx(row["recall@10"], abs=1e-12)


def test_report_writes_the_who_wins_figure_table_and_top_three(replays, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(replays["a1"]), str(replays["a2"]), "--out", str(out)]) == 0
    for name in ("who_wins.png", "who_wins_full.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    wins = pd.read_csv(out / "who_wins.csv")
    assert set(wins["strategy"]) == {"pop", "pop-recent", "itemknn"}        # the two runs combined
    assert list(dict.fromkeys(wins["group"])) == ["warm users", "cold users", "history 0", "history 1-4",
                                                  "history 5-19", "history 20+"]
    # every group with rows has exactly the winners at its highest R@20
    for (protocol, group), rows in wins[wins["interactions"] > 0].groupby(["protocol", "group"]):
        assert rows.loc[rows["winner"], "recall@20"].min() == rows["recall@20"].max()
    page = (out / "report.md").read_text()
    assert "## Who wins where: user groups" in page and "![Recall@20 per user group, protocol full]" in page
    top = pd.read_csv(out / "protocol_top3.csv")
    assert list(top.columns) == ["place", "sampled R@20 strategy", "sampled R@20", "full R@20 strategy",
                                 "full R@20"]
    assert "The top three under each protocol, side by side" in page


def test_wins_puts_each_log_in_its_own_row_and_combines_runs_of_one_log(replays, tmp_path, capsys):
    out = tmp_path / "wins"
    assert main(["wins", str(replays["a1"]), str(replays["b1"]), str(replays["a2"]), "--out", str(out),
                 "--history-buckets", "0,5"]) == 0
    wins = pd.read_csv(out / "who_wins.csv")
    assert list(dict.fromkeys(wins["log"])) == ["log-a.csv", "log-b.csv"]
    assert set(wins.loc[wins["log"] == "log-a.csv", "strategy"]) == {"pop", "pop-recent", "itemknn"}
    assert set(wins.loc[wins["log"] == "log-b.csv", "strategy"]) == {"pop", "itemknn"}
    assert set(wins["group"]) == {"warm users", "cold users", "history 0-4", "history 5+"}
    assert (out / "who_wins.png").read_bytes()[:8] == PNG_MAGIC
    printed = capsys.readouterr().out
    assert "log-b.csv, full: warm users:" in printed
    # the same log's groups do not depend on which other runs were given
    alone = tmp_path / "alone"
    assert main(["wins", str(replays["a1"]), str(replays["a2"]), "--out", str(alone),
                 "--history-buckets", "0,5"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(alone / "who_wins.csv"),
                                  wins[wins["log"] == "log-a.csv"].reset_index(drop=True))


def test_runs_without_saved_rows_say_so(tmp_path, capsys):
    from test_reports import make_run

    run = make_run(tmp_path, "old", {"pop": [0.1, 0.1, 0.2, 0.2]})
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert "Not available: these runs were written before" in (tmp_path / "report" / "report.md").read_text()
    assert main(["wins", str(run), "--out", str(tmp_path / "wins")]) != 0
    assert "no test_rows.csv.gz" in capsys.readouterr().err
    assert not (tmp_path / "wins").exists()
