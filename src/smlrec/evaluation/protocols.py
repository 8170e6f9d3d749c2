"""The three evaluation protocols: sampled candidates, full ranking, and AUC/LogLoss.

* ``sampled`` (sml-method.md section 5, the paper's): the positive ranked among its 999 cached
  negatives (:func:`smlrec.evaluation.metrics.rank_candidates`).
* ``full``: the positive ranked among *every* item seen so far (up to and including the row) minus
  the user's items so far: the same pool the sampled negatives come from, taken whole. With
  ``s`` the row's scores over the catalogue and ``p`` the positive::

      rank = #{ j in pool : s_j >= s_p  or  s_j is NaN }   (+ the whole pool when s_p is NaN)

  Ties and NaN count against the model, as under ``sampled``. No sort is needed: a rank is a
  count. Rows are scored a block at a time with the strategy's own ``score`` over the item prefix
  (a matrix product for the MF-like strategies), so memory is ``block_elements`` scores whatever
  the catalogue size.
* ``auc``: each row's positive and one negative drawn (seeded, shared by every strategy) from the
  same pool. Per period, over the 2n labelled scores (as ASMG, Peng et al. 2021, evaluate)::

      AUC     = P(s_pos > s_neg) over all (positive, negative) pairs of the period,
                a tie counting 1/2 (the Mann-Whitney statistic; sklearn's roc_auc_score)
      LogLoss = mean over the 2n examples of -[y log sigma(s) + (1 - y) log(1 - sigma(s))]

  A NaN score counts against the model in AUC (a NaN positive as -inf, a NaN negative as +inf);
  LogLoss is only defined for strategies whose scores are logits (``calibrated_scores``), NaN for
  the others (popularity counts are not probabilities).
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

from ..config import PROTOCOL_NAMES
from ..data.pairs import PairIndex
from ..data.periods import Period
from ..data.sampling import sample_prefix_negatives
from ..errors import ConfigError
from ..random import make_rng
from .metrics import METRIC_NAMES, metrics_from_ranks

PROTOCOLS = PROTOCOL_NAMES
AUC_METRICS = ("auc", "logloss")
ALL_METRICS = (*METRIC_NAMES, *AUC_METRICS)
LOWER_IS_BETTER = frozenset({"logloss"})
FULL_BLOCK_ELEMENTS = 1 << 23   # scores held at once by full ranking (32 MiB of float32)

ScoreFn = Callable[[slice, torch.Tensor], torch.Tensor]
"""``score(rows, candidates [B, C]) -> scores [B, C]`` for a slice of a period's rows."""


def parse_protocols(value: str | Iterable[str]) -> tuple[str, ...]:
    """``"sampled,full"`` (or a list) -> ``("sampled", "full")``; unknown names are errors."""
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if not names:
        raise ConfigError(f"no protocol given (known: {', '.join(PROTOCOLS)})")
    for name in names:
        if name not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {name!r} (known: {', '.join(PROTOCOLS)})")
    return tuple(dict.fromkeys(names))


def protocol_metric_names(protocol: str) -> tuple[str, ...]:
    return AUC_METRICS if protocol == "auc" else METRIC_NAMES


# ----------------------------------------------------------------------------------------------
# full ranking

def history_pairs(users: np.ndarray, positions: np.ndarray, seen: PairIndex) -> tuple[np.ndarray, np.ndarray]:
    """``(row, item)`` for every item each row's user interacted with up to and including the row.

    The seen-pairs index is sorted by (user, item), so a user's pairs are one slice of it: the
    slices of the rows are concatenated with ``repeat`` + ``arange`` and filtered by position.
    """
    users = np.asarray(users, dtype=np.int64)
    key_users = seen.keys >> np.int64(32)
    lo = np.searchsorted(key_users, users, side="left")
    hi = np.searchsorted(key_users, users, side="right")
    lengths = hi - lo
    rows = np.repeat(np.arange(len(users)), lengths)
    offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    slots = np.repeat(lo, lengths) + offsets
    keep = seen.first_position[slots] <= np.asarray(positions, dtype=np.int64)[rows]
    items = seen.keys[slots[keep]] & np.int64(0xFFFFFFFF)
    return rows[keep], items


