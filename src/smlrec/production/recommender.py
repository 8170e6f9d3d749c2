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
tables does not come here at all (unless the query carries recent items): it answers from
served.py without importing torch or pandas.

Recent items (``top_k(..., recent=...)``, sml-method.md section 6): a user's recent items are that
user's earlier rows of the query period, as the replay holds the earlier rows of a scored period.
The query period is built as every queried user's recent rows (oldest first) followed by one
placeholder row per user, and only the placeholder rows are scored, through the strategy's own
``score`` (it reads each row's history with ``sequence_contexts``: the stored window, then the
earlier rows of the period). A user the version does not know is scored on a scratch row the
strategy grows once (``Strategy.grow``: a never-trained row, what the replay holds for a user not
seen yet), so a new user's recent items count too. A strategy whose declared history rule is
"none" (``smlrec strategies``) reads no rows of the scored period: its answer is the usual one,
``recent_used`` is False, and the recent items are only excluded from the answer.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from ..data.periods import Period
from .registry import Checkpoint, ModelRegistry
from ..errors import ConfigError
from .served import Answer, Selector, block_scores, select_top
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
        self._reads_history: bool | None = None
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
        # A strategy's score() caches per-period inputs in one slot: serve's worker threads take
        # turns (and grow() for scratch rows must not interleave with a score).
        self._lock = threading.RLock()
        self._scratch = 0             # never-trained user rows grown beyond the version's users

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
        earlier rows of the period (itemknn, sknn, ease, ials, the sequential models) must not take
        a repeated user's placeholder item for an interaction."""
        users, repeat = np.unique(np.asarray(users, np.int64), return_inverse=True)
        scores = self._period_scores(users, np.zeros(0, np.int64), np.zeros(0, np.int64))
        return scores[torch.from_numpy(repeat.reshape(-1))] if len(users) else scores

    def _period_scores(self, users: np.ndarray, recent_users: np.ndarray, recent_items: np.ndarray) -> torch.Tensor:
        """Scores ``[len(users), n_items]`` of a query period: the rows (recent_users, recent_items)
        in that order, then one placeholder row per user of ``users`` (distinct), of which only
        the placeholders are scored (their own item is never read: section 6)."""
        n_items, n_recent = self.n_items, len(recent_users)
        rows_users = np.concatenate([np.asarray(recent_users, np.int64), np.asarray(users, np.int64)])
        rows_items = np.concatenate([np.asarray(recent_items, np.int64), np.zeros(len(users), np.int64)])
        n = len(rows_users)
        period = Period(index=self.cumulative.next_period, role=PRODUCTION_ROLE, start=self.cumulative.rows,
                        users=rows_users, items=rows_items,
                        times=np.full(n, self.cumulative.last_time, np.int64),
                        items_seen=np.full(n, self.cumulative.items_seen, np.int64),
                        seen=self.cumulative.seen)
        batch = max(1, (1 << 18) // max(n_items, 1))  # bounds the [batch, n_items, dim] gather of score()
        out = []
        with self._lock, torch.no_grad():
            all_items = torch.arange(n_items, device=self.device)
            for lo in range(n_recent, n, batch):
                rows = slice(lo, min(lo + batch, n))
                candidates = all_items.expand(rows.stop - rows.start, n_items)
                out.append(self.strategy.score(period, rows, candidates).float().cpu())
        return torch.cat(out) if out else torch.zeros((0, n_items))

    @property
    def history_rule(self) -> str:
        """What a scored row of this version's strategy reads of its user's history (the rule
        declared with ``register(..., history=...)``; "" for a strategy that declares none)."""
        from ..strategies import STRATEGIES

        spec = STRATEGIES.get(self.checkpoint.strategy)
        if spec is None:                     # a plug-in: the rule is known once it is loaded
            _ = self.strategy
            spec = STRATEGIES.get(self.checkpoint.strategy)
        return spec.history if spec is not None else ""

    @property
    def reads_history(self) -> bool:
        """Whether recent items change the scores: the strategy's own answer when its settings
        decide it (``history = "fold-in"`` on an MF strategy), else every strategy but those whose
        declared history rule is "none" (a plug-in that declares nothing is asked through its score)."""
        if self._reads_history is None:
            says = self.strategy.reads_history()
            self._reads_history = (not self.history_rule.strip().lower().startswith("none")
                                   if says is None else bool(says))
        return self._reads_history

    def _scratch_rows(self, count: int) -> np.ndarray:
        """``count`` never-trained user rows for users the version does not know (grown once
        beyond the version's users and reused: scoring never trains them)."""
        with self._lock:
            if count > self._scratch:
                self.strategy.grow(self.checkpoint.n_users + count, self.strategy.n_items)
                self._scratch = count
        return self.checkpoint.n_users + np.arange(count, dtype=np.int64)

    def recent_scores(self, users: np.ndarray, recent: Sequence[np.ndarray]) -> np.ndarray:
        """Scores ``[len(users), n_items]`` of table rows ``users`` (-1: a user the version does
        not know), each after its recent item rows ``recent[i]`` (oldest first), as the replay
        scores a row after the user's earlier rows of the period. A strategy that reads no
        history gets the usual scores (known users) or the cold rule (unknown users)."""
        users = np.asarray(users, np.int64)
        out = np.empty((len(users), self.n_items), np.float32)
        if not self.reads_history:
            known = np.flatnonzero(users >= 0)
            if known.size:
                out[known] = self._score_rows(users[known])
            if known.size < len(users):
                out[users < 0] = self.cold_scores().numpy()
            return out
        # A user asked twice in one request is scored in separate query periods ("rounds"), so
        # one entry's recent items never become another entry's history.
        occurrence = np.zeros(len(users), np.int64)
        counts: dict[int, int] = {}
        for i, user in enumerate(users.tolist()):
            if user >= 0:
                occurrence[i] = counts.get(user, 0)
                counts[user] = occurrence[i] + 1
        for round_ in range(int(occurrence.max(initial=0)) + 1):
            entries = np.flatnonzero(occurrence == round_)
            rows = users[entries].copy()
            unknown = rows < 0
            if unknown.any():
                rows[unknown] = self._scratch_rows(int(unknown.sum()))
            lengths = np.fromiter((len(recent[i]) for i in entries), np.int64, count=len(entries))
            items = (np.concatenate([np.asarray(recent[i], np.int64) for i in entries])
                     if lengths.sum() else np.zeros(0, np.int64))
            out[entries] = self._period_scores(rows, np.repeat(rows, lengths), items).numpy()
        return out

    def _recent_answers(self, user_ids: list, index: np.ndarray, recent: list[np.ndarray], k: int,
                        exclude_seen: bool) -> list[Answer]:
        """Answers of queries that carry recent items (``index``: their table rows, -1 unknown)."""
        scores = self.recent_scores(index, recent)
        if exclude_seen:
            known = np.flatnonzero(index >= 0)
            rows, seen = self.selector.seen_mask(index[known])
            scores[known[rows], seen] = -np.inf
            lengths = np.fromiter((len(r) for r in recent), np.int64, count=len(recent))
            if lengths.sum():
                scores[np.repeat(np.arange(len(recent)), lengths), np.concatenate(recent)] = -np.inf
        items, values = select_top(scores, k)
        values64 = values.astype(np.float64)
        names, used = self.selector.item_list, self.reads_history
        answers = []
        for position, user in enumerate(user_ids):
            keep = np.isfinite(values64[position])
            answers.append(Answer(user, [names[i] for i in items[position][keep].tolist()],
                                  values64[position][keep].tolist(), bool(index[position] < 0), used))
        return answers

    def top_k(self, user_ids: Sequence[Any], k: int = 20, exclude_seen: bool = True,
              strict: bool = False, recent: Sequence[Sequence[Any] | None] | None = None) -> list[Answer]:
        """Top-``k`` items per user, in query order (the fast form of :meth:`recommend`).

        Excluded items never appear, so a user who has nearly every item gets fewer than ``k``.
        ``recent``: one entry per user (None or [] for none), the raw ids of items the user
        interacted with since the version's data, oldest first (see the module docstring); an
        id the version does not know is a DataError naming it. With ``exclude_seen`` they are
        excluded too. Queries without recent items take the usual paths.
        """
        user_ids = list(user_ids)
        if recent is None or not any(recent):
            return self.selector.top_k(user_ids, k, exclude_seen, strict)
        recent = list(recent)
        if len(recent) != len(user_ids):
            raise ConfigError(f"recent: {len(recent)} lists for {len(user_ids)} users (one per user, None for none)")
        index = self.selector.check(user_ids, k, strict)
        with_recent = [i for i, r in enumerate(recent) if r]
        rows = [self.selector.item_rows(list(recent[i]), user_ids[i]) for i in with_recent]
        answers: list[Answer | None] = [None] * len(user_ids)
        plain = [i for i, r in enumerate(recent) if not r]
        if plain:
            for i, a in zip(plain, self.selector.top_k([user_ids[i] for i in plain], k, exclude_seen, strict)):
                answers[i] = a
        done = self._recent_answers([user_ids[i] for i in with_recent], index[with_recent], rows, k, exclude_seen)
        for i, a in zip(with_recent, done):
            answers[i] = a
        return answers  # type: ignore[return-value]

    def recommend(self, user_ids: Sequence[Any], k: int = 20, exclude_seen: bool = True,
                  strict: bool = False, recent: Sequence[Sequence[Any] | None] | None = None) -> "pd.DataFrame":
        """Top-``k`` items per user: columns user, rank, item, score, fallback, version.

        An unknown user gets the strategy's cold-user rule (``Strategy.score_new_users``) with
        ``fallback=True``; a strategy without one (e.g. ``cold_users = "init"``) falls back to the
        most popular items (distinct users per item, the popularity as score). ``strict`` makes an
        unknown user a DataError. ``recent``: see :meth:`top_k`.
        """
        return answers_frame(self.top_k(user_ids, k, exclude_seen, strict, recent), self.version)

    def _cold_scores(self) -> np.ndarray | None:
        if self._cold is None and self._cold_from_strategy:
            with self._lock:
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
              exclude_seen: bool = True, strict: bool = False, version: int | None = None,
              recent: Sequence[Sequence[Any] | None] | None = None) -> "pd.DataFrame":
    """Top-``k`` items for each of ``user_ids`` from the latest version, or ``version``
    (see Recommender.recommend; ``recent``: Recommender.top_k)."""
    return Recommender.from_registry(registry, version).recommend(user_ids, k, exclude_seen, strict, recent)
