"""Collapse guard: does a served model tell a row's candidates apart at all?

A model whose scores tie across a row's candidates ranks the positive last (ties count against
the model, sml-method.md section 5), so a collapsed strategy (e.g. a transfer that maps every row
to one vector, or a ReLU tower whose last hidden layer is dead) scores below random and nothing
else in the results says why. The replay watches every block of scores a strategy returns, for any
strategy alike: a row is *flat* when the spread of its scores (max - min over the block's columns)
is within float rounding of zero, or when a score is NaN. A period whose flat share exceeds
``COLLAPSE_SHARE`` is flagged ``collapsed``.

The check costs one max and one min over each ``[rows, candidates]`` block the protocol computes
anyway. Under the sampled protocol, padded candidates are scored as item 0 (evaluation/metrics.py):
an extra column can only widen a row's spread, so padding never makes a row flat.
"""

from __future__ import annotations

from typing import Callable

import torch

FLAT_RTOL = 1e-5
"""A row is flat when max - min <= FLAT_RTOL * max |score| (+ the smallest normal float32): float32
keeps ~7 digits, so scores closer than that differ only by rounding of a constant."""
COLLAPSE_SHARE = 0.5
"""A scored period is flagged collapsed when more than this share of its rows are flat."""


def flat_rows(scores: torch.Tensor) -> torch.Tensor:
    """Bool ``[rows]``: the row's scores are all equal to float rounding (or contain NaN)."""
    scores = scores.float()
    high, low = scores.amax(dim=1), scores.amin(dim=1)
    tolerance = FLAT_RTOL * torch.maximum(high.abs(), low.abs()) + torch.finfo(torch.float32).tiny
    # "not (spread > tolerance)" is also true for NaN scores
    return ~((high - low) > tolerance) | torch.isnan(scores).any(dim=1)


def flat_rows_reference(scores: torch.Tensor) -> list[bool]:
    """The slow twin of :func:`flat_rows`: one row at a time, in Python floats."""
    out = []
    for row in scores.float().tolist():
        if any(v != v for v in row):
            out.append(True)
            continue
        high, low = max(row), min(row)
        out.append(high - low <= FLAT_RTOL * max(abs(high), abs(low)) + torch.finfo(torch.float32).tiny)
    return out


class FlatWatch:
    """Counts the flat rows of every score block passed through :meth:`wrap`."""

    def __init__(self) -> None:
        self.rows = 0
        self.flat = 0

    def wrap(self, score: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def watched(*args, **kwargs) -> torch.Tensor:
            scores = score(*args, **kwargs)
            if scores.dim() == 2 and scores.shape[0] and scores.shape[1] > 1:
                self.rows += int(scores.shape[0])
                self.flat += int(flat_rows(scores).sum())
            return scores
        return watched

    @property
    def share(self) -> float:
        """Flat rows over watched rows (NaN when nothing was watched)."""
        return self.flat / self.rows if self.rows else float("nan")


def is_collapsed(flat_share: float) -> bool:
    return bool(flat_share > COLLAPSE_SHARE)   # NaN (nothing watched) is not a collapse
