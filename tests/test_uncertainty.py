"""Bootstrap intervals and paired p-values: coverage of the point, shrinkage, seeds, null calibration."""

from __future__ import annotations

import numpy as np
import pytest

from smlrec.evaluation.metrics import metrics_from_ranks
from smlrec.evaluation.protocols import metrics_from_pairs
from smlrec.evaluation.uncertainty import (RowOutcomes, bootstrap, paired_p_value, rank_values,
                                           resample_weights)


def ranked_outcomes(n_users: int, rows_per_user: int = 5, seed: int = 0, strategies: int = 3) -> RowOutcomes:
    """Ranks of ``strategies`` strategies on the same rows; strategy s is a little better than s+1."""
    rng = np.random.default_rng(seed)
    units = np.repeat(np.arange(n_users), rows_per_user)
    skill = rng.normal(0.0, 1.0, n_users)[units]          # users differ: rows of a user correlate
    values: dict[str, list[np.ndarray]] = {}
    for s in range(strategies):
        ranks = np.floor(np.exp(3.0 - skill + rng.normal(0.0, 1.0, len(units)) + 0.2 * s))
        for metric, row_values in rank_values(ranks).items():
            values.setdefault(metric, []).append(row_values)
    return RowOutcomes([f"s{s}" for s in range(strategies)], units, np.repeat([15, 16], len(units) // 2 + 1)[:len(units)],
                       {m: np.stack(v) for m, v in values.items()})


def auc_outcomes(n_users: int, seed: int = 0) -> RowOutcomes:
    rng = np.random.default_rng(seed)
    units = np.repeat(np.arange(n_users), 4)
    n = len(units)
    pairs = np.stack([np.stack([rng.normal(shift, 1.0, n).round(1), rng.normal(0.0, 1.0, n).round(1)], 1)
                      for shift in (1.0, 0.5)])
    logloss = np.stack([0.5 * (np.logaddexp(0, -p[:, 0]) + np.logaddexp(0, p[:, 1])) for p in pairs])
    logloss[1] = np.nan                                     # an uncalibrated strategy
    return RowOutcomes(["a", "b"], units, np.repeat([15, 16], n // 2), {"logloss": logloss}, pairs)


def test_resample_weights_move_a_users_rows_together():
    units = np.array([3, 3, 7, 9, 9, 9])
    rng = np.random.default_rng(0)
    weights = np.concatenate(list(resample_weights(units, 50, rng, max_elements=40)))
    assert weights.shape == (50, 6)
    assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 3] == weights[:, 5]).all()
    # each resample draws 3 users: the weights of one row per user add up to 3
    assert (weights[:, [0, 2, 3]].sum(axis=1) == 3).all()


def test_point_estimates_are_the_metrics():
    outcomes = ranked_outcomes(50)
    result = bootstrap(outcomes, 20, np.random.default_rng(0))
    for metric, values in outcomes.values.items():
        np.testing.assert_allclose(result.point[metric], values.mean(axis=1))
    rows = ranked_outcomes(1, rows_per_user=7)
    recall = bootstrap(rows, 5, np.random.default_rng(0)).point["recall@20"][0]
    assert recall == pytest.approx(rows.values["recall@20"][0].mean())


def test_auc_point_estimate_is_the_interaction_weighted_mean_of_period_aucs():
    outcomes = auc_outcomes(40)
    result = bootstrap(outcomes, 10, np.random.default_rng(0))
    for s in range(2):
        per_period = [metrics_from_pairs(outcomes.pairs[s, outcomes.periods == p])["auc"] for p in (15, 16)]
        sizes = [(outcomes.periods == p).sum() for p in (15, 16)]
        assert result.point["auc"][s] == pytest.approx(np.average(per_period, weights=sizes))
    assert np.isnan(result.point["logloss"][1]) and np.isfinite(result.point["logloss"][0])
    intervals = result.intervals().set_index("strategy")
    assert np.isnan(intervals.loc["b", "logloss_lo"]) and np.isfinite(intervals.loc["b", "auc_lo"])


@pytest.mark.parametrize("unit", ["user", "interaction"])
def test_intervals_contain_the_point_and_shrink_with_more_data(unit):
    widths = []
    for n_users in (60, 1500):
        for outcomes in (ranked_outcomes(n_users, seed=n_users), auc_outcomes(n_users, seed=n_users)):
            result = bootstrap(outcomes, 300, np.random.default_rng(1), unit)
            intervals = result.intervals()
            for metric, point in result.point.items():
                lo = intervals[f"{metric}_lo"].to_numpy()
                hi = intervals[f"{metric}_hi"].to_numpy()
                finite = np.isfinite(point)
                assert (lo[finite] <= point[finite]).all() and (point[finite] <= hi[finite]).all(), metric
        big = bootstrap(ranked_outcomes(n_users, seed=n_users), 300, np.random.default_rng(1), unit)
        widths.append(big.intervals()["recall@20_hi"] - big.intervals()["recall@20_lo"])
    # 25 x the users: about 5 x narrower; demand at least 3 x
    assert (widths[1] * 3 < widths[0]).all()


def test_user_intervals_are_wider_than_interaction_intervals_when_users_correlate():
    outcomes = ranked_outcomes(200, rows_per_user=10)
    by_user = bootstrap(outcomes, 400, np.random.default_rng(0), "user").intervals()
    by_row = bootstrap(outcomes, 400, np.random.default_rng(0), "interaction").intervals()
    width = lambda frame: (frame["ndcg@20_hi"] - frame["ndcg@20_lo"]).to_numpy()  # noqa: E731
    assert (width(by_user) > width(by_row)).all()


def test_same_seed_same_intervals_and_p_values():
    outcomes = ranked_outcomes(80)
    a = bootstrap(outcomes, 100, np.random.default_rng(5))
    b = bootstrap(outcomes, 100, np.random.default_rng(5))
    c = bootstrap(outcomes, 100, np.random.default_rng(6))
    assert a.intervals().equals(b.intervals()) and a.significance().equals(b.significance())
    assert not a.intervals().equals(c.intervals())


def test_significance_compares_the_best_with_every_other():
    result = bootstrap(ranked_outcomes(400), 200, np.random.default_rng(0))
    tests = result.significance()
    recall = tests[tests["metric"] == "recall@20"]
    best = recall["best"].iloc[0]
    assert set(recall["strategy"]) == {"s0", "s1", "s2"} - {best}
    assert (recall["difference"] >= 0).all()
    # s2 is clearly worse than s0 (0.4 on the log-rank scale): p at the floor 1 / (R + 1)
    assert recall.set_index("strategy").loc["s2", "p_value"] < 0.05
    logloss = bootstrap(auc_outcomes(40), 50, np.random.default_rng(0)).significance()
    # b has no LogLoss (uncalibrated): nothing to compare it with
    assert logloss[logloss["metric"] == "logloss"].empty


def test_paired_p_value_edge_cases():
    assert paired_p_value(0.0, np.array([0.1, -0.1])) == 1.0
    assert paired_p_value(1.0, np.array([1.0, 1.1, 0.9])) == pytest.approx(1 / 4)
    assert np.isnan(paired_p_value(np.nan, np.array([0.0])))


def test_p_values_are_uniform_under_a_true_null_and_small_under_an_effect():
    """Two strategies whose per-row outcomes have the same distribution (paired by user): the
    p-value must be ~uniform. 300 seeded simulations; each checked fraction has a binomial
    standard error of about 0.013-0.029, and the tolerances are about 2.5-3 of those."""
    rng = np.random.default_rng(2020)
    null_p, effect_p = [], []
    for _ in range(300):
        n_users = 60
        units = np.repeat(np.arange(n_users), 4)
        user = rng.normal(0.0, 1.0, n_users)[units]
        a = user + rng.normal(0.0, 1.0, len(units))
        b = user + rng.normal(0.0, 1.0, len(units))
        for shift, into in ((0.0, null_p), (0.45, effect_p)):
            outcomes = RowOutcomes(["a", "b"], units, np.zeros(len(units)),
                                   {"ndcg@20": np.stack([a + shift, b])})
            result = bootstrap(outcomes, 199, rng)
            into.append(result.significance()["p_value"].iloc[0])
    null_p = np.asarray(null_p)
    for level, tolerance in ((0.05, 0.04), (0.2, 0.07), (0.5, 0.085)):
        assert abs(np.mean(null_p <= level) - level) < tolerance, (level, np.mean(null_p <= level))
    assert np.mean(np.asarray(effect_p) <= 0.05) > 0.8


def test_metrics_from_rank_values_agree_with_metrics_from_ranks():
    ranks = np.array([0, 1, 4, 5, 9, 19, 20, 500])
    values = rank_values(ranks)
    expected = metrics_from_ranks(ranks)
    for metric, row_values in values.items():
        assert row_values.mean() == pytest.approx(expected[metric])
