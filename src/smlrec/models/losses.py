"""Losses. Pointwise BCE with one negative per positive, averaged over the batch:

    L = -mean log sigma(s_pos) - mean log(1 - sigma(s_neg))
      =  mean softplus(-s_pos) + mean softplus(s_neg)        (the stable form used here)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bce_pair_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    return F.softplus(-positive).mean() + F.softplus(negative).mean()


def bpr_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """-mean log sigma(s_pos - s_neg)."""
    return F.softplus(negative - positive).mean()
