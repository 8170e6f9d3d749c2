"""Answering top-K queries from a registry version: what ``smlrec recommend`` and ``serve`` use.

A :class:`Recommender` holds one loaded version. Everything that does not depend on the query is
prepared when the version is loaded (the moment ``serve`` swaps it in), so a query is a lookup, one
matrix product and a ``topk``:

* the raw-id -> row dictionary, under the ids rule of ``ingest.py`` (whitespace stripped; number
  ids accept "42", " 42 " and "42.0");
* the items each user already has, as CSR arrays (``seen_indptr``, ``seen_items``) cut from the
  sorted (user, item) keys, so excluding them is one indexed assignment per batch;
* for strategies that serve an inner product (``Strategy.served_tables()``: the MF strategies and
  SML), the user table and the transposed item table as contiguous float32 matrices: the scores
  of a batch of users are ``user_table[rows] @ item_table_t``. Other strategies (sequential
  models, popularity) go through their own ``score``, the generic path;
* the scores of an unknown user (the strategy's cold-user rule, or popularity), computed once.

An unknown user gets the cold-user rule (``fallback``; exactly what the replay serves a user it has
never trained on), or a DataError when ``strict``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..data.periods import Period
from ..errors import ConfigError, DataError
from .ingest import id_kind, normalise_query
from .registry import Checkpoint, ModelRegistry
from .update import PRODUCTION_ROLE, cold_user_scores, strategy_from


@dataclass
class Answer:
    """The top items of one queried user (raw item ids, best first)."""

    user: Any
    items: list
    scores: list[float]
    fallback: bool


class Recommender:
    """A loaded version, ready to answer top-K queries (what ``serve`` swaps when a version lands)."""

    def __init__(self, checkpoint: Checkpoint, device: str | None = None,
                 served: dict[str, torch.Tensor] | None = None) -> None:
        """``served``: the version's stored served tables (``ModelRegistry.load_served``); without
        them the strategy is rebuilt from its state and asked for them."""
        self.checkpoint = checkpoint
        self.version = checkpoint.version
        self._device = device
        self._strategy = None
        self.n_items = checkpoint.n_items
        self.item_ids = checkpoint.item_ids
        self.user_kind = id_kind(checkpoint.user_ids)
        self.user_row = {uid: row for row, uid in enumerate(checkpoint.user_ids.tolist())}
        cumulative = checkpoint.cumulative
        self.cumulative = cumulative
        self.pair_keys = cumulative.pair_keys
        # Seen items as CSR: the keys are sorted by user, then item (key = user << 32 | item).
        owners = self.pair_keys >> 32
        self.seen_indptr = np.searchsorted(owners, np.arange(checkpoint.n_users + 1, dtype=np.int64))
        self.seen_items = torch.from_numpy((self.pair_keys & 0xFFFFFFFF).astype(np.int64))
        # Popularity fallback: distinct users per item over everything applied.
        self.popularity = np.bincount(self.seen_items.numpy(), minlength=checkpoint.n_items)
        self.user_table: torch.Tensor | None = None
        self.item_table_t: torch.Tensor | None = None
        self._cold: torch.Tensor | None = None
        if served is None:
            tables = self.strategy.served_tables()
            served = None if tables is None else {"user": tables[0], "item": tables[1]}
        elif "cold" not in served:   # the strategy has no cold-user rule: popularity
            self._cold = torch.from_numpy(self.popularity.astype(np.float32))
        if served is not None:
            with torch.no_grad():
                self.user_table = served["user"].detach().float().cpu().contiguous()
                self.item_table_t = served["item"].detach().float().cpu().T.contiguous()
                if "cold" in served:
                    self._cold = served["cold"].float().cpu()

    @property
    def strategy(self):
        """The version's strategy, rebuilt from its state on first use (the generic path needs it;
        a version with stored served tables answers without it)."""
        if self._strategy is None:
            self._strategy = strategy_from(self.checkpoint, self._device)
        return self._strategy

    @property
    def device(self) -> torch.device:
        return self.strategy.device if self._strategy is not None or not self.fast else torch.device("cpu")

    @classmethod
    def from_registry(cls, registry: str | Path | ModelRegistry, version: int | None = None) -> "Recommender":
        registry = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry)
        checkpoint = registry.load(version)
        return cls(checkpoint, served=registry.load_served(checkpoint))

    @property
    def fast(self) -> bool:
        """True when queries are scored with one matrix product (the strategy serves tables)."""
        return self.user_table is not None

    def lookup(self, user_ids: Sequence[Any]) -> np.ndarray:
        """Table rows of raw user ids (-1 for unknown), under the ids rule (" 42 " finds 42)."""
        kind, rows = self.user_kind, self.user_row
        return np.fromiter((rows.get(normalise_query(q, kind), -1) for q in user_ids), dtype=np.int64,
                           count=len(user_ids))

    def seen_mask(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row in ``users``, item) of every pair each user has: a sparse mask, from the CSR arrays."""
        users = np.asarray(users, dtype=np.int64)
        lo, hi = self.seen_indptr[users], self.seen_indptr[users + 1]
        counts = hi - lo
        rows = np.repeat(np.arange(len(users)), counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return rows, self.seen_items.numpy()[np.repeat(lo, counts) + offsets]

    def scores(self, users: np.ndarray) -> torch.Tensor:
        """Scores ``[len(users), n_items]`` of every item: one product when the strategy serves
        tables, else through the strategy's ``score``."""
        users = np.asarray(users, np.int64)
        if self.fast:
            with torch.no_grad():
                return self.user_table[torch.from_numpy(users)] @ self.item_table_t
        return self.generic_scores(users)

    def generic_scores(self, users: np.ndarray) -> torch.Tensor:
        """Scores through the strategy's own ``score`` (every strategy; the fast path's twin)."""
        users = np.asarray(users, np.int64)
        # A query is not an interaction: a user asked for twice is scored once, or the second row
        # would read the first (a placeholder item) as an earlier row of the period, for the
        # strategies whose score reads in-period history (ease, ials, sequential models).
        unique, inverse = np.unique(users, return_inverse=True)
        if len(unique) < len(users):
            return self.generic_scores(unique)[torch.from_numpy(inverse)]
        n_items = self.n_items
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

    def top_k(self, user_ids: Sequence[Any], k: int = 20, exclude_seen: bool = True,
              strict: bool = False) -> list[Answer]:
        """Top-``k`` items per user, in query order (the fast form of :meth:`recommend`).

        Excluded items never appear, so a user who has nearly every item gets fewer than ``k``.
        """
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        user_ids = list(user_ids)
        index = self.lookup(user_ids)
        unknown = index < 0
        if strict and unknown.any():
            raise DataError(f"unknown user {user_ids[int(np.argmax(unknown))]!r} (not in version {self.version}); "
                            "drop --strict to serve the cold-start rule")
        answers: list[Answer | None] = [None] * len(user_ids)
        known = np.flatnonzero(~unknown)
        width = min(k, self.n_items)
        if known.size:
            users = index[known]
            scores = self.scores(users)
            if exclude_seen:
                rows, items = self.seen_mask(users)
                scores[torch.from_numpy(rows), torch.from_numpy(items)] = -torch.inf
            values, order = torch.topk(scores, width, dim=1)
            for position, query in enumerate(known):
                answers[query] = self._answer(user_ids[query], values[position], order[position], False)
        if unknown.any():
            values, order = torch.topk(self.cold_scores(), width)
            cold = self._answer(None, values, order, True)
            for query in np.flatnonzero(unknown):
                answers[query] = Answer(user_ids[query], cold.items, cold.scores, True)
        return answers  # type: ignore[return-value]

    def _answer(self, user: Any, values: torch.Tensor, order: torch.Tensor, fallback: bool) -> Answer:
        values_np = values.numpy().astype(np.float64)
        keep = np.isfinite(values_np)                 # drop excluded items (score -inf)
        return Answer(user, self.item_ids[order.numpy()[keep]].tolist(), values_np[keep].tolist(), fallback)

    def recommend(self, user_ids: Sequence[Any], k: int = 20, exclude_seen: bool = True,
                  strict: bool = False) -> pd.DataFrame:
        """Top-``k`` items per user: columns user, rank, item, score, fallback, version.

        An unknown user gets the strategy's cold-user rule (``Strategy.score_new_users``) with
        ``fallback=True``; a strategy without one (e.g. ``cold_users = "init"``) falls back to the
        most popular items (distinct users per item, the popularity as score). ``strict`` makes an
        unknown user a DataError.
        """
        answers = self.top_k(user_ids, k, exclude_seen, strict)
        counts = [len(a.items) for a in answers]
        return pd.DataFrame({
            "user": np.repeat(np.asarray([a.user for a in answers], dtype=object), counts),
            "rank": np.concatenate([np.arange(1, n + 1) for n in counts]) if answers else np.zeros(0, np.int64),
            "item": [item for a in answers for item in a.items],
            "score": np.asarray([s for a in answers for s in a.scores], dtype=np.float64),
            "fallback": np.repeat([a.fallback for a in answers], counts).astype(bool),
            "version": self.version})

    def cold_scores(self) -> torch.Tensor:
        """Scores of every item for a user this version has never seen (computed once)."""
        if self._cold is None:
            cold = cold_user_scores(self.strategy)
            self._cold = torch.from_numpy(self.popularity.astype(np.float32)) if cold is None else cold
        return self._cold


def recommend(registry: str | Path | ModelRegistry, user_ids: Sequence[Any], k: int = 20,
              exclude_seen: bool = True, strict: bool = False, version: int | None = None) -> pd.DataFrame:
    """Top-``k`` items for each of ``user_ids`` from the latest version, or ``version``
    (see Recommender.recommend)."""
    return Recommender.from_registry(registry, version).recommend(user_ids, k, exclude_seen, strict)
