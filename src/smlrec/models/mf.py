"""Matrix factorisation without biases: s(u, i) = <p_u, q_i> (sml-method.md section 2)."""

from __future__ import annotations

import torch
from torch import nn


class MF(nn.Module):
    """User table P (n_users x dim) and item table Q (n_items x dim).

    ``sparse=True`` makes embedding gradients sparse, so a lazy optimiser (SparseAdam) touches
    only the rows of a batch. Rows are initialised N(0, init_std^2).
    """

    def __init__(self, n_users: int, n_items: int, dim: int = 64, init_std: float = 0.1,
                 sparse: bool = True, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.init_std = init_std
        self.user = nn.Embedding(n_users, dim, sparse=sparse)
        self.item = nn.Embedding(n_items, dim, sparse=sparse)
        with torch.no_grad():
            self.user.weight.normal_(0.0, init_std, generator=generator)
            self.item.weight.normal_(0.0, init_std, generator=generator)

    @property
    def dim(self) -> int:
        return self.user.embedding_dim

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of ``items`` for ``users``: items shaped [B] gives [B]; [B, C] gives [B, C]."""
        p = self.user(users)
        q = self.item(items)
        if items.dim() == users.dim() + 1:
            return torch.einsum("bd,bcd->bc", p, q)
        return (p * q).sum(-1)

    forward = score


def score_with_tables(users_table: torch.Tensor, items_table: torch.Tensor, users: torch.Tensor,
                      items: torch.Tensor) -> torch.Tensor:
    """Inner-product scores from plain tables (served models that are not MF modules)."""
    p = users_table[users]
    q = items_table[items]
    if items.dim() == users.dim() + 1:
        return torch.einsum("bd,bcd->bc", p, q)
    return (p * q).sum(-1)
