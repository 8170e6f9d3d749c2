"""Scoring one period split across the ranks of torch.distributed, by rows, and gathered.

Every protocol scores a period in blocks of rows whose bounds are a function of the period alone:
``eval_batch_size`` rows at a time (sampled, auc) or the blocks of :func:`protocols.full_blocks`
(full). Under ``torchrun`` each rank takes a contiguous run of whole blocks and computes the
per-row outcome (ranks, or the auc protocol's pair scores) of its rows; one ``all_gather`` puts the
runs back in row order on every rank::

    rows   0 ........................................................ n
    blocks |  B0  |  B1  |  B2  |  B3  |  B4  |  B5  |  B6  | B7 |
    ranks  |<------- rank 0 ------>|<---------- rank 1 ----------->|   cut at the block bound
                                                                       nearest n / 2

Because a rank's blocks are the single process's blocks, it calls ``strategy.score`` with the same
row slices and the same candidates, tensors of the same shapes: the scores, hence the outcomes and
every metric computed from them, equal the single-process ones exactly (same thread count). The
single-process path does not come here.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..models.distributed import gather_row_slices, world


def fixed_blocks(n_rows: int, batch_size: int) -> np.ndarray:
    """Bounds ``[0, b, 2b, ..., n_rows]`` of the blocks of ``batch_size`` rows a scorer takes."""
    return np.unique(np.append(np.arange(0, n_rows, batch_size, dtype=np.int64), n_rows))


def rank_slices(bounds: np.ndarray, size: int) -> list[tuple[int, int]]:
    """``size`` contiguous runs of whole blocks, ``[lo, hi)`` per rank: each cut is the block bound
    nearest the even split ``r * n / size`` (a rank may get no rows when blocks are few)."""
    bounds = np.asarray(bounds, dtype=np.int64)
    n_rows = int(bounds[-1])
    cuts = [0]
    for r in range(1, size):
        target = r * n_rows / size
        nearest = int(bounds[np.argmin(np.abs(bounds - target))])   # the lower one on a tie
        cuts.append(max(cuts[-1], nearest))
    cuts.append(n_rows)
    return [(cuts[r], cuts[r + 1]) for r in range(size)]


def scored_by_ranks(outcome_of: Callable[[slice], np.ndarray], bounds: np.ndarray,
                    device: str | torch.device = "cpu") -> np.ndarray:
    """The per-row outcome of every row: ``outcome_of(rows)`` of this rank's run of blocks, gathered
    from all ranks in row order (in a single process: ``outcome_of`` of all the rows)."""
    rank, size = world()
    if size == 1:
        return outcome_of(slice(0, int(bounds[-1])))
    slices = rank_slices(bounds, size)
    lo, hi = slices[rank]
    return gather_row_slices(outcome_of(slice(lo, hi)), [b - a for a, b in slices], device)
