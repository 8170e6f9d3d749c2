"""Who wins where: history-length buckets, the saved per-row results, per-group intervals, the
figure and table, several runs and several logs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from smlrec.errors import ConfigError
from smlrec.evaluation.uncertainty import RowOutcomes, bootstrap
from smlrec.experiment.results import format_summary, order_line, top_order
from smlrec.random import make_rng
from smlrec.report.tables import top_three_table, top_three_text
from smlrec.report.wins import TIED_MARK, WINNER_MARK, group_table, wins_text
from smlrec.evaluation.groups import (bucket_labels, history_buckets, history_lengths, history_lengths_reference,
                                      parse_edges)


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
