"""Full ranking and AUC/LogLoss against hand-computed cases and brute-force twins."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from smlrec.config import ReplaySettings, replay_settings
from smlrec.data.log import InteractionLog
from smlrec.data.periods import Plan, build_timeline, split_equal_count
from smlrec.errors import ConfigError
from smlrec.evaluation.protocols import (auc_negatives, auc_reference, full_ranks, full_ranks_reference,
                                         history_pairs, metrics_from_pairs, parse_protocols,
                                         weighted_auc)
from smlrec.strategies import create_strategy
from smlrec.strategies.base import StrategyContext

from helpers import TINY_MF, tiny_timeline

nan = float("nan")


def hand_timeline():
    """Six rows, two periods of three (items are indexed in first-appearance order)::

        period 0: u0 i0 | u1 i1 | u0 i2
        period 1: u1 i3 | u0 i1 | u1 i0
    """
    users = ["u0", "u1", "u0", "u1", "u0", "u1"]
    items = ["i0", "i1", "i2", "i3", "i1", "i0"]
    log = InteractionLog.from_arrays(users, items, np.arange(6) * 10 + 1_600_000_000)
    return build_timeline(log, split_equal_count(6, 2), Plan(1, 0, 0, 1))


def by_item(values):
    """Scores that depend on the item only: ``values[item]`` for every row."""
    table = torch.tensor(values, dtype=torch.float32)
    return lambda rows, candidates: table[candidates]


def test_full_rank_excludes_the_users_items_and_counts_ties_against_the_model():
    period = hand_timeline().periods[1]
    score = by_item([1.0, 2.0, 2.0, 1.0])
    # row u1 i3 (score 1): pool = 4 items seen minus u1's {i1, i3} = {i0 (1.0, a tie), i2 (2.0)} -> 2
    # row u0 i1 (score 2): pool = minus u0's {i0, i2, i1} = {i3 (1.0)} -> 0 (i2's tie is u0's: excluded)
    # row u1 i0 (score 1): pool = minus u1's {i1, i3, i0} = {i2 (2.0)} -> 1 (i3's tie excluded)
    assert full_ranks(score, period).tolist() == [2, 0, 1]
    assert full_ranks_reference(score, period).tolist() == [2, 0, 1]


def test_full_rank_nan_counts_against_the_model():
    period = hand_timeline().periods[1]
    # A NaN item beats every positive whose pool holds it (i2 for u1's rows) ...
    assert full_ranks(by_item([0.0, 5.0, nan, -1.0]), period).tolist() == [2, 0, 1]
    # ... and a NaN positive (u1 i3) loses to its whole pool {i0, i2}; u0 i1 (5.0) now loses to
    # NaN i3; u1 i0 (0.0) ties with i2 (0.0).
    assert full_ranks(by_item([0.0, 5.0, 0.0, nan]), period).tolist() == [2, 1, 1]
    assert full_ranks_reference(by_item([0.0, 5.0, 0.0, nan]), period).tolist() == [2, 1, 1]
    assert full_ranks_reference(by_item([0.0, 5.0, nan, -1.0]), period).tolist() == [2, 0, 1]


def test_history_pairs_are_the_users_items_up_to_the_row():
    period = hand_timeline().periods[1]
    rows, items = history_pairs(period.users, period.positions, period.seen)
    got = sorted(zip(rows.tolist(), items.tolist()))
    assert got == [(0, 1), (0, 3), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 3)]


@pytest.mark.parametrize("block_elements", [7, 64, 1 << 20])
def test_full_ranks_match_the_brute_force_twin_with_ties_and_nan(block_elements):
    timeline = tiny_timeline(Plan(2, 1, 1, 2), n_rows=360, seed=3)

    def score(rows, candidates):
        # Few distinct values (many ties), user-dependent, and one item always NaN.
        users = torch.arange(rows.start, rows.stop)[:, None]
        values = ((candidates * 7 + users * 3) % 4).float()
        return torch.where(candidates == 5, torch.full_like(values, nan), values)

    for period in timeline.periods[3:]:
        fast = full_ranks(score, period, block_elements=block_elements)
        np.testing.assert_array_equal(fast, full_ranks_reference(score, period))


def test_full_ranks_with_a_real_strategy_are_never_better_than_sampled():
    """The sampled negatives are a subset of the full pool, so a full rank is >= the sampled one."""
    from smlrec.data.candidates import CandidateStore
    from smlrec.evaluation.metrics import rank_candidates
    from smlrec.strategies.pretrain import pretrain_mf

    timeline = tiny_timeline(Plan(2, 1, 1, 2), n_rows=360, seed=1)
    context = StrategyContext(timeline.log.n_users, timeline.log.n_items, TINY_MF, seed=0, name="fine-tune")
    strategy = create_strategy("fine-tune", context)
    initial, _ = pretrain_mf(timeline.pretrain_data, timeline.log.n_users, timeline.log.n_items, TINY_MF,
                             2, 0, "cpu")
    strategy.start(timeline.pretrain_data, initial)
    period = timeline.periods[-1]
    store = CandidateStore(timeline, seed=0, n_negatives=5, cache_dir=None)
    score = lambda rows, cands: strategy.score(period, rows, cands)  # noqa: E731
    sampled = rank_candidates(score, store.get(period))
    full = full_ranks(score, period, block_elements=50)
    assert (full >= sampled).all() and (full > sampled).any()
    np.testing.assert_array_equal(full, full_ranks_reference(score, period))


def test_auc_hand_computed_with_ties():
    scores = np.array([[3.0, 2.0], [2.0, 0.0], [1.0, 1.0], [1.0, 4.0]])
    # positives 3, 2, 1, 1 against negatives 2, 0, 1, 4 (all 16 pairs):
    #   3: wins 2, 0, 1               -> 3
    #   2: tie 2 (1/2), wins 0, 1     -> 2.5
    #   1: wins 0, tie 1              -> 1.5   (twice)
    assert metrics_from_pairs(scores)["auc"] == pytest.approx(8.5 / 16)
    assert auc_reference(scores) == pytest.approx(8.5 / 16)
    # all equal: 1/2; a NaN positive loses every pair, a NaN negative wins every pair
    assert metrics_from_pairs(np.zeros((3, 2)))["auc"] == 0.5
    assert metrics_from_pairs(np.array([[nan, 0.0], [1.0, 0.0]]))["auc"] == pytest.approx(2 / 4)
    assert metrics_from_pairs(np.array([[1.0, nan], [1.0, 0.0]]))["auc"] == pytest.approx(2 / 4)


def test_logloss_is_the_mean_bce_of_sigmoid_scores_and_nan_when_uncalibrated():
    scores = np.array([[0.0, 0.0], [2.0, -1.0]])
    expected = np.mean([-math.log(0.5), -math.log(0.5), -math.log(1 / (1 + math.exp(-2.0))),
                        -math.log(1 - 1 / (1 + math.exp(1.0)))])
    assert metrics_from_pairs(scores)["logloss"] == pytest.approx(expected)
    uncalibrated = metrics_from_pairs(scores, calibrated=False)
    assert math.isnan(uncalibrated["logloss"]) and uncalibrated["auc"] == metrics_from_pairs(scores)["auc"]


def test_weighted_auc_equals_the_auc_of_repeated_rows():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(40, 2)).astype(float)      # many ties
    weights = rng.integers(0, 4, size=40).astype(float)
    repeated = np.repeat(scores, weights.astype(int), axis=0)
    assert weighted_auc(scores, weights[None, :])[0] == pytest.approx(auc_reference(repeated))
    assert weighted_auc(scores, np.ones((1, 40)))[0] == pytest.approx(auc_reference(scores))


def test_auc_negatives_come_from_the_pool_and_are_seeded():
    timeline = tiny_timeline(Plan(2, 1, 1, 2), n_rows=360, seed=4)
    period = timeline.periods[-1]
    negatives = auc_negatives(period, seed=7)
    assert (negatives < period.items_seen).all()
    assert not period.seen.contains(period.users, negatives, period.positions).any()
    np.testing.assert_array_equal(negatives, auc_negatives(period, seed=7))
    assert (negatives != auc_negatives(period, seed=8)).any()


def test_protocol_settings_are_checked():
    assert parse_protocols("sampled, full,auc") == ("sampled", "full", "auc")
    with pytest.raises(ConfigError, match="unknown protocol 'ful'"):
        parse_protocols("sampled,ful")
    assert ReplaySettings().protocols == ("sampled",)
    assert replay_settings({"protocols": "full,auc"}).protocols == ("full", "auc")
    with pytest.raises(ConfigError, match="protocols"):
        replay_settings({"protocols": "sampled,bogus"})
    with pytest.raises(ConfigError, match="bootstrap_unit"):
        replay_settings({"bootstrap_unit": "period"})


def test_calibrated_scores_flags():
    context = StrategyContext(10, 10, TINY_MF, seed=0)
    assert not create_strategy("pop", context).calibrated_scores
    assert not create_strategy("pop-recent", context).calibrated_scores
    assert create_strategy("fine-tune", context).calibrated_scores
    assert create_strategy("sml", context).calibrated_scores
    assert not create_strategy("gru4rec", context).calibrated_scores   # cold users scored by counts
    assert create_strategy("gru4rec", context, {"cold_users": "init"}).calibrated_scores
