"""A plug-in strategy: "people who consumed X next consumed Y" (last-item co-occurrence).

It counts, over everything seen so far, how often item ``b`` directly followed item ``a`` in a
user's history (``a -> b``). A row of a scored period is scored by the counts of its candidates
after the user's previous item: the user's latest row before it, in an earlier period or earlier
in the same period (the history a score may read: never the row itself, never a later row, and
the counts are never trained on the scored period). Ties, and users with no history, fall back
on overall popularity.

Run it without editing smlrec::

    smlrec replay --plugin examples.cooccurrence:LastItemCooccurrence --strategies cooc,pop

It is a real baseline, small on purpose: two numpy arrays of counts, every step vectorised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from smlrec.errors import ConfigError
from smlrec.strategies import Strategy, StrategyContext

_SHIFT = 32   # a pair a -> b is stored as the key (a << 32) | b: item indices stay below 2**32


@dataclass(frozen=True)
class CooccurrenceSettings:
    """Settings of ``cooc`` (``--set strategy.cooc.decay=0.5``)."""

    decay: float = 1.0      # the counts are multiplied by this after each period (1: no decay)

    def __post_init__(self) -> None:
        if not 0.0 < self.decay <= 1.0:
            raise ConfigError(f"strategy.cooc.decay: must be in (0, 1], got {self.decay!r}")


def previous_items(users: np.ndarray, items: np.ndarray, last: np.ndarray) -> np.ndarray:
    """For each row, the item of its user's previous row: earlier in these rows, else ``last[user]``
    (-1: no history). Rows are in log order."""
    order = np.argsort(users, kind="stable")       # grouped by user, log order kept inside a group
    grouped_users = users[order]
    first = np.ones(len(users), dtype=bool)
    first[1:] = grouped_users[1:] != grouped_users[:-1]
    previous = np.empty(len(users), dtype=np.int64)
    previous[1:] = items[order][:-1]
    previous[first] = last[grouped_users[first]]
    out = np.empty_like(previous)
    out[order] = previous
    return out


def previous_items_reference(users: np.ndarray, items: np.ndarray, last: np.ndarray) -> np.ndarray:
    """The slow, obvious twin of ``previous_items`` (tests compare them)."""
    latest = {}
    out = []
    for user, item in zip(users.tolist(), items.tolist()):
        out.append(latest.get(user, int(last[user])))
        latest[user] = item
    return np.asarray(out, dtype=np.int64)


class LastItemCooccurrence(Strategy):
    """Items that directly followed the user's last item most often (ties: popularity)."""

    name = "cooc"
    Settings = CooccurrenceSettings
    calibrated_scores = False     # counts, not logits: the auc protocol reports AUC only

    def __init__(self, settings: CooccurrenceSettings, context: StrategyContext) -> None:
        super().__init__(settings, context)
        self.keys = np.zeros(0, dtype=np.int64)       # sorted pair keys a << 32 | b
        self.counts = np.zeros(0, dtype=np.float64)   # their (decayed) counts
        self.last = np.full(context.n_users, -1, dtype=np.int64)
        self.popularity = np.zeros(context.n_items, dtype=np.float64)

    def _count(self, users: np.ndarray, items: np.ndarray) -> None:
        previous = previous_items(users, items, self.last)
        known = previous >= 0
        keys = np.concatenate([self.keys, (previous[known] << _SHIFT) | items[known]])
        counts = np.concatenate([self.counts, np.ones(int(known.sum()))])
        self.keys, inverse = np.unique(keys, return_inverse=True)
        self.counts = np.bincount(inverse, weights=counts, minlength=len(self.keys))
        self.popularity += np.bincount(items, minlength=self.n_items)
        latest_users, from_end = np.unique(users[::-1], return_index=True)   # each user's latest row
        self.last[latest_users] = items[len(items) - 1 - from_end]

    def _start(self, pretrain, initial_state: dict[str, torch.Tensor]) -> None:
        self._count(pretrain.users, pretrain.items)

    def _update(self, period) -> None:
        self.counts *= self.settings.decay
        self.popularity *= self.settings.decay
        self._count(period.users, period.items)

    def _pair_counts(self, previous: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        keys = (previous[:, None] << _SHIFT) | candidates
        at = np.minimum(np.searchsorted(self.keys, keys), max(len(self.keys) - 1, 0))
        found = (self.keys[at] == keys) if len(self.keys) else np.zeros(keys.shape, dtype=bool)
        return np.where(found & (previous[:, None] >= 0), self.counts[at] if len(self.keys) else 0.0, 0.0)

    def _fallback(self, candidates: np.ndarray) -> np.ndarray:
        return self.popularity[candidates] / (self.popularity.sum() + 1.0)   # < 1: only breaks ties

    def score(self, period, rows: slice, candidates: torch.Tensor) -> torch.Tensor:
        previous = previous_items(period.users, period.items, self.last)[rows]
        cands = candidates.cpu().numpy().astype(np.int64)
        scores = self._pair_counts(previous, cands) + self._fallback(cands)
        return torch.from_numpy(scores.astype(np.float32)).to(self.device)

    def score_new_users(self, candidates: torch.Tensor) -> torch.Tensor:
        cands = candidates.cpu().numpy().astype(np.int64)
        return torch.from_numpy(self._fallback(cands).astype(np.float32)).to(self.device)

    def _grow(self, n_users: int, n_items: int) -> None:
        self.last = np.concatenate([self.last, np.full(n_users - len(self.last), -1, dtype=np.int64)])
        self.popularity = np.concatenate([self.popularity, np.zeros(n_items - len(self.popularity))])

    def _state(self) -> dict[str, Any]:
        return {"keys": self.keys.copy(), "counts": self.counts.copy(), "last": self.last.copy(),
                "popularity": self.popularity.copy()}

    def _load_state(self, state: dict[str, Any]) -> None:
        keys, counts = np.asarray(state["keys"], dtype=np.int64), np.asarray(state["counts"], dtype=np.float64)
        last, popularity = np.asarray(state["last"], dtype=np.int64), np.asarray(state["popularity"], dtype=np.float64)
        if keys.shape != counts.shape or last.shape != (self.n_users,) or popularity.shape != (self.n_items,):
            raise ValueError("arrays of the wrong shape for these tables")
        self.keys, self.counts, self.last, self.popularity = keys, counts, last, popularity