def full_ranks(score: ScoreFn, period: Period, block_elements: int = FULL_BLOCK_ELEMENTS,
               device: str | torch.device = "cpu", rows: slice | None = None) -> np.ndarray:
    """Rank of each row's positive among the item prefix minus the user's items so far.

    ``rows``: only these rows (default all); to score them in the blocks the whole period is
    scored in, ``rows`` must start and end at bounds of :func:`full_blocks` (the walk from a
    block's start does not depend on what came before it)."""
    start, n = (0, len(period)) if rows is None else (rows.start, rows.stop)
    ranks = np.empty(n - start, dtype=np.int64)
    items_seen = np.asarray(period.items_seen, dtype=np.int64)[:n]   # blocks end by n
    positions = period.positions
    lo = start
    while lo < n:
        hi = _block_end(items_seen, lo, block_elements)
        width = int(items_seen[hi - 1])
        block = slice(lo, hi)
        b = hi - lo
        candidates = torch.arange(width, device=device).expand(b, width)
        with torch.no_grad():
            scores = score(block, candidates).float()
        positive_items = torch.from_numpy(np.asarray(period.items[block], dtype=np.int64)).to(device)
        positive = scores.gather(1, positive_items[:, None])
        # "s_j >= s_p or either is NaN" is exactly "not (s_j < s_p)": one comparison pass, and a
        # rank is the columns that are not lower, minus those outside the row's pool.
        lower = scores < positive
        # (summing bools as uint8 into int32 is ~2x faster on CPU than the default int64 sum)
        beats = width - lower.view(torch.uint8).sum(dim=1, dtype=torch.int32).long()
        prefix = torch.from_numpy(items_seen[block]).to(device)
        first = int(items_seen[lo])    # columns before the block's first prefix are in every pool
        if first < width:
            columns = torch.arange(first, width, device=device)[None, :]
            beats -= (~lower[:, first:] & (columns >= prefix[:, None])).sum(dim=1)
        # The user's items so far (the positive among them) are not in the pool.
        row_idx, item_idx = history_pairs(period.users[block], positions[block], period.seen)
        row_t = torch.from_numpy(row_idx).to(device)
        history_beats = ~lower[row_t, torch.from_numpy(item_idx).to(device)]
        beats -= torch.zeros(b, dtype=beats.dtype, device=device).index_add_(0, row_t, history_beats.to(beats.dtype))
        ranks[lo - start: hi - start] = beats.cpu().numpy()
        lo = hi
    return ranks


def full_blocks(period: Period, block_elements: int = FULL_BLOCK_ELEMENTS) -> np.ndarray:
    """Bounds ``[0, ..., len(period)]`` of the blocks :func:`full_ranks` scores the period in."""
    items_seen = np.asarray(period.items_seen, dtype=np.int64)
    bounds, lo = [0], 0
    while lo < len(period):
        lo = _block_end(items_seen, lo, block_elements)
        bounds.append(lo)
    return np.asarray(bounds, dtype=np.int64)


