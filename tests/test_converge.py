"""Full-retrain trained to convergence (strategies/converge.py): early stopping on a held-out
slice of its own window, seeded, keeping the best epoch's rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smlrec.config import MFSettings
from smlrec.data.log import InteractionLog
from smlrec.data.periods import Plan, build_timeline, concat_periods, split_equal_count
from smlrec.errors import ConfigError
from smlrec.models.fused_mf import FusedMFTrainer
from smlrec.models.mf import MF
from smlrec.strategies import StrategyContext, create_strategy
from smlrec.strategies.converge import train_to_convergence


def tiny_timeline():
    rng = np.random.default_rng(5)
    n = 3000
    users = rng.integers(0, 60, n)
    items = (users * 7 + rng.integers(0, 8, n)) % 90        # learnable: each user likes ~8 items
    log = InteractionLog.from_arrays(users, items, np.arange(n) * 60)
    return build_timeline(log, split_equal_count(n, 6), Plan(2, 1, 1, 2))


def make_full_retrain(timeline, **overrides):
    context = StrategyContext(timeline.log.n_users, timeline.log.n_items, MFSettings(dim=8, batch_size=128),
                              seed=3, name="full-retrain", pretrain_periods=2)
    strategy = create_strategy("full-retrain", context, {"converge": True, **overrides})
    gen = torch.Generator().manual_seed(0)
    strategy.start(concat_periods(timeline.periods[:2]),
                   {"user": torch.randn(timeline.log.n_users, 8, generator=gen) * 0.1,
                    "item": torch.randn(timeline.log.n_items, 8, generator=gen) * 0.1})
    return strategy


def test_converged_full_retrain_stops_on_its_own_holdout_and_is_seeded():
    timeline = tiny_timeline()
    runs = []
    for _ in range(2):
        strategy = make_full_retrain(timeline, max_epochs=40, patience=2, holdout=0.1)
        strategy.update(timeline.periods[2])
        runs.append(strategy)
    a, b = runs
    assert 3 <= a.last_epochs < 40          # trained past the start, stopped before the cap
    assert a.last_epochs == b.last_epochs and a.last_losses == b.last_losses
    assert torch.equal(a.model.user.weight, b.model.user.weight)


def test_best_epoch_rows_are_kept():
    rng = np.random.default_rng(1)
    users = rng.integers(0, 40, 1000)
    items = (users * 3 + rng.integers(0, 20, 1000)) % 60     # noisy: held-out NDCG peaks, then falls
    model = MF(40, 60, dim=8, generator=torch.Generator().manual_seed(0))
    result = train_to_convergence(model, FusedMFTrainer(model, lr=0.05), users, items, holdout=0.2,
                                  max_epochs=30, patience=3, batch_size=64,
                                  rng=np.random.default_rng(2), holdout_rng=np.random.default_rng(3))
    assert result.best_epoch == int(np.argmax(result.scores)) + 1
    assert len(result.scores) - result.best_epoch == 3 or len(result.scores) == 30
    assert result.kept_score == max(result.scores) > result.scores[-1]   # the best rows, restored


def test_converge_settings_are_checked():
    timeline = tiny_timeline()
    with pytest.raises(ConfigError):
        make_full_retrain(timeline, holdout=1.5)
    with pytest.raises(ConfigError):
        make_full_retrain(timeline, patience=0)
