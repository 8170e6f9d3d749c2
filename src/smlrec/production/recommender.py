"""Answering top-K queries from a registry version: what ``smlrec recommend`` and ``serve`` use.

A :class:`Recommender` holds one loaded version. Everything that does not depend on the query is
prepared when the version is loaded (the moment ``serve`` swaps it in), so a query is a lookup, one
matrix product and a top-k selection (served.py does both, with numpy):

* the raw-id -> row dictionary, under the ids rule of ``ingest.py`` (whitespace stripped; number
  ids accept "42", " 42 " and "42.0");
* the items each user already has, as CSR arrays cut from the sorted (user, item) keys, so
  excluding them is one indexed assignment per batch;
* for strategies that serve an inner product (``Strategy.served_tables()``: the MF strategies and
  SML), the user table and the transposed item table as contiguous float32 matrices: the scores
  of a batch of users are ``user_table[rows] @ item_table_t``, in fixed-shape blocks (served.py).
  Other strategies (sequential models, popularity) go through their own ``score``, the generic
  path (torch), which is also the fast path's slow twin in the tests;
* the scores of an unknown user (the strategy's cold-user rule, or popularity), computed once.

An unknown user gets the cold-user rule (``fallback``; exactly what the replay serves a user it has
never trained on), or a DataError when ``strict``. ``smlrec recommend`` on a version with served
tables does not come here at all: it answers from served.py without importing torch or pandas.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from ..data.periods import Period
from .registry import Checkpoint, ModelRegistry
from .served import Answer, Selector, block_scores
from .update import PRODUCTION_ROLE, cold_user_scores, strategy_from

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Answer", "Recommender", "recommend", "answers_frame"]


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
        self.cumulative = checkpoint.cumulative
        self.user_table: np.ndarray | None = None
        self.item_table_t: np.ndarray | None = None
        cold: np.ndarray | None = None
        self._cold_from_strategy = served is None     # stored tables without "cold": popularity
        if served is None:
            tables = self.strategy.served_tables()
            served = None if tables is None else {"user": tables[0], "item": tables[1]}
        if served is not None:
            with torch.no_grad():
                self.user_table = served["user"].detach().float().cpu().contiguous().numpy()
                self.item_table_t = np.ascontiguousarray(served["item"].detach().float().cpu().numpy().T)
                if "cold" in served:
                    cold = served["cold"].float().cpu().numpy()
        self.selector = Selector(self.version, checkpoint.user_ids, checkpoint.item_ids,
                                 self.cumulative.pair_keys, self._score_rows, self._cold_scores)
        self._cold = cold

    @property
    def user_row(self) -> dict:
        return self.selector.user_row

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

    def prepare(self) -> "Recommender":
        """Precompute every known user's top items (see served.Selector.prepare); ``serve`` calls
        this while loading a version, off the request path."""
        # a strategy scoring through its own network is costed as a 256-d product
        self.selector.prepare(256 if self.user_table is None else self.user_table.shape[1])
        return self

    def lookup(self, user_ids: Sequence[Any]) -> np.ndarray:
        """Table rows of raw user ids (-1 for unknown), under the ids rule (" 42 " finds 42)."""
        return self.selector.lookup(user_ids)

    def seen_mask(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row in ``users``, item) of every pair each user has."""
        return self.selector.seen_mask(users)

    def _score_rows(self, users: np.ndarray) -> np.ndarray:
        if self.fast:
            return block_scores(self.user_table, self.item_table_t, users)
        return self.generic_scores(users).numpy()

    def scores(self, users: np.ndarray) -> torch.Tensor:
        """Scores ``[len(users), n_items]`` of every item: one product (in fixed-shape blocks) when
        the strategy serves tables, else through the strategy's ``score``."""
        return torch.from_numpy(self._score_rows(np.asarray(users, np.int64)))

    def generic_scores(self, users: np.ndarray) -> torch.Tensor:
        """Scores through the strategy's own ``score`` (every strategy; the fast path's twin).

        Each distinct user is one row of the query period: a strategy that reads the history of
        earlier rows of the period (itemknn, sknn, ease, ials, the sequential models) must not take a repeated user's placeholder
        item for an interaction."""
        users, repeat = np.unique(np.asarray(users, np.int64), return_inverse=True)
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
        return torch.cat(out)[torch.from_numpy(repeat.reshape(-1))] if out else torch.zeros((0, n_items))

    def top_k(self, user_ids: Sequence[Any], k: int = 20, exclude_seen: bool = True,
              strict: bool = False) -> list[Answer]:
        """Top-``k`` items per user, in query order (the fast form of :meth:`recommend`).

        Excluded items never appear, so a user who has nearly every item gets fewer than ``k``.
        """
        return self.selector.top_k(user_ids, k, exclude_seen, strict)

    def recommend(self, user_ids: Sequence[Any], k: int = 20, exclude_seen: bool = True,
                  strict: bool = False) -> "pd.DataFrame":
        """Top-``k`` items per user: columns user, rank, item, score, fallback, version.

        An unknown user gets the strategy's cold-user rule (``Strategy.score_new_users``) with
        ``fallback=True``; a strategy without one (e.g. ``cold_users = "init"``) falls back to the
        most popular items (distinct users per item, the popularity as score). ``strict`` makes an
        unknown user a DataError.
        """
        return answers_frame(self.top_k(user_ids, k, exclude_seen, strict), self.version)

    def _cold_scores(self) -> np.ndarray | None:
        if self._cold is None and self._cold_from_strategy:
            cold = cold_user_scores(self.strategy)
            self._cold = None if cold is None else cold.numpy()
            self._cold_from_strategy = False
        return self._cold

    def cold_scores(self) -> torch.Tensor:
        """Scores of every item for a user this version has never seen (the cold rule, else
        popularity)."""
        cold = self._cold_scores()
        return torch.from_numpy(self.selector.popularity.astype(np.float32) if cold is None else cold)


def answers_frame(answers: list[Answer], version: int) -> "pd.DataFrame":
    """Answers as a frame: columns user, rank, item, score, fallback, version."""
    import pandas as pd

    counts = [len(a.items) for a in answers]
    return pd.DataFrame({
        "user": np.repeat(np.asarray([a.user for a in answers], dtype=object), counts),
        "rank": np.concatenate([np.arange(1, n + 1) for n in counts]) if answers else np.zeros(0, np.int64),
        "item": [item for a in answers for item in a.items],
        "score": np.asarray([s for a in answers for s in a.scores], dtype=np.float64),
        "fallback": np.repeat([a.fallback for a in answers], counts).astype(bool),
        "version": version})


def recommend(registry: str | Path | ModelRegistry, user_ids: Sequence[Any], k: int = 20,
              exclude_seen: bool = True, strict: bool = False, version: int | None = None) -> "pd.DataFrame":
    """Top-``k`` items for each of ``user_ids`` from the latest version, or ``version``
    (see Recommender.recommend)."""
    return Recommender.from_registry(registry, version).recommend(user_ids, k, exclude_seen, strict)
