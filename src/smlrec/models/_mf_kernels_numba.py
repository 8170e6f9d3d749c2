"""Compiled (numba) kernels for the two MF hot paths: lazy-Adam training and candidate scoring.

Each kernel has a slow twin in torch that the tests compare it with:

* ``train_rows`` runs every batch of an epoch in one call, with exactly the per-batch semantics of
  ``FusedMFTrainer.step`` (models/fused_mf.py): gradients of a batch from the parameters before
  that batch, summed per distinct row (positives before negatives, in batch order, as torch's
  ``index_add_`` does), then one Adam step on each distinct row with the bias correction of the
  global step count. It is single-threaded: batches are sequential by definition, and one thread
  already exceeds 1M triples/s, so results never depend on the thread count. Floats differ from
  the torch path only by rounding (float32 sums in another order), within 1e-5 in the tests.
* ``candidate_scores`` scores ``[B, C]`` candidate ids without materialising the ``B·C·d`` gathered
  rows: each score is a float64 sum of float32 products (exact in float64), rounded once to
  float32. So a score does not depend on blocking, on the thread count or on which other
  candidates share the row, identical item rows always tie exactly, and the torch twin
  (``(rows.double() @ p.double()).float()``) gives the same float32 scores.

Importing this module never fails: ``AVAILABLE`` is False when numba is not installed, and
callers fall back to their torch paths.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

try:  # numba is a dependency; the torch fallbacks keep smlrec usable where it cannot be installed
    import numba

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only on machines without numba
    numba = None
    AVAILABLE = False


def _jit(**options):
    """``numba.njit`` with on-disk caching (compiling costs seconds; the cache makes it once)."""
    def wrap(function):
        if not AVAILABLE:
            return function
        # error_model="numpy": IEEE results for x/0 (as torch) and no per-division check, which
        # would otherwise stop LLVM from compiling the element loops to SIMD.
        return numba.njit(cache=True, nogil=True, error_model="numpy", **options)(function)
    return wrap


@_jit()
def _softplus(x: float) -> float:
    # torch.nn.functional.softplus with beta=1, threshold=20
    return x if x > 20.0 else math.log1p(math.exp(x))


@_jit()
def _sigmoid(x: float) -> float:
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


@_jit(fastmath={"reassoc"})
def _dot32(a, b) -> np.float32:
    # "reassoc" (and no other fast-math flag: NaN and inf behave as in IEEE) lets LLVM sum in SIMD
    # lanes, 3x faster than one sequential chain; the lane order is fixed when the kernel is
    # compiled, so a machine always gives the same result. Explicit 4- or 8-way accumulators
    # and a pairwise tree were measured slower (numba does not SLP-vectorise them).
    s = np.float32(0.0)
    for e in range(a.shape[0]):
        s += a[e] * b[e]
    return s


@_jit()
def _slot(row, slots, rows_of_slot, grads, n_used):
    """The batch-local slot of ``row`` (a new zeroed one on first sight); returns (slot, n_used)."""
    s = slots[row]
    if s < 0:
        s = n_used
        slots[row] = s
        rows_of_slot[s] = row
        grads[s, :] = 0.0
        n_used += 1
    return s, n_used


@_jit()
def _adam_rows(table, m, v, grads, rows_of_slot, slots, n_used, beta1, beta2, one_minus_beta1,
               one_minus_beta2, eps, step_size):
    # torch: m = m*b1 + (1-b1) g; v = v*b2 + (1-b2) g²; table -= step_size * m / (sqrt(v) + eps)
    d = table.shape[1]
    for s in range(n_used):
        r = rows_of_slot[s]
        # 1-D row views: the element loop then compiles to SIMD (sqrt and division included).
        g_row = grads[s]
        m_row = m[r]
        v_row = v[r]
        t_row = table[r]
        for e in range(d):
            g = g_row[e]
            m_new = m_row[e] * beta1 + one_minus_beta1 * g
            v_new = v_row[e] * beta2 + one_minus_beta2 * (g * g)
            m_row[e] = m_new
            v_row[e] = v_new
            t_row[e] -= step_size * (m_new / (np.sqrt(v_new) + eps))
        slots[r] = -1   # leave the slot table all -1 for the next batch


@_jit()
def train_rows(P, Q, Pm, Pv, Qm, Qv, users, positives, negatives, batch_size, first_step, lr,
               beta1, beta2, eps, user_slots, item_slots, losses):
    """Lazy-Adam BCE steps on consecutive batches of ``batch_size`` rows (see the module doc).

    ``P, Q`` and their moments are float32 and updated in place; ``user_slots`` / ``item_slots``
    are int32 scratch of the tables' lengths, all -1 (left so). ``losses[b]`` gets batch b's loss.
    Step ``first_step + b`` is batch b's Adam step count (1-based). Returns the number of batches.
    """
    n = users.shape[0]
    d = P.shape[1]
    b1 = np.float32(beta1)
    b2 = np.float32(beta2)
    c1 = np.float32(1.0 - beta1)
    c2 = np.float32(1.0 - beta2)
    eps32 = np.float32(eps)
    width = min(batch_size, max(n, 1))
    user_grads = np.empty((width, d), dtype=np.float32)
    item_grads = np.empty((2 * width, d), dtype=np.float32)
    user_rows = np.empty(width, dtype=np.int64)
    item_rows = np.empty(2 * width, dtype=np.int64)
    d_pos = np.empty(width, dtype=np.float32)
    d_neg = np.empty(width, dtype=np.float32)
    n_batches = 0
    for lo in range(0, n, batch_size):
        hi = min(n, lo + batch_size)
        size = hi - lo
        size32 = np.float32(size)
        loss = 0.0
        for k in range(size):
            p = P[users[lo + k]]
            s_pos = _dot32(p, Q[positives[lo + k]])
            s_neg = _dot32(p, Q[negatives[lo + k]])
            loss += _softplus(-float(s_pos)) + _softplus(float(s_neg))
            d_pos[k] = -np.float32(_sigmoid(-float(s_pos))) / size32
            d_neg[k] = np.float32(_sigmoid(float(s_neg))) / size32
        losses[n_batches] = loss / size
        # Gradients from the parameters before this batch's update, summed per distinct row.
        n_users = 0
        for k in range(size):
            s, n_users = _slot(users[lo + k], user_slots, user_rows, user_grads, n_users)
            q_i = Q[positives[lo + k]]
            q_j = Q[negatives[lo + k]]
            for e in range(d):
                user_grads[s, e] += d_pos[k] * q_i[e] + d_neg[k] * q_j[e]
        n_items = 0
        for k in range(size):   # positives first, then negatives: torch.cat([positives, negatives])
            s, n_items = _slot(positives[lo + k], item_slots, item_rows, item_grads, n_items)
            p = P[users[lo + k]]
            for e in range(d):
                item_grads[s, e] += d_pos[k] * p[e]
        for k in range(size):
            s, n_items = _slot(negatives[lo + k], item_slots, item_rows, item_grads, n_items)
            p = P[users[lo + k]]
            for e in range(d):
                item_grads[s, e] += d_neg[k] * p[e]
        step = first_step + n_batches
        bias1 = 1.0 - beta1 ** step
        bias2 = 1.0 - beta2 ** step
        step_size = np.float32(lr * math.sqrt(bias2) / bias1)
        _adam_rows(P, Pm, Pv, user_grads, user_rows, user_slots, n_users, b1, b2, c1, c2, eps32,
                   step_size)
        _adam_rows(Q, Qm, Qv, item_grads, item_rows, item_slots, n_items, b1, b2, c1, c2, eps32,
                   step_size)
        n_batches += 1
    return n_batches


@_jit(fastmath={"reassoc"})
def _dot64(p64, q) -> float:
    # float32 products are exact in float64; the sum's order changes it by ~1e-16 relative,
    # which survives the rounding to float32 only at a float32 rounding boundary (~1e-9 odds).
    s = 0.0
    for e in range(p64.shape[0]):
        s += p64[e] * q[e]
    return s


@_jit()
def candidate_scores(user_vectors, item_table, candidates, out):
    """``out[b, c] = float32(Σ_e float64(p_b[e]) · float64(q_{cand[b,c]}[e]))``."""
    n_rows, n_cands = candidates.shape
    d = item_table.shape[1]
    for b in range(n_rows):
        p = user_vectors[b]
        p64 = np.empty(d, dtype=np.float64)
        for e in range(d):
            p64[e] = p[e]
        for c in range(n_cands):
            q = item_table[candidates[b, c]]
            out[b, c] = np.float32(_dot64(p64, q))


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
MIN_SCORES_PER_THREAD = 1 << 16   # below this, handing rows to other threads costs more than it saves


def parallel_candidate_scores(user_vectors: np.ndarray, item_table: np.ndarray, candidates: np.ndarray,
                              out: np.ndarray, threads: int) -> None:
    """``candidate_scores`` with its rows split over ``threads`` Python threads.

    The kernel releases the GIL (``nogil``), and every score depends only on its own two rows, so
    the result is the same for any number of threads. Python threads rather than numba's
    ``parallel=True``: numba's default threading layer aborts when two threads call a parallel
    kernel at once (the HTTP server scores requests from a thread pool).
    """
    n_rows = candidates.shape[0]
    parts = max(1, min(threads, candidates.size // MIN_SCORES_PER_THREAD, n_rows))
    if parts == 1:
        candidate_scores(user_vectors, item_table, candidates, out)
        return
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < parts:
            _POOL = ThreadPoolExecutor(max_workers=parts, thread_name_prefix="smlrec-score")
        pool = _POOL
    bounds = np.linspace(0, n_rows, parts + 1).astype(np.int64)
    jobs = [pool.submit(candidate_scores, user_vectors[lo:hi], item_table, candidates[lo:hi], out[lo:hi])
            for lo, hi in zip(bounds[:-1], bounds[1:])]
    for job in jobs:
        job.result()


@_jit()
def positive_ranks(scores, candidates, ranks):
    """``ranks[b]`` = #{j >= 1 : candidates[b, j] >= 0 and (s_j >= s_0 or s_j or s_0 is NaN)}.

    The rule of ``evaluation.metrics.positive_ranks`` (its slow twin): ties and NaN count against
    the model, padded candidates (id -1) are not counted. One pass, no temporary masks.
    """
    n_rows, n_cands = scores.shape
    for b in range(n_rows):
        s0 = scores[b, 0]
        if math.isnan(s0):
            count = 0
            for j in range(1, n_cands):
                count += candidates[b, j] >= 0
        else:
            count = 0
            for j in range(1, n_cands):
                s = scores[b, j]
                count += (candidates[b, j] >= 0) & ((s >= s0) | (s != s))
        ranks[b] = count
