"""Linear item models and implicit ALS under the replay: EASE and iALS (sml-method.md section 6).

Both refit each period on a training window of the strategy's data (``window`` = the most recent
periods; 0 = every period so far; the pretrain periods count as one period) and score a row from
its user's history *so far* (sml-method.md, "History available at scoring time"): rows of earlier
periods and the user's earlier rows of the scored period, never the row itself or a later one.
Neither trains on the period it scores.

* ``ease`` (Steck, WWW 2019): ``X`` is the binary user x item matrix of the window, restricted to
  the items that occur in it; ``P = (X^T X + l2 I)^-1`` and ``B = I - P / diag(P)`` (column-wise),
  so ``diag(B) = 0``. Items outside the window have all-zero weights. A row's score for candidate
  ``c`` is ``sum_h B[h, c]`` over its user's last ``history`` items before the row (a repeated item
  counts each time), built by :func:`~smlrec.strategies.sequential.sequence_contexts`.
  The dense ``n x n`` solve is refused above ``max_items`` items (a ConfigError naming the count
  and the memory).
* ``ials`` (Hu, Koren and Volinsky 2008) through ``implicit``'s CPU ``AlternatingLeastSquares``:
  binary window matrix, confidence ``alpha`` for an observed pair (implicit's convention: the loss
  weight of an observed pair is ``alpha``, of an unobserved one 1). Warm start: the user and item
  factors are kept between periods and ``fit`` continues from them (implicit only initialises
  factors it does not hold), ``iterations`` conjugate-gradient ALS sweeps per period. Rows of ids
  never in a window start at zero and stay zero. A row whose user has earlier rows in the scored
  period is *folded in*: the user vector is the exact least-squares solution with the item
  factors fixed, over the user's window items plus the items of their earlier rows of the period,
  ``(Y^T Y + reg I + (alpha - 1) sum_h y_h y_h^T) x = alpha sum_h y_h``, the system implicit's
  ``recalculate_user`` solves; batched for a whole period with segmented prefix sums and one
  batched solve (:func:`fold_in`; slow twin :func:`fold_in_reference`). A row at the user's first
  row of the period is served the trained user vector.

Cold users (no history item the model knows: no window row and no earlier row of the period on an
item the model learned) are scored by the popularity floor, pop-recent's decayed counts
(``cold_decay`` per period, strategies/popularity.py); ``score_new_users`` serves the same rule.
An item the model has not learned scores 0.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ..config import require
from ..data.periods import Period
from ..errors import ConfigError
from .base import Strategy, StrategyContext
from .popularity import decayed_counts
from .sequential import PAD, sequence_contexts

EASE_DTYPES = {"float32": torch.float32, "float64": torch.float64}
EASE_DENSE_MATRICES = 3     # X^T X + l2 I, its inverse and B live at once during the fit


@dataclass(frozen=True)
class EASESettings:
    """Settings of ``ease``."""

    l2: float = 500.0          # the ridge regulariser lambda on the item-item weights
    window: int = 0            # training window in periods (0: every period so far)
    history: int = 20          # the user's last N items before the row that score it
    max_items: int = 30_000    # refuse the dense solve above this many items in the window
    dtype: str = "float32"     # of the Cholesky inverse: float32 | float64
    cold_decay: float = 0.5    # popularity floor for users with no known history (pop-recent's)
    score_cells: int = 1 << 22  # (row, history item) pairs x candidates gathered at once

    def __post_init__(self) -> None:
        require(self.l2 > 0, "l2", "> 0", self.l2)
        require(self.window >= 0, "window", ">= 0 (0: all periods)", self.window)
        require(self.history >= 1, "history", ">= 1", self.history)
        require(self.max_items >= 1, "max_items", ">= 1", self.max_items)
        require(self.dtype in EASE_DTYPES, "dtype", f"one of {', '.join(EASE_DTYPES)}", self.dtype)
        require(0.0 < self.cold_decay <= 1.0, "cold_decay", "in (0, 1]", self.cold_decay)
        require(self.score_cells >= 1, "score_cells", ">= 1", self.score_cells)


@dataclass(frozen=True)
class IALSSettings:
    """Settings of ``ials``."""

    factors: int = 64
    regularization: float = 10.0
    alpha: float = 2.0           # confidence of an observed (user, item) pair (unobserved: 1)
    iterations: int = 10         # ALS sweeps at the start and at each period's warm-started refit
    window: int = 0              # training window in periods (0: every period so far)
    cold_decay: float = 0.5      # popularity floor for users with no known history (pop-recent's)
    fold_chunk: int = 2048       # period rows folded in at once (bounds [rows, factors, factors])

    def __post_init__(self) -> None:
        require(self.factors >= 1, "factors", ">= 1", self.factors)
        require(self.regularization > 0, "regularization", "> 0", self.regularization)
        require(self.alpha > 0, "alpha", "> 0", self.alpha)
        require(self.iterations >= 1, "iterations", ">= 1", self.iterations)
        require(self.window >= 0, "window", ">= 0 (0: all periods)", self.window)
        require(0.0 < self.cold_decay <= 1.0, "cold_decay", "in (0, 1]", self.cold_decay)
        require(self.fold_chunk >= 1, "fold_chunk", ">= 1", self.fold_chunk)


# -- shared pieces ----------------------------------------------------------------------------
def binary_matrix(users: np.ndarray, items: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """The binary ``users x items`` CSR matrix of the rows (duplicates count once)."""
    matrix = sp.csr_matrix((np.ones(len(users), dtype=np.float32),
                            (np.asarray(users, np.int64), np.asarray(items, np.int64))), shape=shape)
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def ease_memory_bytes(n_items: int, dtype: str) -> int:
    """Bytes of the dense matrices the EASE fit holds at once for ``n_items`` items."""
    return EASE_DENSE_MATRICES * n_items * n_items * (8 if dtype == "float64" else 4)


def ease_weights(users: np.ndarray, items: np.ndarray, l2: float, dtype: str = "float64",
                 max_items: int | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """EASE weights over the items of the rows: ``(active items, B[len(active), len(active)])``.

    ``B = I - P / diag(P)`` with ``P = (X^T X + l2 I)^-1``, ``X`` the binary user x item matrix;
    ``B[i, j]`` is the weight of history item ``active[i]`` for candidate ``active[j]``.
    """
    active, columns = np.unique(np.asarray(items, np.int64), return_inverse=True)
    n = len(active)
    if max_items is not None and n > max_items:
        gib = ease_memory_bytes(n, dtype) / 2**30
        raise ConfigError(
            f"ease: the training window holds {n:,} items, above max_items = {max_items:,}; its dense "
            f"{n:,} x {n:,} matrices would need about {gib:.1f} GiB ({EASE_DENSE_MATRICES} of them in "
            f"{dtype}). Raise strategy.ease.max_items if the memory is there, shorten window, or use "
            "a sparse item model (itemknn)")
    _, user_rows = np.unique(np.asarray(users, np.int64), return_inverse=True)
    x = binary_matrix(user_rows, columns, (int(user_rows.max(initial=-1)) + 1, n))
    gram = torch.from_numpy((x.T @ x).toarray().astype(np.float64)).to(EASE_DTYPES[dtype])
    gram.diagonal().add_(l2)
    precision = torch.cholesky_inverse(torch.linalg.cholesky(gram))
    del gram
    weights = precision.div_(-precision.diagonal()[None, :])   # -P_ij / P_jj
    weights.fill_diagonal_(0.0)
    return active, weights


def ease_weights_reference(users: np.ndarray, items: np.ndarray, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """The textbook dense float64 solve of :func:`ease_weights` (the tests' twin)."""
    active = np.unique(items)
    user_ids = np.unique(users)
    x = np.zeros((len(user_ids), len(active)))
    x[np.searchsorted(user_ids, users), np.searchsorted(active, items)] = 1.0
    p = np.linalg.inv(x.T @ x + l2 * np.eye(len(active)))
    b = np.eye(len(active)) - p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return active, b


class _WindowedStrategy(Strategy):
    """Bookkeeping EASE and iALS share: the rows of the training window (tagged with the period
    block they came from; the pretrain periods are block 0), and the popularity floor."""

    calibrated_scores = False     # sums of weights / inner products, not logits

    def __init__(self, settings: Any, context: StrategyContext) -> None:
        super().__init__(settings, context)
        self.rows_users = np.zeros(0, dtype=np.int64)
        self.rows_items = np.zeros(0, dtype=np.int64)
        self.rows_block = np.zeros(0, dtype=np.int64)
        self.block = -1
        self.counts = np.zeros(context.n_items, dtype=np.float64)
        self._scored: tuple[tuple, Any] | None = None   # per-period scoring inputs, cached

    def _add_rows(self, period: Period) -> None:
        self.block += 1
        self.rows_users = np.concatenate([self.rows_users, np.asarray(period.users, np.int64)])
        self.rows_items = np.concatenate([self.rows_items, np.asarray(period.items, np.int64)])
        self.rows_block = np.concatenate([self.rows_block, np.full(len(period), self.block, np.int64)])
        if self.settings.window > 0:     # rows older than the window are never read again
            keep = self.rows_block > self.block - self.settings.window
            self.rows_users, self.rows_items, self.rows_block = (
                self.rows_users[keep], self.rows_items[keep], self.rows_block[keep])
        decay = 1.0 if self.block == 0 else self.settings.cold_decay
        self.counts = decayed_counts(self.counts, period.items, decay)
        self._scored = None

    def _grow_rows(self, n_items: int) -> None:
        self.counts = np.concatenate([self.counts, np.zeros(n_items - len(self.counts))])
        self._scored = None

    def score_new_users(self, candidates: torch.Tensor) -> torch.Tensor:
        """The popularity floor: pop-recent's decayed counts of the rows learned from."""
        counts = torch.from_numpy(self.counts.astype(np.float32))
        return counts[candidates.cpu()].to(self.device)

    def _period_key(self, period: Period) -> tuple:
        # the period object itself is part of the key (Period compares by identity): production
        # builds a new query period per request, with the same index, start and maybe length
        return (period, period.index, period.start, len(period), self.periods_seen, self.n_users, self.n_items)

    def _rows_state(self) -> dict[str, Any]:
        return {"rows_users": self.rows_users.copy(), "rows_items": self.rows_items.copy(),
                "rows_block": self.rows_block.copy(), "block": self.block, "counts": self.counts.copy()}

    def _load_rows(self, state: dict[str, Any]) -> None:
        counts = np.asarray(state["counts"], dtype=np.float64)
        if counts.shape != (self.n_items,):
            raise ValueError(f"counts of shape {counts.shape}, expected ({self.n_items},)")
        self.rows_users = np.asarray(state["rows_users"], dtype=np.int64).copy()
        self.rows_items = np.asarray(state["rows_items"], dtype=np.int64).copy()
        self.rows_block = np.asarray(state["rows_block"], dtype=np.int64).copy()
        self.block = int(state["block"])
        self.counts = counts.copy()
        self._scored = None


# -- EASE --------------------------------------------------------------------------------------
def ease_row_scores(weights: torch.Tensor, item_index: np.ndarray, contexts: np.ndarray,
                    candidates: torch.Tensor, cells: int = 1 << 22) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores ``[n, C]`` = sum over each row's context items of ``weights[item, candidate]``, and
    a mask of rows whose context holds no item the weights know (they get the cold rule).

    ``item_index`` maps an item id to its row of ``weights`` (-1: not in the weights)."""
    known = np.where(contexts == PAD, -1, item_index[np.maximum(contexts, 0)])
    no_history = torch.from_numpy(~(known >= 0).any(axis=1))
    cand = torch.from_numpy(item_index)[candidates.cpu()]
    cand_ok = cand >= 0
    cand = cand.clamp_min(0)
    # only the (row, history item) pairs that hold a known item are gathered: histories are
    # mostly shorter than ``history`` and padded
    entry_row, entry_col = np.nonzero(known >= 0)
    entry_row_t = torch.from_numpy(entry_row)
    entry_item = torch.from_numpy(known[entry_row, entry_col])
    out = torch.zeros(candidates.shape, dtype=weights.dtype)
    step = max(1, cells // max(1, candidates.shape[1]))
    for lo in range(0, len(entry_row), step):
        rows = entry_row_t[lo: lo + step]
        gathered = weights[entry_item[lo: lo + step, None], cand[rows]] * cand_ok[rows]
        out.index_add_(0, rows, gathered)
    out = out.float()
    return out, no_history


def ease_row_scores_reference(weights: np.ndarray, active: np.ndarray, contexts: np.ndarray,
                              candidates: np.ndarray) -> np.ndarray:
    """The slow twin of :func:`ease_row_scores`: one row, one history item at a time (NaN marks a
    row with no known history)."""
    where = {int(item): k for k, item in enumerate(active)}
    out = np.zeros(candidates.shape)
    for row in range(len(contexts)):
        history = [where[int(h)] for h in contexts[row] if h != PAD and int(h) in where]
        if not history:
            out[row] = np.nan
            continue
        for col, cand in enumerate(candidates[row]):
            if int(cand) in where:
                out[row, col] = sum(weights[h, where[int(cand)]] for h in history)
    return out


class EASE(_WindowedStrategy):
    """Closed-form item-item weights (Steck 2019), refit each period on the training window."""

    name = "ease"

    def __init__(self, settings: EASESettings, context: StrategyContext) -> None:
        super().__init__(settings, context)
        self.windows = np.full((context.n_users, settings.history), PAD, dtype=np.int64)
        self.item_index = np.full(context.n_items, -1, dtype=np.int64)
        self.weights: torch.Tensor | None = None

    def _start(self, pretrain: Period, initial_state: dict[str, torch.Tensor]) -> None:
        self._learn(pretrain)

    def _update(self, period: Period) -> None:
        self._learn(period)

    def _learn(self, period: Period) -> None:
        self._add_rows(period)
        _, touched, new_windows = sequence_contexts(self.windows, period.users, period.items)
        self.windows[touched] = new_windows
        self._fit()

    def _fit(self) -> None:
        s = self.settings
        active, self.weights = ease_weights(self.rows_users, self.rows_items, s.l2, s.dtype, s.max_items)
        self.item_index = np.full(self.n_items, -1, dtype=np.int64)
        self.item_index[active] = np.arange(len(active))
        self._scored = None

    def _grow(self, n_users: int, n_items: int) -> None:
        self._grow_rows(n_items)
        self.windows = np.concatenate(
            [self.windows, np.full((n_users - len(self.windows), self.settings.history), PAD, np.int64)])
        self.item_index = np.concatenate([self.item_index, np.full(n_items - len(self.item_index), -1)])

    def period_contexts(self, period: Period) -> np.ndarray:
        """Each row's last ``history`` items strictly before it (cached until the next update)."""
        key = self._period_key(period)
        if self._scored is None or self._scored[0] != key:
            contexts, _, _ = sequence_contexts(self.windows, period.users, period.items)
            self._scored = (key, contexts)
        return self._scored[1]

    def score(self, period: Period, rows: slice, candidates: torch.Tensor) -> torch.Tensor:
        if self.weights is None:       # restored from a state: refit from the stored window
            self._fit()
        contexts = self.period_contexts(period)[rows]
        candidates = candidates.cpu()
        with torch.no_grad():
            scores, no_history = ease_row_scores(self.weights, self.item_index, contexts, candidates,
                                                 self.settings.score_cells)
            if no_history.any():
                scores[no_history] = self.score_new_users(candidates[no_history]).cpu()
        return scores.to(self.device)

    def _state(self) -> dict[str, Any]:
        # B is not stored (n x n): load_state refits it from the window's rows on first use.
        return {**self._rows_state(), "windows": self.windows.copy()}

    def _load_state(self, state: dict[str, Any]) -> None:
        windows = np.asarray(state["windows"], dtype=np.int64)
        if windows.shape != self.windows.shape:
            raise ValueError(f"windows of shape {windows.shape}, expected {self.windows.shape}")
        self._load_rows(state)
        self.windows = windows.copy()
        self.weights = None


# -- iALS ---------------------------------------------------------------------------------------
@dataclass
class FoldInput:
    """What a period's fold-in needs: the window matrix and the model's fixed item factors."""

    window: sp.csr_matrix        # binary users x items of the training window
    item_factors: np.ndarray     # [n_items, f]
    regularization: float
    alpha: float


def fold_in(data: FoldInput, users: np.ndarray, items: np.ndarray,
            chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """User vectors folded in for every row of a scored period that has an earlier row of its user.

    Row r's history = the user's window items + the items of the user's rows before r; its vector
    solves ``(Y^T Y + reg I + (alpha - 1) sum_h y_h y_h^T) x = alpha sum_h y_h`` over the distinct
    history items (implicit's ``recalculate_user``). Rows are grouped by user; a user's later rows
    add one item each, so the systems are the user's window system plus an exclusive prefix sum of
    outer products, solved in one batched call per chunk of users.

    Returns ``(rows, vectors[len(rows), f])`` for the rows with an earlier row of their user and at
    least one history item with a learned factor (the others are served elsewhere).
    """
    users = np.asarray(users, np.int64)
    items = np.asarray(items, np.int64)
    y = torch.from_numpy(np.asarray(data.item_factors, np.float64))
    f = y.shape[1]
    base = y.T @ y + data.regularization * torch.eye(f, dtype=torch.float64)
    w_outer, w_linear = data.alpha - 1.0, data.alpha
    known_item = np.zeros(len(y), dtype=bool)
    known_item[np.unique(data.window.indices)] = True

    order = np.argsort(users, kind="stable")
    s_users, s_items = users[order], items[order]
    touched, start, size = np.unique(s_users, return_index=True, return_counts=True)
    group = np.repeat(np.arange(len(touched)), size)
    position = np.arange(len(users)) - start[group]
    # a row adds its item to the later rows' history only if the item is new to the user so far
    in_window = np.asarray(data.window[s_users, s_items]).ravel() > 0 if len(users) else np.zeros(0, bool)
    pair = s_users * len(y) + s_items
    first = np.zeros(len(users), dtype=bool)
    first[np.unique(pair, return_index=True)[1]] = True
    adds = first & ~in_window & known_item[s_items]
    profile_known = np.diff(data.window.indptr)[touched] > 0      # window items all have factors
    known_before = np.cumsum(adds) - adds - (np.cumsum(adds) - adds)[start][group]
    wanted = (position > 0) & (profile_known[group] | (known_before > 0))

    out_rows, out_vectors = [], []
    folded_groups = np.unique(group[wanted])
    lo = 0
    while lo < len(folded_groups):        # chunks of whole users, about ``chunk`` rows each
        hi = lo + 1
        total = size[folded_groups[lo]]
        while hi < len(folded_groups) and total + size[folded_groups[hi]] <= chunk:
            total += size[folded_groups[hi]]
            hi += 1
        groups = folded_groups[lo:hi]
        lo = hi
        g_rows = np.concatenate([np.arange(start[g], start[g] + size[g]) for g in groups])
        local = np.repeat(np.arange(len(groups)), size[groups])
        # the users' window systems
        profile = data.window[touched[groups]].tocoo()
        owner = torch.from_numpy(profile.row.astype(np.int64))
        yp = y[torch.from_numpy(profile.col.astype(np.int64))]
        a_user = base.repeat(len(groups), 1, 1)
        for e in range(0, len(yp), chunk):     # bounds the [entries, f, f] outer products
            part = yp[e: e + chunk]
            a_user.index_add_(0, owner[e: e + chunk], w_outer * part[:, :, None] * part[:, None, :])
        b_user = torch.zeros(len(groups), f, dtype=torch.float64)
        b_user.index_add_(0, owner, w_linear * yp)
        # exclusive prefix sums of the in-period additions, restarted at each user
        add = torch.from_numpy(adds[g_rows].astype(np.float64))
        yr = y[torch.from_numpy(s_items[g_rows])] * add[:, None]
        outer = torch.cumsum(w_outer * yr[:, :, None] * yr[:, None, :], dim=0)
        linear = torch.cumsum(w_linear * yr, dim=0)
        outer = torch.cat([torch.zeros(1, f, f, dtype=torch.float64), outer])
        linear = torch.cat([torch.zeros(1, f, dtype=torch.float64), linear])
        first_row = np.concatenate([[0], np.cumsum(size[groups])[:-1]])[local]   # chunk-local start
        here = np.arange(len(g_rows))
        take = wanted[g_rows]
        idx_prev, idx_start = torch.from_numpy(here[take]), torch.from_numpy(first_row[take])
        local_t = torch.from_numpy(local[take])
        a = a_user[local_t] + outer[idx_prev] - outer[idx_start]
        b = b_user[local_t] + linear[idx_prev] - linear[idx_start]
        out_vectors.append(torch.linalg.solve(a, b).numpy())
        out_rows.append(order[g_rows[take]])
    if not out_rows:
        return np.zeros(0, np.int64), np.zeros((0, f))
    return np.concatenate(out_rows), np.concatenate(out_vectors)


def fold_in_reference(data: FoldInput, users: np.ndarray, items: np.ndarray) -> dict[int, np.ndarray]:
    """The slow twin of :func:`fold_in`: one row at a time, its history set built explicitly."""
    y = np.asarray(data.item_factors, np.float64)
    f = y.shape[1]
    known = set(np.unique(data.window.indices).tolist())
    out = {}
    for r in range(len(users)):
        earlier = [int(items[q]) for q in range(r) if users[q] == users[r]]
        if not earlier:
            continue
        window_items = set(data.window[int(users[r])].indices.tolist())
        history = sorted((window_items | set(earlier)) & known)
        if not history:
            continue
        a = y.T @ y + data.regularization * np.eye(f)
        b = np.zeros(f)
        for h in history:
            a += (data.alpha - 1.0) * np.outer(y[h], y[h])
            b += data.alpha * y[h]
        out[r] = np.linalg.solve(a, b)
    return out


class IALS(_WindowedStrategy):
    """Implicit ALS (implicit's CPU model), warm-started each period, fold-in within a period."""

    name = "ials"

    def __init__(self, settings: IALSSettings, context: StrategyContext) -> None:
        super().__init__(settings, context)
        f = settings.factors
        self.user_factors = np.zeros((context.n_users, f), dtype=np.float32)
        self.item_factors = np.zeros((context.n_items, f), dtype=np.float32)
        self._window: sp.csr_matrix | None = None

    def _model(self):
        from implicit.cpu.als import AlternatingLeastSquares

        s = self.settings
        with warnings.catch_warnings():     # implicit warns when BLAS may use several threads
            warnings.simplefilter("ignore", RuntimeWarning)
            model = AlternatingLeastSquares(
                factors=s.factors, regularization=s.regularization, alpha=s.alpha, dtype=np.float32,
                iterations=s.iterations, num_threads=torch.get_num_threads(),
                random_state=int(self.rng.integers(2**31)))
        model.user_factors, model.item_factors = self.user_factors, self.item_factors
        return model

    def _start(self, pretrain: Period, initial_state: dict[str, torch.Tensor]) -> None:
        # Our own initialisation, not implicit's: rows of ids in the pretrain data are uniform
        # [0, 0.01) (implicit's scale), drawn for ids 0..max so a table of any size gets the same
        # rows; every other row starts at zero and, having no data, stays there under CG.
        f = self.settings.factors
        for table, ids in ((self.user_factors, pretrain.users), (self.item_factors, pretrain.items)):
            ids = np.unique(np.asarray(ids, np.int64))
            if len(ids):
                drawn = self.rng.random((int(ids[-1]) + 1, f), dtype=np.float32) * np.float32(0.01)
                table[ids] = drawn[ids]
        self._learn(pretrain)

    def _update(self, period: Period) -> None:
        self._learn(period)

    def _learn(self, period: Period) -> None:
        self._add_rows(period)
        model = self._model()
        model.fit(self.window_matrix(), show_progress=False)
        self.user_factors, self.item_factors = model.user_factors, model.item_factors

    def window_matrix(self) -> sp.csr_matrix:
        if self._window is None:
            self._window = binary_matrix(self.rows_users, self.rows_items, (self.n_users, self.n_items))
        return self._window

    def _add_rows(self, period: Period) -> None:
        super()._add_rows(period)
        self._window = None

    def _grow(self, n_users: int, n_items: int) -> None:
        self._grow_rows(n_items)
        f = self.settings.factors
        self.user_factors = np.concatenate(
            [self.user_factors, np.zeros((n_users - len(self.user_factors), f), np.float32)])
        self.item_factors = np.concatenate(
            [self.item_factors, np.zeros((n_items - len(self.item_factors), f), np.float32)])
        self._window = None

    def period_vectors(self, period: Period) -> tuple[np.ndarray, np.ndarray]:
        """Every row's user vector and a cold mask (cached until the next update)."""
        key = self._period_key(period)
        if self._scored is None or self._scored[0] != key:
            window = self.window_matrix()
            users = np.asarray(period.users, np.int64)
            vectors = self.user_factors[users].astype(np.float64)
            cold = np.diff(window.indptr)[users] == 0
            data = FoldInput(window, self.item_factors, self.settings.regularization, self.settings.alpha)
            rows, folded = fold_in(data, users, period.items, self.settings.fold_chunk)
            vectors[rows] = folded
            cold[rows] = False
            self._scored = (key, (vectors.astype(np.float32), cold))
        return self._scored[1]

    def score(self, period: Period, rows: slice, candidates: torch.Tensor) -> torch.Tensor:
        vectors, cold = self.period_vectors(period)
        candidates = candidates.cpu()
        user = torch.from_numpy(vectors[rows])
        item = torch.from_numpy(self.item_factors)[candidates]
        with torch.no_grad():
            scores = torch.einsum("bf,bcf->bc", user, item)
            cold_t = torch.from_numpy(cold[rows])
            if cold_t.any():
                scores[cold_t] = self.score_new_users(candidates[cold_t]).cpu()
        return scores.to(self.device)

    def _state(self) -> dict[str, Any]:
        return {**self._rows_state(), "user_factors": self.user_factors.copy(),
                "item_factors": self.item_factors.copy()}

    def _load_state(self, state: dict[str, Any]) -> None:
        users = np.asarray(state["user_factors"], dtype=np.float32)
        items = np.asarray(state["item_factors"], dtype=np.float32)
        if users.shape != self.user_factors.shape or items.shape != self.item_factors.shape:
            raise ValueError(f"factors of shapes {users.shape} and {items.shape}, expected "
                             f"{self.user_factors.shape} and {self.item_factors.shape}")
        self._load_rows(state)
        self.user_factors, self.item_factors = users.copy(), items.copy()
        self._window = None
