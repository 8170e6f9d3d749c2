"""GRU4Rec (Hidasi, Karatzoglou, Baltrunas, Tikk, ICLR 2016): a GRU over the user's item sequence.

    x_1..x_L = item embeddings of the user's previous items, oldest first
    h_L      = GRU(x_1..x_L)                      (one layer, hidden size ``hidden``)
    s(i)     = <h_L, o_i>                         (o = the item output embedding)

Contexts come as right-aligned windows ``[B, W]`` (most recent item last, ``-1`` padding in
front). They are shifted to the left (items at 0..L-1, padding after) so the GRU reads only real
items up to position L-1, whose output is taken; padding after it cannot reach it (the GRU is
causal). A row with no item at all gets the output at position 0 of an all-padding sequence;
the strategy gives such rows all-equal scores anyway.

Trained on (context, next item) pairs with one sampled negative (BCE or BPR) instead of the
paper's session-parallel mini-batches: the same next-item objective, with truncated history.
"""

from __future__ import annotations

import torch
from torch import nn

from .distributed import batch_rand
from .mf import candidate_scores


def seeded_dropout(x: torch.Tensor, p: float, training: bool,
                   generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout drawing its mask from ``generator`` (not torch's global generator), so a
    run resumed from a checkpoint that saved the generator's state draws the same masks. The first
    dimension of ``x`` is the batch's rows: in a data-parallel step the mask is the whole batch's
    mask cut to this rank's rows (``batch_rand``)."""
    if not training or p == 0.0:
        return x
    keep = batch_rand(x.shape, generator, x.device) >= p
    return x * keep / (1.0 - p)


def left_align(context: torch.Tensor, pad: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-aligned windows ``[B, W]`` as left-aligned ones, and each row's length."""
    width = context.shape[1]
    lengths = (context != pad).sum(dim=1)
    index = torch.arange(width, device=context.device)[None, :] + (width - lengths)[:, None]
    shifted = torch.gather(context, 1, index.clamp_max(width - 1))
    shifted = torch.where(torch.arange(width, device=context.device)[None, :] < lengths[:, None],
                          shifted, torch.full_like(shifted, pad))
    return shifted, lengths


class GRU4Rec(nn.Module):
    """Item embedding -> one-layer GRU -> inner product with the item output embedding."""

    def __init__(self, n_items: int, dim: int = 64, hidden: int = 64, dropout: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.n_items = n_items
        self.embedding = nn.Embedding(n_items + 1, dim, padding_idx=n_items)   # last row: padding
        self.gru = nn.GRU(dim, hidden, batch_first=True)
        self.dropout = dropout
        self.dropout_generator: torch.Generator | None = None   # set by the owner for reproducibility
        self.output = nn.Embedding(n_items, hidden)
        with torch.no_grad():
            for table in (self.embedding.weight, self.output.weight):
                table.normal_(0.0, 0.05, generator=generator)
            self.embedding.weight[n_items].zero_()
            for name, weight in self.gru.named_parameters():
                if name.startswith("weight"):
                    bound = 1.0 / hidden ** 0.5
                    weight.uniform_(-bound, bound, generator=generator)
                else:
                    weight.zero_()

    def encode(self, users: torch.Tensor, context: torch.Tensor,
               user_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """The sequence representation ``[B, hidden]`` of right-aligned contexts (users unused)."""
        aligned, lengths = left_align(context)
        tokens = torch.where(aligned < 0, torch.full_like(aligned, self.n_items), aligned)
        inputs = seeded_dropout(self.embedding(tokens), self.dropout, self.training,
                                self.dropout_generator)
        outputs, _ = self.gru(inputs)
        last = (lengths - 1).clamp_min(0)
        return outputs[torch.arange(len(outputs), device=outputs.device), last]

    def score(self, users: torch.Tensor, context: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of ``items`` ([B] or [B, C]) after each row's context: [B] or [B, C]."""
        return score_items(self.encode(users, context), self.output, None, items)

    forward = score


def score_items(state: torch.Tensor, output: nn.Embedding, bias: nn.Embedding | None,
                items: torch.Tensor) -> torch.Tensor:
    """<state_b, o_i> (+ b_i) for items [B] or [B, C] (candidates scored as MF scores them)."""
    if items.dim() == 2:
        scores = candidate_scores(state, output.weight, items)
    else:
        scores = (state * output(items)).sum(-1)
    if bias is not None:
        scores = scores + bias(items).squeeze(-1)
    return scores
