"""Popularity: rank items by how often they were consumed. The floor every table shows.

* ``pop``: counts over everything seen so far (``decay = 1``).
* ``pop-recent``: exponentially decayed counts; after each period every count is multiplied by
  ``decay`` before the new period's counts are added, so with ``decay = 0.5`` an interaction's
  weight halves every period. The pretrain periods are counted as one block.

Every user gets the same scores, so there is no cold-user problem; a cold item (never counted)
scores 0 and, with ties counted against the model, ranks below every counted item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import require
from ..data.periods import Period
from .base import Strategy, StrategyContext


@dataclass(frozen=True)
class PopularitySettings:
    """Settings of the popularity rankings."""

    decay: float = 1.0     # counts are multiplied by this after each period (1: no decay)

    def __post_init__(self) -> None:
        require(0.0 < self.decay <= 1.0, "decay", "in (0, 1]", self.decay)


def decayed_counts(counts: np.ndarray, items: np.ndarray, decay: float) -> np.ndarray:
    """``decay * counts`` plus one for every occurrence of an item in ``items``."""
    return decay * counts + np.bincount(np.asarray(items, dtype=np.int64), minlength=len(counts))


class Popularity(Strategy):
    """Scores an item by its (decayed) interaction count; the same ranking for every user."""

    name = "pop"
    calibrated_scores = False     # counts, not logits

    def __init__(self, settings: PopularitySettings, context: StrategyContext) -> None:
        super().__init__(settings, context)
        self.counts = np.zeros(context.n_items, dtype=np.float64)
        self._table: torch.Tensor | None = None

    def _start(self, pretrain: Period, initial_state: dict[str, torch.Tensor]) -> None:
        self.counts = decayed_counts(np.zeros(self.n_items), pretrain.items, 1.0)
        self._table = None

    def _update(self, period: Period) -> None:
        self.counts = decayed_counts(self.counts, period.items, self.settings.decay)
        self._table = None

    def _grow(self, n_users: int, n_items: int) -> None:
        self.counts = np.concatenate([self.counts, np.zeros(n_items - len(self.counts))])
        self._table = None

    def score_new_users(self, candidates: torch.Tensor) -> torch.Tensor:
        if self._table is None:
            self._table = torch.from_numpy(self.counts.astype(np.float32)).to(self.device)
        return self._table[candidates.to(self.device)]

    def score(self, period: Period, rows: slice, candidates: torch.Tensor) -> torch.Tensor:
        return self.score_new_users(candidates)

    def _state(self) -> dict[str, Any]:
        return {"counts": self.counts.copy()}

    def _load_state(self, state: dict[str, Any]) -> None:
        counts = np.asarray(state["counts"], dtype=np.float64)
        if counts.shape != (self.n_items,):
            raise ValueError(f"counts of shape {counts.shape}, expected ({self.n_items},)")
        self.counts = counts.copy()
        self._table = None
