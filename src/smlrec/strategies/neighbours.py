"""Neighbour baselines that read a user's history: item-item kNN and V-SKNN (sml-method.md section 6).

Both keep, for every user, the window of their last ``history`` items (``windows[n_users, H]``,
right-aligned, ``-1`` padding: the state of strategies/sequential.py) and score a row from its
user's history *so far*: rows of earlier periods and earlier rows of the scored period, never the
row itself or a later row (section 6, "History available at scoring time"). The contexts of a
whole period come from :func:`~smlrec.strategies.sequential.sequence_contexts` at once.

Recency: the history item ``k`` steps back from the most recent one weighs ``recency ** k``
(1.0: every item of the history weighs 1).

* ``itemknn``: item-item similarity over the distinct (user, item) pairs of the training window
  (the last ``window`` periods the strategy received, 0 = all; the pretrain block counts as one
  period, as the strategy receives it as one block), asymmetric cosine
  ``sim(i, j) = c_ij / (c_i^alpha * c_j^(1 - alpha) + shrink)`` where ``c_i`` is the number of users
  with item i in the window and ``c_ij`` the number with both (``sim(i, i) = 0``); each item keeps
  its ``neighbours`` most similar items (row i of a CSR matrix; ties to the lower item index).
  ``score(row, c) = sum over history items h of weight(h) * sim(h, c)``. The window's counts
  ``c_ij`` are updated at each update with the pairs that enter and leave it (exact integers), the
  similarity recomputed from them, so the model served for period t+1 is built from periods <= t.
* ``sknn`` (V-SKNN, Ludewig et al. UMUAI 2021): the *sessions* are the users' stored windows as of
  the last update (periods <= t only: other users' rows of the scored period are never read). Of
  the ``sample`` most recently active users' sessions (the row's own user excluded), the
  ``neighbours`` most similar to the row's history are kept, cosine between the row's
  recency-weighted binary item vector (an item's weight: that of its most recent occurrence) and
  the session's binary item vector; ``score(row, c) = sum over kept sessions containing c of their
  similarity``.

Cold start: a row whose user has no earlier item at all is scored by the popularity floor,
decayed item counts (``pop_decay`` per period, 0.5 = pop-recent; strategies/popularity.py).
Production serves an unknown user the same ranking (``score_new_users``).

Both scorers are vectorised over a block of rows (sparse products, then one ``searchsorted``
gathers the candidates' entries); ``*_reference`` are their slow per-row twins for the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ..config import require
from ..data.periods import Period
from .base import Strategy, StrategyContext
from .popularity import decayed_counts
from .sequential import PAD, ContextCache, sequence_contexts


# -- settings ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ItemKNNSettings:
    """Settings of ``itemknn`` (defaults chosen on the bundled data's validation periods: docs/baselines.md)."""

    window: int = 0            # periods of training data, most recent first (0: all so far)
    alpha: float = 0.7         # asymmetric cosine: c_ij / (c_i^alpha * c_j^(1-alpha) + shrink)
    shrink: float = 0.0
    neighbours: int = 100      # most similar items kept per item
    history: int = 20          # last items of the user's history that score a row
    recency: float = 0.8       # weight x recency per step back in the history (1: no decay)
    pop_decay: float = 0.5     # the cold-user popularity floor's decay per period

    def __post_init__(self) -> None:
        require(self.window >= 0, "window", ">= 0 (0: all periods)", self.window)
        require(0.0 <= self.alpha <= 1.0, "alpha", "in [0, 1]", self.alpha)
        require(self.shrink >= 0.0, "shrink", ">= 0", self.shrink)
        require(self.neighbours >= 1, "neighbours", ">= 1", self.neighbours)
        require(self.history >= 1, "history", ">= 1", self.history)
        require(0.0 < self.recency <= 1.0, "recency", "in (0, 1]", self.recency)
        require(0.0 < self.pop_decay <= 1.0, "pop_decay", "in (0, 1]", self.pop_decay)


@dataclass(frozen=True)
class SKNNSettings:
    """Settings of ``sknn`` (V-SKNN; defaults chosen on the bundled data's validation periods)."""

    neighbours: int = 50       # most similar sessions kept per row
    sample: int = 1000         # sessions compared: those of the most recently active users
    history: int = 100         # items of a session and of a row's history
    recency: float = 0.9       # weight x recency per step back in the row's history (1: no decay)
    pop_decay: float = 0.5     # the cold-user popularity floor's decay per period

    def __post_init__(self) -> None:
        require(self.neighbours >= 1, "neighbours", ">= 1", self.neighbours)
        require(self.sample >= 1, "sample", ">= 1", self.sample)
        require(self.history >= 1, "history", ">= 1", self.history)
        require(0.0 < self.recency <= 1.0, "recency", "in (0, 1]", self.recency)
        require(0.0 < self.pop_decay <= 1.0, "pop_decay", "in (0, 1]", self.pop_decay)


# -- shared pieces -------------------------------------------------------------------------
def recency_weights(contexts: np.ndarray, recency: float) -> np.ndarray:
    """``[n, H]`` weights of right-aligned contexts: ``recency ** steps back``, 0 on padding."""
    width = contexts.shape[1]
    steps = np.arange(width - 1, -1, -1, dtype=np.float64)
    return np.where(contexts != PAD, recency ** steps[None, :], 0.0)


def gather(matrix: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
    """``matrix[r, candidates[r, c]]`` for every r, c (0 where not stored), without densifying."""
    matrix = matrix.tocsr()
    matrix.sum_duplicates()          # canonical: sorted column indices, one entry per column
    n_cols = np.int64(matrix.shape[1])
    rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
    keys = rows * n_cols + matrix.indices.astype(np.int64)          # increasing
    query = np.arange(len(candidates), dtype=np.int64)[:, None] * n_cols + candidates.astype(np.int64)
    at = np.minimum(np.searchsorted(keys, query), max(len(keys) - 1, 0))
    if len(keys) == 0:
        return np.zeros(candidates.shape)
    return np.where(keys[at] == query, matrix.data[at], 0.0)


def history_matrix(contexts: np.ndarray, weights: np.ndarray, n_items: int, binary: bool) -> sp.csr_matrix:
    """``[n, n_items]`` sparse history vectors: summed weights, or (``binary``) each item's
    largest weight, i.e. that of its most recent occurrence."""
    rows = np.repeat(np.arange(len(contexts), dtype=np.int64), contexts.shape[1])
    items, values = contexts.ravel(), weights.ravel()
    keep = items != PAD
    rows, items, values = rows[keep], items[keep], values[keep]
    if binary and len(rows):
        order = np.lexsort((-values, items, rows))        # per (row, item): largest weight first
        rows, items, values = rows[order], items[order], values[order]
        first = np.ones(len(rows), dtype=bool)
        first[1:] = (rows[1:] != rows[:-1]) | (items[1:] != items[:-1])
        rows, items, values = rows[first], items[first], values[first]
    return sp.csr_matrix((values, (rows, items)), shape=(len(contexts), n_items))


def top_per_row(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """The ``k`` largest stored entries of each row (ties: the lower column), zeros dropped."""
    matrix = matrix.tocsr()
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
    order = np.lexsort((matrix.indices, -matrix.data, rows))
    rank = np.arange(len(order)) - matrix.indptr[rows[order]]
    kept = order[rank < k]
    return sp.csr_matrix((matrix.data[kept], (rows[kept], matrix.indices[kept])), shape=matrix.shape)


class HistoryStrategy(Strategy):
    """What both neighbour strategies keep: the users' windows, their last activity, the counts
    of the popularity floor, and the number of periods received."""

    calibrated_scores = False       # similarity sums, not logits

    def __init__(self, settings: Any, context: StrategyContext) -> None:
        super().__init__(settings, context)
        self.windows = np.full((context.n_users, settings.history), PAD, dtype=np.int64)
        self.last_active = np.full(context.n_users, -1, dtype=np.int64)   # rows received before it
        self.rows_seen = 0
        self.counts = np.zeros(context.n_items, dtype=np.float64)
        self.blocks = 0                                  # periods received (pretrain = one)
        self._scored = ContextCache()

    def _start(self, pretrain: Period, initial_state: dict[str, torch.Tensor]) -> None:
        self.counts = decayed_counts(self.counts, pretrain.items, 1.0)
        self._receive(pretrain)

    def _update(self, period: Period) -> None:
        self.counts = decayed_counts(self.counts, period.items, self.settings.pop_decay)
        self._receive(period)

    def _receive(self, period: Period) -> None:
        users = np.asarray(period.users, dtype=np.int64)
        _, touched, new_windows = sequence_contexts(self.windows, users, period.items)
        self.windows[touched] = new_windows
        # the position of each user's last row in the stream (np.maximum.at: later rows win)
        np.maximum.at(self.last_active, users, self.rows_seen + np.arange(len(users)))
        self.rows_seen += len(users)
        self.blocks += 1
        self._scored.clear()
        self._fit(period)

    def _fit(self, period: Period) -> None:
        """Rebuild the model from what was received (called after every block)."""

    def period_contexts(self, period: Period) -> np.ndarray:
        """The history of every row of a period about to be scored (cached until the next update)."""
        return self._scored.get(self.windows, period, self.blocks, sequence_contexts)

    def score(self, period: Period, rows: slice, candidates: torch.Tensor) -> torch.Tensor:
        contexts = self.period_contexts(period)[rows]
        cands = candidates.detach().cpu().numpy().astype(np.int64)
        scores = np.zeros(cands.shape, dtype=np.float64)
        warm = contexts[:, -1] != PAD
        if warm.any():
            scores[warm] = self.history_scores(np.asarray(period.users[rows], np.int64)[warm],
                                               contexts[warm], cands[warm])
        scores[~warm] = self.counts[cands[~warm]]
        return torch.from_numpy(scores.astype(np.float32)).to(self.device)

    def history_scores(self, users: np.ndarray, contexts: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def score_new_users(self, candidates: torch.Tensor) -> torch.Tensor:
        cands = candidates.detach().cpu().numpy().astype(np.int64)
        return torch.from_numpy(self.counts[cands].astype(np.float32)).to(self.device)

    def _grow(self, n_users: int, n_items: int) -> None:
        """New users start with an empty history, new items with zero counts (no neighbours)."""
        self.windows = np.concatenate([self.windows, np.full((n_users - len(self.windows), self.windows.shape[1]),
                                                             PAD, dtype=np.int64)])
        self.last_active = np.concatenate([self.last_active, np.full(n_users - len(self.last_active), -1,
                                                                      dtype=np.int64)])
        self.counts = np.concatenate([self.counts, np.zeros(n_items - len(self.counts))])
        self._scored.clear()

    def _state(self) -> dict[str, Any]:
        return {"windows": self.windows.copy(), "last_active": self.last_active.copy(),
                "rows_seen": self.rows_seen, "counts": self.counts.copy(), "blocks": self.blocks}

    def _load_state(self, state: dict[str, Any]) -> None:
        windows = np.asarray(state["windows"], dtype=np.int64)
        if windows.shape != self.windows.shape:
            raise ValueError(f"windows of shape {windows.shape}, expected {self.windows.shape}")
        counts = np.asarray(state["counts"], dtype=np.float64)
        if counts.shape != (self.n_items,):
            raise ValueError(f"counts of shape {counts.shape}, expected ({self.n_items},)")
        self.windows = windows.copy()
        self.last_active = np.asarray(state["last_active"], dtype=np.int64).copy()
        self.rows_seen = int(state["rows_seen"])
        self.counts = counts.copy()
        self.blocks = int(state["blocks"])
        self._scored.clear()


# -- itemknn -------------------------------------------------------------------------------
def top_per_dense_row(values: np.ndarray, k: int) -> np.ndarray:
    """Mask of the ``k`` largest positive entries of each row (ties: the lower column)."""
    if k >= values.shape[1]:
        return values > 0
    kth = -np.partition(-values, k - 1, axis=1)[:, k - 1: k]     # the k-th largest value per row
    keep = values >= kth
    excess = np.flatnonzero(keep.sum(axis=1) > k)                  # rows whose ties overflow k
    if len(excess):
        part = values[excess]
        tied = part == kth[excess]
        room = k - (part > kth[excess]).sum(axis=1, keepdims=True)
        keep[excess] = (part > kth[excess]) | (tied & (np.cumsum(tied, axis=1) <= room))
    return keep & (values > 0)


SPARSE_PRODUCT_COST = 40.0
"""Cost of one multiply-add of scipy's sparse x sparse product relative to its sparse x dense one
(measured on the bundled MovieLens log: 3.2 s for 61M pairs against 1.3 s for 980M)."""


def asymmetric_cosine(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, alpha: float,
                      shrink: float, neighbours: int, block_elements: int = 1 << 22) -> sp.csr_matrix:
    """Top-``neighbours`` asymmetric cosine of items over the binary user-item matrix of the pairs.

    Computed ``block`` item rows at a time (co-occurrence ``X[:, block]^T X``, dense per block),
    pruned per block, so the full co-occurrence matrix never exists at once. The block's product
    is sparse x dense (``nnz(X) * block`` multiply-adds) on a dense log such as MovieLens, where
    it was 2.4x faster, and sparse x sparse (``sum of squared user degrees`` in all) on a sparse
    log such as Yelp's, where the dense form would cost ``nnz(X) * n_items``.
    """
    x = sp.csr_matrix((np.ones(len(users)), (users, items)), shape=(n_users, n_items))
    x.data[:] = 1.0                                   # binary even if a pair were given twice
    count = np.asarray(x.sum(axis=0)).ravel()         # users per item
    xt = x.T.tocsr()
    xc = x.tocsc()
    pairs = float((np.diff(x.indptr).astype(np.float64) ** 2).sum())
    dense_product = SPARSE_PRODUCT_COST * pairs > float(x.nnz) * n_items
    right = count ** (1.0 - alpha)
    block = max(1, block_elements // max(n_items, 1))
    parts = []
    for lo in range(0, n_items, block):
        hi = min(lo + block, n_items)
        if dense_product:
            co = np.ascontiguousarray((xt @ xc[:, lo:hi].toarray()).T)
        else:
            co = (xt[lo:hi] @ x).toarray()
        co[np.arange(hi - lo), np.arange(lo, hi)] = 0.0            # no item is its own neighbour
        with np.errstate(divide="ignore", invalid="ignore"):
            sim = np.where(co > 0, co / (count[lo:hi, None] ** alpha * right[None, :] + shrink), 0.0)
        rows, cols = np.nonzero(top_per_dense_row(sim, neighbours))
        parts.append(sp.csr_matrix((sim[rows, cols], (rows, cols)), shape=(hi - lo, n_items)))
    if not parts:
        return sp.csr_matrix((n_items, n_items))
    return sp.vstack(parts, format="csr")


def top_per_csr_row(matrix: sp.csr_matrix, k: int, block_elements: int = 1 << 22) -> sp.csr_matrix:
    """The ``k`` largest positive entries of each row of a canonical CSR matrix (ties: the lower
    column), the same choice as :func:`top_per_dense_row` on the dense rows.

    Rows with at most ``k`` entries are kept whole; the others, sorted by length, are copied into
    zero-padded ``[rows, longest]`` blocks of about ``block_elements`` (columns stay in increasing
    order, so the tie rule is unchanged) and pruned with one partition per block."""
    matrix = matrix.tocsr()
    if not matrix.has_canonical_format:
        matrix.sum_duplicates()
    indptr, data = matrix.indptr.astype(np.int64), matrix.data
    lengths = np.diff(indptr)
    # the kept positions, collected rather than marked in an nnz-long mask (nnz >> n_rows * k)
    short_rows = np.flatnonzero((lengths <= k) & (lengths > 0))
    short_lengths = lengths[short_rows]
    starts = np.repeat(indptr[short_rows] - np.cumsum(short_lengths) + short_lengths, short_lengths)
    kept = [starts + np.arange(len(starts), dtype=np.int64)]
    long_rows = np.flatnonzero(lengths > k)
    long_rows = long_rows[np.argsort(lengths[long_rows], kind="stable")]
    start = 0
    while start < len(long_rows):
        stop = min(len(long_rows), start + max(1, block_elements // int(lengths[long_rows[start]])))
        width = int(lengths[long_rows[stop - 1]])
        stop = min(stop, start + max(1, block_elements // width))
        width = int(lengths[long_rows[stop - 1]])
        rows = long_rows[start:stop]
        offsets = np.arange(width, dtype=np.int64)
        inside = offsets[None, :] < lengths[rows, None]
        at = np.where(inside, indptr[rows, None] + offsets[None, :], 0)
        values = np.where(inside, data[at], 0.0)
        kept.append(at[top_per_dense_row(values, k)])
        start = stop
    kept = np.sort(np.concatenate(kept))
    kept = kept[data[kept] > 0]
    kept_indptr = np.searchsorted(kept, indptr)
    return sp.csr_matrix((data[kept], matrix.indices[kept], kept_indptr), shape=matrix.shape)


def cooccurrence(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """``X^T X`` of the binary user-item matrix of the pairs (diagonal: users per item), exact
    integers in float64."""
    x = binary_matrix(users, items, n_users, n_items)
    return canonical(x.T.tocsr() @ x)


def binary_matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    x = sp.csr_matrix((np.ones(len(users)), (users, items)), shape=(n_users, n_items))
    x.data[:] = 1.0                                   # binary even if a pair were given twice
    return x


def canonical(matrix: sp.spmatrix) -> sp.csr_matrix:
    matrix = matrix.tocsr()
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    return matrix


def similarity_from_cooccurrence(cooc: sp.csr_matrix, alpha: float, shrink: float, neighbours: int,
                                 count: np.ndarray | None = None, first_row: int = 0) -> sp.csr_matrix:
    """The top-``neighbours`` asymmetric cosine of :func:`asymmetric_cosine` from the
    co-occurrence counts ``C = X^T X`` (canonical CSR, users per item on the diagonal), entry by
    entry with the same floating-point operations, so equal to it bit for bit.

    ``cooc`` may be the rows ``first_row ..`` of ``C`` only, with ``count`` the users per item."""
    if not cooc.has_canonical_format:
        cooc = canonical(cooc)
    if count is None:
        count = cooc.diagonal()
    left, right = count ** alpha, count ** (1.0 - alpha)       # the same powers, once per item
    rows = np.repeat(np.arange(first_row, first_row + cooc.shape[0], dtype=np.int64), np.diff(cooc.indptr))
    cols = cooc.indices
    sim = np.take(left, rows)                            # in place: nnz-long temporaries are the cost
    sim *= np.take(right, cols)
    sim += shrink
    np.divide(cooc.data, sim, out=sim)
    sim[rows == cols] = 0.0                              # no item is its own neighbour (dropped)
    return top_per_csr_row(sp.csr_matrix((sim, cols, cooc.indptr), shape=cooc.shape), neighbours)


COOCCURRENCE_MAX_PRODUCTS = 200_000_000
"""Above this many user-level products (sum over users of their window degree squared, an upper
bound on the entries of ``C``), itemknn does not keep ``C`` (about 12 bytes an entry) and rebuilds
the similarity block by block at each update (:func:`asymmetric_cosine_sparse`). The bundled
MovieLens log has 61M products (16.4M entries); the Yelp-scale synthetic log 727M."""


def cooccurrence_products(users: np.ndarray, n_users: int) -> float:
    """Sum over users of their number of distinct pairs squared (``users``: one per distinct pair)."""
    degree = np.bincount(users, minlength=n_users).astype(np.float64)
    return float((degree ** 2).sum())


def asymmetric_cosine_sparse(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, alpha: float,
                             shrink: float, neighbours: int, block_products: int = 1 << 23) -> sp.csr_matrix:
    """:func:`asymmetric_cosine` with bounded memory and no dense block: rows of ``C = X^T X`` a
    block at a time (about ``block_products`` user-level products each), each turned into its
    top-``neighbours`` similarity rows by :func:`similarity_from_cooccurrence` (same numbers)."""
    x = binary_matrix(users, items, n_users, n_items)
    count = np.asarray(x.sum(axis=0)).ravel()
    xt = x.T.tocsr()
    products = xt @ np.diff(x.indptr).astype(np.float64)           # per item row of C
    bounds = np.searchsorted(np.cumsum(products), np.arange(1, int(products.sum() // block_products) + 2)
                             * float(block_products))
    edges = np.unique(np.concatenate([[0], np.minimum(bounds + 1, n_items), [n_items]]))
    xc = x.tocsc()
    # C is symmetric: rows lo..hi are the transpose of columns lo..hi, and scipy's transposing
    # conversion leaves the column indices sorted (a linear pass instead of sorting the product)
    parts = [similarity_from_cooccurrence((xt @ xc[:, lo:hi].tocsr()).T.tocsr(), alpha, shrink, neighbours,
                                          count, lo)
             for lo, hi in zip(edges[:-1], edges[1:])]
    return sp.vstack(parts, format="csr") if parts else sp.csr_matrix((n_items, n_items))


def asymmetric_cosine_reference(users: np.ndarray, items: np.ndarray, n_items: int, alpha: float,
                                shrink: float, neighbours: int) -> np.ndarray:
    """Slow twin of :func:`asymmetric_cosine`, dense, by the formula item pair by item pair."""
    holders = [set() for _ in range(n_items)]
    for user, item in zip(users, items):
        holders[int(item)].add(int(user))
    sim = np.zeros((n_items, n_items))
    for i in range(n_items):
        for j in range(n_items):
            both = len(holders[i] & holders[j])
            if i != j and both:
                sim[i, j] = both / (len(holders[i]) ** alpha * len(holders[j]) ** (1 - alpha) + shrink)
    for i in range(n_items):
        ranked = sorted((j for j in range(n_items) if sim[i, j] > 0), key=lambda j: (-sim[i, j], j))
        sim[i, [j for j in range(n_items) if j not in ranked[:neighbours]]] = 0.0
    return sim


def itemknn_scores_reference(similarity: np.ndarray, contexts: np.ndarray, candidates: np.ndarray,
                             recency: float) -> np.ndarray:
    """Slow twin of the itemknn scorer: one row, one history item, one candidate at a time."""
    out = np.zeros(candidates.shape)
    width = contexts.shape[1]
    for r in range(len(contexts)):
        for col in range(width):
            item = contexts[r, col]
            if item == PAD:
                continue
            weight = recency ** (width - 1 - col)
            for c in range(candidates.shape[1]):
                out[r, c] += weight * similarity[item, candidates[r, c]]
    return out


class ItemKNN(HistoryStrategy):
    """Item-item neighbours over a window of periods, scored from the user's history so far."""

    name = "itemknn"

    def __init__(self, settings: ItemKNNSettings, context: StrategyContext) -> None:
        super().__init__(settings, context)
        # the distinct (user, item) pairs received, each with the last block it occurred in
        self.pair_users = np.zeros(0, dtype=np.int64)
        self.pair_items = np.zeros(0, dtype=np.int64)
        self.pair_block = np.zeros(0, dtype=np.int64)
        self.similarity = sp.csr_matrix((context.n_items, context.n_items))
        # co-occurrence counts of the window's pairs, updated incrementally (rebuilt when None)
        self.cooc: sp.csr_matrix | None = None

    def _fit(self, period: Period) -> None:
        """Update the window's co-occurrence counts with the pairs that enter and leave it (exact
        integer arithmetic), then recompute the similarity from them; :meth:`_fit_full` is the
        rebuild from all pairs that a test compares this with."""
        s = self.settings
        last = self.blocks - 1                          # this period's block
        n_items = np.int64(self.n_items)
        old_keys = self.pair_users * n_items + self.pair_items          # increasing
        keys = np.unique(np.asarray(period.users, np.int64) * n_items + np.asarray(period.items, np.int64))
        at = np.searchsorted(old_keys, keys)
        found = at < len(old_keys)
        found[found] = old_keys[at[found]] == keys[found]
        # before this period the window held the blocks last - window .. last - 1
        was_inside = (self.pair_block >= last - s.window) if s.window else np.ones(len(old_keys), dtype=bool)
        refreshed = np.zeros(len(old_keys), dtype=bool)
        refreshed[at[found]] = True
        leaving = was_inside & ~refreshed & (self.pair_block == last - s.window) if s.window \
            else np.zeros(len(old_keys), dtype=bool)
        entering = np.concatenate([keys[~found], old_keys[at[found][~was_inside[at[found]]]]])
        staying = was_inside & ~leaving
        if self.cooc is not None and cooccurrence_products(
                np.concatenate([self.pair_users[staying], entering // n_items]), self.n_users) \
                > COOCCURRENCE_MAX_PRODUCTS:
            self.cooc = None            # the window grew too large to keep C: rebuilt block by block below
        if self.cooc is not None:
            self._update_cooccurrence(entering // n_items, entering % n_items, self.pair_users[leaving],
                                      self.pair_items[leaving], staying)
        self.pair_block[at[found]] = last
        insert = at[~found]
        self.pair_users = np.insert(self.pair_users, insert, keys[~found] // n_items)
        self.pair_items = np.insert(self.pair_items, insert, keys[~found] % n_items)
        self.pair_block = np.insert(self.pair_block, insert, last)
        if self.cooc is None:                           # first block, after a load, or too large
            inside = self.inside()
            users, items = self.pair_users[inside], self.pair_items[inside]
            if cooccurrence_products(users, self.n_users) > COOCCURRENCE_MAX_PRODUCTS:
                self.similarity = asymmetric_cosine_sparse(users, items, self.n_users, self.n_items, s.alpha,
                                                           s.shrink, s.neighbours)
                return
            self.cooc = cooccurrence(users, items, self.n_users, self.n_items)
        self.similarity = similarity_from_cooccurrence(self.cooc, s.alpha, s.shrink, s.neighbours)

    def inside(self) -> np.ndarray:
        """Mask of the stored pairs inside the training window."""
        window = self.settings.window
        return self.pair_block >= self.blocks - window if window else np.ones(len(self.pair_block), dtype=bool)

    def _update_cooccurrence(self, in_users: np.ndarray, in_items: np.ndarray, out_users: np.ndarray,
                             out_items: np.ndarray, staying: np.ndarray) -> None:
        """``C += Xi^T Xk + Xk^T Xi + Xi^T Xi - (Xo^T Xk + Xk^T Xo + Xo^T Xo)`` with ``Xi`` the
        entering pairs, ``Xo`` the leaving ones and ``Xk`` the stored pairs that stay (only the
        rows of users with an entering or leaving pair take part)."""
        touched = np.union1d(in_users, out_users)
        near = staying & np.isin(self.pair_users, touched)
        xk = binary_matrix(self.pair_users[near], self.pair_items[near], self.n_users, self.n_items)
        delta = sp.csr_matrix(self.cooc.shape)
        for users, items, sign in ((in_users, in_items, 1.0), (out_users, out_items, -1.0)):
            if len(users):
                x = binary_matrix(users, items, self.n_users, self.n_items)
                xt = x.T.tocsr()
                cross = xt @ xk
                delta = delta + sign * (cross + cross.T.tocsr() + xt @ x)
        delta.sum_duplicates()          # canonical operands: scipy's sorted merge, a canonical sum
        self.cooc = self.cooc + delta
        if len(out_users):                              # counts that fell to zero
            self.cooc.eliminate_zeros()

    def _fit_full(self) -> sp.csr_matrix:
        """Slow twin of the update: the similarity rebuilt from all pairs inside the window."""
        s = self.settings
        inside = self.inside()
        return asymmetric_cosine(self.pair_users[inside], self.pair_items[inside], self.n_users, self.n_items,
                                 s.alpha, s.shrink, s.neighbours)

    def history_scores(self, users: np.ndarray, contexts: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        profile = history_matrix(contexts, recency_weights(contexts, self.settings.recency), self.n_items,
                                 binary=False)
        return gather(profile @ self.similarity, candidates)

    def _grow(self, n_users: int, n_items: int) -> None:
        super()._grow(n_users, n_items)
        similarity = self.similarity.tocsr().copy()
        similarity.resize((n_items, n_items))
        self.similarity = similarity
        if self.cooc is not None:
            cooc = self.cooc.copy()
            cooc.resize((n_items, n_items))
            self.cooc = cooc

    def _state(self) -> dict[str, Any]:
        sim = self.similarity.tocsr()
        return {**super()._state(), "pair_users": self.pair_users.copy(), "pair_items": self.pair_items.copy(),
                "pair_block": self.pair_block.copy(), "sim_data": sim.data.copy(),
                "sim_indices": sim.indices.astype(np.int64), "sim_indptr": sim.indptr.astype(np.int64)}

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        self.pair_users = np.asarray(state["pair_users"], dtype=np.int64).copy()
        self.pair_items = np.asarray(state["pair_items"], dtype=np.int64).copy()
        self.pair_block = np.asarray(state["pair_block"], dtype=np.int64).copy()
        self.similarity = sp.csr_matrix((np.asarray(state["sim_data"], dtype=np.float64),
                                         np.asarray(state["sim_indices"]), np.asarray(state["sim_indptr"])),
                                        shape=(self.n_items, self.n_items))
        self.cooc = None            # rebuilt from the pairs at the next update (same counts)


# -- sknn ------------------------------------------------------------------------------------
def sknn_scores(query: sp.csr_matrix, sessions: sp.csr_matrix, session_users: np.ndarray,
                users: np.ndarray, neighbours: int, candidates: np.ndarray) -> np.ndarray:
    """V-SKNN scores of a block of rows.

    ``query[n, items]``: the rows' recency-weighted binary histories; ``sessions[m, items]``:
    binary sessions of users ``session_users``; a row never takes its own user's session.
    """
    q_norm = np.sqrt(np.asarray(query.multiply(query).sum(axis=1)).ravel())
    s_norm = np.sqrt(np.asarray(sessions.sum(axis=1)).ravel())
    dots = (query @ sessions.T).toarray()
    with np.errstate(divide="ignore", invalid="ignore"):
        sim = np.where(dots > 0, dots / (q_norm[:, None] * s_norm[None, :]), 0.0)
    sim[users[:, None] == session_users[None, :]] = 0.0
    if neighbours < sim.shape[1]:
        # keep the k largest per row (ties: the lower session index), as top_per_row does
        order = np.lexsort((np.broadcast_to(np.arange(sim.shape[1]), sim.shape), -sim), axis=1)
        sim[np.arange(len(sim))[:, None], order[:, neighbours:]] = 0.0
    return gather(sp.csr_matrix(sim) @ sessions, candidates)


def sknn_scores_reference(histories: list[list[int]], weights: list[list[float]], sessions: list[set[int]],
                          session_users: list[int], users: list[int], neighbours: int,
                          candidates: np.ndarray) -> np.ndarray:
    """Slow twin of :func:`sknn_scores`: plain Python dicts and sets, row by row."""
    out = np.zeros(candidates.shape)
    for r, user in enumerate(users):
        vector: dict[int, float] = {}
        for item, weight in zip(histories[r], weights[r]):
            vector[item] = max(vector.get(item, 0.0), weight)
        norm = sum(w * w for w in vector.values()) ** 0.5
        sims = []
        for s, (session, owner) in enumerate(zip(sessions, session_users)):
            dot = sum(w for item, w in vector.items() if item in session)
            if owner != user and dot > 0:
                sims.append((dot / (norm * len(session) ** 0.5), s))
        sims.sort(key=lambda pair: (-pair[0], pair[1]))
        for c in range(candidates.shape[1]):
            out[r, c] = sum(value for value, s in sims[:neighbours] if candidates[r, c] in sessions[s])
    return out


class SKNN(HistoryStrategy):
    """V-SKNN: the row's history against the most recent users' stored sessions."""

    name = "sknn"

    def __init__(self, settings: SKNNSettings, context: StrategyContext) -> None:
        super().__init__(settings, context)
        self._sessions: tuple[sp.csr_matrix, np.ndarray] | None = None

    def _fit(self, period: Period) -> None:
        self._sessions = None

    def sessions(self) -> tuple[sp.csr_matrix, np.ndarray]:
        """Binary session matrix of the ``sample`` most recently active users, and those users."""
        if self._sessions is None:
            active = np.flatnonzero(self.last_active >= 0)
            recent = active[np.argsort(-self.last_active[active], kind="stable")[: self.settings.sample]]
            recent = np.sort(recent)
            windows = self.windows[recent]
            matrix = history_matrix(windows, (windows != PAD).astype(np.float64), self.n_items, binary=True)
            self._sessions = (matrix, recent)
        return self._sessions

    def history_scores(self, users: np.ndarray, contexts: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        sessions, owners = self.sessions()
        query = history_matrix(contexts, recency_weights(contexts, self.settings.recency), self.n_items,
                               binary=True)
        return sknn_scores(query, sessions, owners, users, self.settings.neighbours, candidates)

    def _grow(self, n_users: int, n_items: int) -> None:
        super()._grow(n_users, n_items)
        self._sessions = None

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        self._sessions = None
