"""Caser (Tang and Wang, WSDM 2018): convolutional sequence embedding of the last L items.

    E        = [e_1; ...; e_L]  (L x d)   embeddings of the user's L previous items, oldest first
                                          (missing items: a zero padding row)
    o        = [max-pool(ReLU(conv_{h,k}(E))) for h in 1..L, k in 1..n_h]      horizontal filters
               (filter h x d slides over the L - h + 1 windows of h consecutive items: union-level
               and point-level sequential patterns), n_h * L values
    õ        = [conv_{L x 1, k}(E) for k in 1..n_v]   vertical filters: weighted sums of the rows,
               n_v * d values, no activation
    z        = ReLU(W_1 · dropout([õ; o]) + b_1)      (d values)
    s(u, i)  = <[z; p_u], q_i> + b_i                  (p = user embedding, q = item output
                                                        embedding of size 2d, b = item bias)

Contexts come as right-aligned windows ``[B, W]`` (most recent last, ``-1`` padding in front);
the last L columns are used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .gru4rec import score_items, seeded_dropout


class Caser(nn.Module):
    """The Caser network: horizontal + vertical convolutions, FC, user embedding, item output."""

    def __init__(self, n_users: int, n_items: int, dim: int = 64, length: int = 5, n_h: int = 16,
                 n_v: int = 4, dropout: float = 0.5, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.n_items = n_items
        self.length = length
        self.embedding = nn.Embedding(n_items + 1, dim, padding_idx=n_items)   # last row: padding
        self.user = nn.Embedding(n_users, dim)
        self.horizontal = nn.ModuleList(nn.Conv2d(1, n_h, (h, dim)) for h in range(1, length + 1))
        self.vertical = nn.Conv2d(1, n_v, (length, 1))
        self.dropout = dropout
        self.dropout_generator: torch.Generator | None = None   # set by the owner for reproducibility
        self.fc = nn.Linear(n_h * length + n_v * dim, dim)
        self.output = nn.Embedding(n_items, 2 * dim)
        self.bias = nn.Embedding(n_items, 1)
        with torch.no_grad():
            self.embedding.weight.normal_(0.0, 1.0 / dim, generator=generator)
            self.embedding.weight[n_items].zero_()
            self.user.weight.normal_(0.0, 1.0 / dim, generator=generator)
            self.output.weight.normal_(0.0, 1.0 / (2 * dim), generator=generator)
            self.bias.weight.zero_()
            for layer in [*self.horizontal, self.vertical, self.fc]:
                fan_in = layer.weight[0].numel()
                bound = 1.0 / fan_in ** 0.5
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)

    def encode(self, users: torch.Tensor, context: torch.Tensor,
               user_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """``[z; p_u]`` (``[B, 2 * dim]``) for right-aligned contexts ``[B, W >= L]``
        (``user_vectors``, when given, replaces the rows ``p_u`` of ``users``)."""
        window = context[:, -self.length:]
        tokens = torch.where(window < 0, torch.full_like(window, self.n_items), window)
        image = self.embedding(tokens).unsqueeze(1)                  # [B, 1, L, d]
        vertical = self.vertical(image).flatten(1)                   # [B, n_v * d]
        horizontal = [F.relu(conv(image).squeeze(3)).amax(dim=2)     # [B, n_h] per height
                      for conv in self.horizontal]
        features = torch.cat([vertical, *horizontal], dim=1)
        features = seeded_dropout(features, self.dropout, self.training, self.dropout_generator)
        z = F.relu(self.fc(features))
        return torch.cat([z, self.user(users) if user_vectors is None else user_vectors], dim=1)

    def score(self, users: torch.Tensor, context: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of ``items`` ([B] or [B, C]) after each row's context: [B] or [B, C]."""
        return score_items(self.encode(users, context), self.output, self.bias, items)

    forward = score