def _block_end(items_seen: np.ndarray, lo: int, block_elements: int) -> int:
    """The end of the longest block from ``lo`` whose rows x width (its last row's prefix: the
    prefix only grows inside a period) fits in ``block_elements``; at least one row."""
    window = items_seen[lo: lo + block_elements // max(1, int(items_seen[lo])) + 1]
    cost = np.arange(1, len(window) + 1) * window
    return lo + max(1, int(np.searchsorted(cost, block_elements, side="right")))


def full_ranks_reference(score: ScoreFn, period: Period) -> np.ndarray:
    """The slow, obvious twin of :func:`full_ranks`: one row at a time, pool built item by item."""
    ranks = []
    for r in range(len(period)):
        user, positive, position = int(period.users[r]), int(period.items[r]), int(period.positions[r])
        pool = [j for j in range(int(period.items_seen[r]))
                if not period.seen.contains(np.array([user]), np.array([j]), np.array([position]))[0]]
        with torch.no_grad():
            s = score(slice(r, r + 1), torch.tensor([[positive, *pool]], dtype=torch.int64))[0].float()
        s_pos = float(s[0])
        ranks.append(sum(1 for v in s[1:].tolist() if v != v or s_pos != s_pos or v >= s_pos))
    return np.asarray(ranks, dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# AUC / LogLoss

def auc_negatives(period: Period, seed: int) -> np.ndarray:
    """One negative per row from the prefix pool minus the user's items so far, seeded per period.

    A deterministic function of (data, period, seed), so every strategy gets the same negatives
    (like the cached candidates); cheap enough (one draw per row) that it is not cached on disk.
    """
    return sample_prefix_negatives(period.users, period.positions, period.items_seen, period.seen,
                                   make_rng(seed, "auc-negatives", period.index))


def pair_scores(score: ScoreFn, positives: np.ndarray, negatives: np.ndarray, batch_size: int = 2048,
                device: str | torch.device = "cpu") -> np.ndarray:
    """``[n, 2]`` float64: each row's score of its positive and of its negative."""
    n = len(positives)
    out = np.empty((n, 2), dtype=np.float64)
    pairs = np.stack([np.asarray(positives, dtype=np.int64), np.asarray(negatives, dtype=np.int64)], 1)
    for lo in range(0, n, batch_size):
        rows = slice(lo, min(n, lo + batch_size))
        with torch.no_grad():
            out[rows] = score(rows, torch.from_numpy(pairs[rows]).to(device)).double().cpu().numpy()
    return out


def _against_model(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative scores with NaN replaced so that it loses (-inf / +inf)."""
    positive = np.where(np.isnan(scores[:, 0]), -np.inf, scores[:, 0])
    negative = np.where(np.isnan(scores[:, 1]), np.inf, scores[:, 1])
    return positive, negative


def weighted_auc(scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of one period under row weights ``[R, n]`` (a row's positive and negative share its
    weight); ``[R]``. Ties count 1/2.

    The negatives are sorted once; for each positive, the weight of negatives strictly below it and
    tied with it are differences of one cumulative sum, so R resamples cost O(R n), not O(R n log n).
    """
    positive, negative = _against_model(scores)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(negative, kind="stable")
    sorted_negative = negative[order]
    below = np.searchsorted(sorted_negative, positive, side="left")
    upto = np.searchsorted(sorted_negative, positive, side="right")
    cumulative = np.zeros((weights.shape[0], len(negative) + 1))
    np.cumsum(weights[:, order], axis=1, out=cumulative[:, 1:])
    wins = cumulative[:, below] + 0.5 * (cumulative[:, upto] - cumulative[:, below])
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights * wins).sum(axis=1) / (total * total)


def auc_reference(scores: np.ndarray) -> float:
    """The slow twin of :func:`weighted_auc` (unit weights): every pair, one at a time."""
    positive, negative = _against_model(np.asarray(scores, dtype=np.float64))
    total = 0.0
    for p in positive:
        for q in negative:
            total += 1.0 if p > q else 0.5 if p == q else 0.0
    return total / (len(positive) * len(negative))


def row_logloss(scores: np.ndarray) -> np.ndarray:
    """Each row's share of the period's LogLoss: (softplus(-s_pos) + softplus(s_neg)) / 2, so that
    the mean over rows is the mean over the 2n examples."""
    with np.errstate(invalid="ignore"):    # a NaN score gives a NaN loss, without a warning
        return 0.5 * (np.logaddexp(0.0, -scores[:, 0]) + np.logaddexp(0.0, scores[:, 1]))


def metrics_from_pairs(scores: np.ndarray, calibrated: bool = True) -> dict[str, float]:
    """AUC and mean LogLoss of one period's ``[n, 2]`` (positive, negative) scores."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1, 2)
    if len(scores) == 0:
        return {"auc": float("nan"), "logloss": float("nan")}
    auc = float(weighted_auc(scores, np.ones((1, len(scores))))[0])
    logloss = float(np.mean(row_logloss(scores))) if calibrated else float("nan")
    return {"auc": auc, "logloss": logloss}


def outcome_metrics(protocol: str, outcome: np.ndarray, calibrated: bool = True) -> dict[str, float]:
    """The protocol's metrics of a period (or a subset of its rows): ranks -> Recall/NDCG,
    ``[n, 2]`` pair scores -> AUC/LogLoss."""
    if protocol == "auc":
        return metrics_from_pairs(outcome, calibrated)
    return metrics_from_ranks(outcome)
