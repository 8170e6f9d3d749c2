"""SPMF: rank weighting, reservoir bookkeeping, state round trip."""

import copy
import math

import numpy as np
import pytest
import torch

from smlrec.config import MFSettings
from smlrec.data.log import InteractionLog
from smlrec.data.periods import Plan, build_timeline, concat_periods, split_equal_count
from smlrec.errors import ConfigError
from smlrec.strategies import StrategyContext, create_strategy
from smlrec.strategies.spmf import rank_weights


def test_rank_weights_hand_case():
    # scores 3, 1, 2 -> ranks (descending) 1, 3, 2 of N = 3 -> weights ∝ e^(1/3), e^(3/3), e^(2/3)
    weights = rank_weights(np.array([3.0, 1.0, 2.0]))
    raw = np.array([math.exp(1 / 3), math.exp(1.0), math.exp(2 / 3)])
    np.testing.assert_allclose(weights, raw / raw.sum())
    assert weights.sum() == pytest.approx(1.0)


def test_rank_weights_favour_low_scores_monotonically():
    scores = np.random.default_rng(0).normal(size=200)
    weights = rank_weights(scores)
    by_score = weights[np.argsort(-scores)]
    assert np.all(np.diff(by_score) > 0)                    # lower score -> strictly larger weight
    assert by_score[-1] / by_score[0] == pytest.approx(math.exp(199 / 200))


def tiny_timeline():
    rng = np.random.default_rng(5)
    n = 600
    users = rng.integers(0, 30, n)
    items = rng.integers(0, 50, n)
    log = InteractionLog.from_arrays(users, items, np.arange(n) * 60)
    return build_timeline(log, split_equal_count(n, 6), Plan(2, 1, 1, 2))


def make_spmf(timeline, **overrides):
    mf = MFSettings(dim=8, batch_size=64)
    context = StrategyContext(timeline.log.n_users, timeline.log.n_items, mf, seed=3, name="spmf",
                              pretrain_periods=timeline.plan.pretrain)
    strategy = create_strategy("spmf", context, {"epochs": 2, **overrides})
    gen = torch.Generator().manual_seed(0)
    initial = {"user": torch.randn(timeline.log.n_users, 8, generator=gen) * 0.1,
               "item": torch.randn(timeline.log.n_items, 8, generator=gen) * 0.1}
    strategy.start(concat_periods(timeline.periods[:2]), initial)
    return strategy


def test_default_reservoir_holds_one_mean_pretrain_period_and_streams_updates():
    timeline = tiny_timeline()
    spmf = make_spmf(timeline)
    assert spmf.reservoir.capacity == 100                   # 200 pretrain rows / 2 periods
    assert spmf.reservoir.seen == 200
    spmf.update(timeline.periods[2])
    assert spmf.reservoir.seen == 300 and len(spmf.reservoir) == 100
    assert make_spmf(timeline, reservoir_size=37).reservoir.capacity == 37


def test_state_round_trip_gives_identical_updates():
    timeline = tiny_timeline()
    a = make_spmf(timeline)
    a.update(timeline.periods[2])
    b = make_spmf(timeline, epochs=2)
    b.load_state_dict(copy.deepcopy(a.state_dict()))   # as if saved and read back
    for s in (a, b):
        s.update(timeline.periods[3])
    np.testing.assert_array_equal(a.reservoir.items, b.reservoir.items)
    torch.testing.assert_close(a.model.user.weight, b.model.user.weight)
    cands = torch.arange(10).repeat(4, 1)
    torch.testing.assert_close(a.score(timeline.periods[4], slice(0, 4), cands),
                               b.score(timeline.periods[4], slice(0, 4), cands))


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError):
        make_spmf(tiny_timeline(), reservoir_size=0)
