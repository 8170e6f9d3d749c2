"""ASMG's meta-generator (Peng et al., RecSys 2021): a GRU per parameter coordinate that reads the
sequence of a parameter's values in the last k models and generates its next value.

For one coordinate c with input x_j (its value in model j), hidden h (size H = 4):

    r = σ(w_ir x + b_ir + W_hr h + b_hr)        z = σ(w_iz x + b_iz + W_hz h + b_hz)
    n = tanh(w_in x + b_in + r ⊙ (W_hn h + b_hn))
    h' = (1 - z) ⊙ n + z ⊙ h                    y = w_y · h' + b_y   (linear output)

(torch.nn.GRUCell's equations, input size 1.) Weights are per coordinate and shared by the rows
of a table: the GRU of embedding dimension j serves every user's j-th value (ASMG: "per embedding
dimension, shared across rows; per scalar for MLP tensors"). One :class:`CoordinateGRU` holds
the weights of all D coordinates of one tensor as ``[D, ...]`` arrays, so a step over N rows is
a few batched products on ``[N, D, H]``, never a Python loop over coordinates.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class CoordinateGRU(nn.Module):
    """D independent GRUs (input 1, hidden H) with a linear output, run on ``[N, D]`` inputs."""

    def __init__(self, n_coords: int, hidden: int = 4, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.hidden = hidden
        bound = 1.0 / math.sqrt(hidden)   # torch.nn.GRU's default range

        def uniform(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound, generator=generator))

        self.w_ih = uniform(n_coords, 3 * hidden)            # gates r, z, n (torch's order)
        self.b_ih = uniform(n_coords, 3 * hidden)
        self.w_hh = uniform(n_coords, hidden, 3 * hidden)
        self.b_hh = uniform(n_coords, 3 * hidden)
        self.w_out = uniform(n_coords, hidden)
        self.b_out = uniform(n_coords)

    @property
    def n_coords(self) -> int:
        return self.w_ih.shape[0]

    def initial_hidden(self, n_rows: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.zeros(n_rows, self.n_coords, self.hidden, device=device)

    def cell(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One GRU step: x ``[N, D]``, h ``[N, D, H]`` -> h' ``[N, D, H]``."""
        H = self.hidden
        gi = x.unsqueeze(-1) * self.w_ih + self.b_ih                          # [N, D, 3H]
        gh = torch.einsum("ndh,dhk->ndk", h, self.w_hh) + self.b_hh            # [N, D, 3H]
        r = torch.sigmoid(gi[..., :H] + gh[..., :H])
        z = torch.sigmoid(gi[..., H:2 * H] + gh[..., H:2 * H])
        n = torch.tanh(gi[..., 2 * H:] + r * gh[..., 2 * H:])
        return (1 - z) * n + z * h

    def output(self, h: torch.Tensor) -> torch.Tensor:
        """The generated value of every coordinate: ``[N, D, H]`` -> ``[N, D]``."""
        return (h * self.w_out).sum(-1) + self.b_out


def gru_reference(gru: CoordinateGRU, xs: list[torch.Tensor], h0: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Slow twin: one ``torch.nn.GRUCell`` per coordinate, one row at a time. Returns the output
    after every step (each ``[N, D]``) and the last hidden state."""
    n_rows, n_coords, H = h0.shape
    outputs = [torch.zeros(n_rows, n_coords) for _ in xs]
    last = torch.zeros_like(h0)
    for c in range(n_coords):
        cell = nn.GRUCell(1, H)
        with torch.no_grad():
            cell.weight_ih.copy_(gru.w_ih[c][:, None])
            cell.bias_ih.copy_(gru.b_ih[c])
            cell.weight_hh.copy_(gru.w_hh[c].T)
            cell.bias_hh.copy_(gru.b_hh[c])
            for row in range(n_rows):
                h = h0[row, c][None, :]
                for j, x in enumerate(xs):
                    h = cell(x[row, c].reshape(1, 1), h)
                    outputs[j][row, c] = (h[0] * gru.w_out[c]).sum() + gru.b_out[c]
                last[row, c] = h[0]
    return outputs, last
