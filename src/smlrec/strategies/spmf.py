"""SPMF (Wang et al., "Streaming ranking based recommender systems", SIGIR 2018; sml-method.md 6).

A warm-started MF plus a reservoir of past (user, item) pairs kept by algorithm R over the stream.
Per period t::

    train set  = reservoir ∪ D_t                     (N pairs)
    each epoch: rank the N pairs by the current model's score, descending: k = 1 .. N
                draw N training pairs with replacement, P(pair) ∝ exp(k / N)
                (the pairs the model scores worst are up to e times likelier than the best)
                one fresh negative per drawn pair: uniform over the train set's items minus the
                user's items in the train set
    then push D_t through the reservoir (algorithm R)

Choices (sml-authors-code-notes.md section 6 and Q9): the reservoir starts from the pretrain
period streamed through algorithm R (the authors' Yelp setting), it is textbook algorithm R (not
the authors' double-counting variant), the negative pool includes the reservoir's items (the
authors' excluded the pretraining periods' items), and there is no early stopping on any scored
period. Weights are recomputed from the current model at the start of every epoch.

Cold start as Fine-tune's (strategies/mf_retrain.py): a user never trained on gets the mean of the
user rows trained in the latest period, an untrained item the mean trained item row. On LightGCN
the rows averaged are final embeddings (``cold_on = "final"``, chosen on validation periods: R@20
.2430 against .0502 for layer-0 rows; strategies/mf_retrain.py says why), and the graph is the
data SPMF holds, reservoir ∪ D_t (``graph = "held"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data.periods import Period
from ..data.reservoir import Reservoir
from ..data.sampling import SetNegativeSampler, sample_set_negatives
from ..errors import ConfigError
from ..models.train_loop import run_trainer_epochs
from ..random import make_rng
from .base import StrategyContext, to_tensor
from .foldin import HistorySettings, check_history_settings
from .mf_retrain import MFRetrain, check_cold_rules


@dataclass(frozen=True)
class SPMFSettings(HistorySettings):
    """Settings of SPMF."""

    epochs: int = 5                    # weighted passes (N draws each) over reservoir ∪ D_t per period
    reservoir_size: int | None = None  # pairs kept; None: the mean pretrain period's row count
    lr: float | None = None            # None: the MF learning rate
    batch_size: int | None = None      # None: the MF batch size
    cold_users: str = "recent"         # rule for untrained users: mean | recent | init (strategies/cold.py)
    cold_items: str = "mean"           # rule for untrained items: mean | recent | init
    graph: str = "held"                # LightGCN's graph: held (reservoir ∪ D_t) | seen (every pair so far)
    cold_on: str = "final"             # LightGCN: cold rules average layer0 rows | final embeddings;
                                       #   final chosen on validation periods (module doc)

    def __post_init__(self) -> None:
        check_cold_rules(self)
        check_history_settings(self)
        if self.epochs < 0:
            raise ConfigError(f"strategy.spmf.epochs must be >= 0, got {self.epochs}")
        if self.reservoir_size is not None and self.reservoir_size < 1:
            raise ConfigError(f"strategy.spmf.reservoir_size must be >= 1, got {self.reservoir_size}")


def rank_weights(scores: np.ndarray) -> np.ndarray:
    """Sampling probabilities ∝ exp(k / N), k = 1..N the rank by score descending (ties: stable).

    The highest-scored pair has k = 1 (the smallest weight), the lowest-scored k = N.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    order = np.argsort(-scores, kind="stable")
    rank = np.empty(n, dtype=np.float64)
    rank[order] = np.arange(1, n + 1, dtype=np.float64)
    weights = np.exp(rank / n)
    return weights / weights.sum()


class SPMF(MFRetrain):
    """Warm-started MF trained on reservoir ∪ D_t with rank-weighted sampling."""

    name = "spmf"

    def __init__(self, settings: SPMFSettings, context: StrategyContext) -> None:
        super().__init__(settings, context)
        self.reservoir: Reservoir | None = None
        self.reservoir_rng = make_rng(context.seed, "strategy", context.name or self.name, "reservoir")

    def _start(self, pretrain: Period, initial_state: dict[str, torch.Tensor]) -> None:
        super()._start(pretrain, initial_state)
        capacity = self.settings.reservoir_size or max(
            1, int(round(len(pretrain) / max(1, self.context.pretrain_periods))))
        self.reservoir = Reservoir(capacity, self.reservoir_rng)
        self.reservoir.push(pretrain.users, pretrain.items)

    def _update(self, period: Period) -> None:
        reservoir = self.reservoir
        train_users = np.concatenate([reservoir.users, period.users]).astype(np.int64)
        train_items = np.concatenate([reservoir.items, period.items]).astype(np.int64)
        users = to_tensor(train_users, self.device)
        items = to_tensor(train_items, self.device)
        negatives_of = SetNegativeSampler(train_users, train_items)
        self._hold_graph(train_users, train_items)   # LightGCN: the data SPMF trains on (or all seen)
        model, trainer = self.model, self.trainer
        n = len(train_users)
        losses = []
        for _ in range(self.settings.epochs):
            with torch.no_grad():
                scores = model.score(users, items).cpu().numpy()
            drawn = self.rng.choice(n, size=n, replace=True, p=rank_weights(scores))
            drawn_tensor = to_tensor(drawn, self.device)

            def sample_negatives(rng: np.random.Generator) -> np.ndarray:
                return sample_set_negatives(train_users[drawn], negatives_of.pool, negatives_of.exclude, rng)

            losses += run_trainer_epochs(trainer, users[drawn_tensor], items[drawn_tensor],
                                         sample_negatives, 1,
                                         self.settings.batch_size or self.context.mf.batch_size,
                                         self.rng, self.device)
        self.last_losses = losses
        self._mark_trained(period.users, period.items)
        reservoir.push(period.users, period.items)

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "reservoir": self.reservoir.state_dict()}

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        saved = state["reservoir"]
        self.reservoir = Reservoir(int(saved["capacity"]), self.reservoir_rng)
        self.reservoir.load_state_dict(saved)
