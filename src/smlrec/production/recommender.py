"""Answering top-K queries from a registry version: what ``smlrec recommend`` and ``serve`` use.

A :class:`Recommender` holds one loaded version and scores every item through the strategy's own
``score``. Seen items are excluded by default; an unknown user gets the strategy's cold-user
rule (``fallback``; exactly what the replay serves a user it has never trained on), or a
DataError when ``strict``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..data.periods import Period
from ..errors import ConfigError, DataError
from .registry import Checkpoint, ModelRegistry
from .update import PRODUCTION_ROLE, strategy_from


class Recommender:
    """A loaded version, ready to answer top-K queries (what ``serve`` swaps when a version lands)."""

    def __init__(self, checkpoint: Checkpoint, device: str | None = None) -> None:
        self.checkpoint = checkpoint
        self.version = checkpoint.version
        self.strategy = strategy_from(checkpoint, device)
        self.device = self.strategy.device
        self.user_index = pd.Index(checkpoint.user_ids)
        self.item_ids = checkpoint.item_ids
        cumulative = checkpoint.cumulative
        self.pair_keys = cumulative.pair_keys
        # Popularity fallback: distinct users per item over everything applied.
        self.popularity = np.bincount((cumulative.pair_keys & 0xFFFFFFFF).astype(np.int64),
                                      minlength=checkpoint.n_items)
        self.cumulative = cumulative

    @classmethod
    def from_registry(cls, registry: str | Path | ModelRegistry, version: int | None = None) -> "Recommender":
        registry = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry)
        return cls(registry.load(version))

    def lookup(self, user_ids: Sequence[Any]) -> np.ndarray:
        """Table indices of raw user ids (-1 for unknown); text such as "42" matches number ids."""
        known = self.checkpoint.user_ids
        queries = list(user_ids)
        if known.dtype.kind in "iu":
            queries = [_as_int(q) for q in queries]
        elif known.dtype.kind == "f":
            queries = [_as_float(q) for q in queries]
        else:
            queries = [str(q) for q in queries]
        return self.user_index.get_indexer(pd.Index(queries, dtype=object))

    def seen_mask(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row in ``users``, item) of every pair each user has: a sparse mask, vectorised."""
        users = np.asarray(users, dtype=np.int64)
        lo = np.searchsorted(self.pair_keys, users << 32)
        hi = np.searchsorted(self.pair_keys, (users + 1) << 32)
        counts = hi - lo
        rows = np.repeat(np.arange(len(users)), counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        items = (self.pair_keys[np.repeat(lo, counts) + offsets] & 0xFFFFFFFF).astype(np.int64)
        return rows, items

    def scores(self, users: np.ndarray) -> torch.Tensor:
        """Scores ``[len(users), n_items]`` of every item, through the strategy's ``score``."""
        n_items = self.checkpoint.n_items
        period = Period(index=self.cumulative.next_period, role=PRODUCTION_ROLE, start=self.cumulative.rows,
                        users=np.asarray(users, np.int64), items=np.zeros(len(users), np.int64),
                        times=np.full(len(users), self.cumulative.last_time, np.int64),
                        items_seen=np.full(len(users), self.cumulative.items_seen, np.int64),
                        seen=self.cumulative.seen)
        batch = max(1, (1 << 18) // max(n_items, 1))  # bounds the [batch, n_items, dim] gather of score()
        all_items = torch.arange(n_items, device=self.device)
        out = []
        with torch.no_grad():
            for lo in range(0, len(users), batch):
                rows = slice(lo, min(lo + batch, len(users)))
                candidates = all_items.expand(rows.stop - rows.start, n_items)
                out.append(self.strategy.score(period, rows, candidates).float().cpu())
        return torch.cat(out) if out else torch.zeros((0, n_items))

    def recommend(self, user_ids: Sequence[Any], k: int = 20, exclude_seen: bool = True,
                  strict: bool = False) -> pd.DataFrame:
        """Top-``k`` items per user: columns user, rank, item, score, fallback, version.

        An unknown user gets the strategy's cold-user rule (``Strategy.score_new_users``) with
        ``fallback=True``; a strategy without one (e.g. ``cold_users = "init"``) falls back to the
        most popular items (distinct users per item, the popularity as score). ``strict`` makes an
        unknown user a DataError.
        """
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        user_ids = list(user_ids)
        index = self.lookup(user_ids)
        unknown = index < 0
        if strict and unknown.any():
            raise DataError(f"unknown user {user_ids[int(np.argmax(unknown))]!r} (not in version {self.version}); "
                            "drop --strict to serve the cold-start rule")
        frames = []
        known_rows = np.flatnonzero(~unknown)
        if known_rows.size:
            users = index[known_rows]
            scores = self.scores(users)
            if exclude_seen:
                rows, items = self.seen_mask(users)
                scores[torch.from_numpy(rows), torch.from_numpy(items)] = -torch.inf
            top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
            frames.append(self._frame(known_rows, top.values.numpy(), top.indices.numpy(), False))
        if unknown.any():
            values, order = self.cold_top(k)
            n = int(unknown.sum())
            frames.append(self._frame(np.flatnonzero(unknown), np.tile(values, (n, 1)), np.tile(order, (n, 1)), True))
        frame = pd.concat(frames) if frames else pd.DataFrame(columns=["query", "rank", "item", "score", "fallback"])
        frame = frame[np.isfinite(frame["score"].to_numpy(dtype=np.float64))]
        frame = frame.sort_values(["query", "rank"], kind="stable")
        frame.insert(0, "user", [user_ids[q] for q in frame["query"]])
        frame["version"] = self.version
        return frame.drop(columns="query").reset_index(drop=True)

    def cold_top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and items of the top ``k`` for a user this version has never seen."""
        n_items = self.checkpoint.n_items
        candidates = torch.arange(n_items, device=self.device)[None, :]
        try:
            with torch.no_grad():
                scores = self.strategy.score_new_users(candidates)[0].float().cpu()
        except ConfigError:
            scores = torch.from_numpy(self.popularity.astype(np.float64))
        top = torch.topk(scores, min(k, n_items))
        return top.values.numpy().astype(np.float64), top.indices.numpy()

    def _frame(self, queries: np.ndarray, values: np.ndarray, items: np.ndarray, fallback: bool) -> pd.DataFrame:
        n, width = items.shape
        return pd.DataFrame({"query": np.repeat(queries, width), "rank": np.tile(np.arange(1, width + 1), n),
                             "item": self.item_ids[items.reshape(-1)], "score": values.reshape(-1).astype(np.float64),
                             "fallback": fallback})


def _as_int(value: Any) -> Any:
    try:
        return int(str(value).strip())
    except ValueError:
        return value


def _as_float(value: Any) -> Any:
    try:
        return float(str(value).strip())
    except ValueError:
        return value


def recommend(registry: str | Path | ModelRegistry, user_ids: Sequence[Any], k: int = 20,
              exclude_seen: bool = True, strict: bool = False) -> pd.DataFrame:
    """Top-``k`` items for each of ``user_ids`` from the latest version (see Recommender.recommend)."""
    return Recommender.from_registry(registry).recommend(user_ids, k, exclude_seen, strict)
