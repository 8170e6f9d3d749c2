"""Transfer networks f_Θ(w_prev, w_hat) -> w that merge old and new embeddings row by row.

The SML transfer (sml-method.md section 3), for one row with w = w_prev (constant) and ŵ = w_hat:

    c  = w ⊙ stopgrad(ŵ) / (||w||₂ + eps)          gradient reaches ŵ only through row 2
    X  = [w; ŵ; c]                                  a 1-channel image of height 3, width d
    H1 = g(Conv3x1(X))                              10 channels; each mixes w[j], ŵ[j], c[j]
    H2 = g(Conv1x1(H1))                             5 channels; flattened channel-major to 5d
    f  = FC(g(FC(H2)))                              5d -> 512 -> d, no output activation
    g(x) = x · σ(1.702 x)

The convolutions are held as ``nn.Conv2d`` (for PyTorch's default initialisation) but computed as
einsums over the stacked rows, which is the same arithmetic without image reshapes.

Fast path: g(x) = silu(a·x)/a with a = 1.702 costs three elementwise passes (scale, silu,
unscale) forward and three more backward, over activations far larger than the weights. Since
every g is followed by a linear map, ``forward`` folds a into the weights instead: it computes
s = silu(a·(Wz + b)) with the weight-sized products aW, ab, and the next layer takes s with W'/a,
which is the same function with one elementwise pass per activation. ``forward_reference`` is the
literal formula above, the slow twin the tests compare with (equal to float rounding).

Residual form (``residual=True``; SML-FC's registered form, docs/sml-stability.md):
f = ŵ + Δ(w, ŵ), with Δ the network above and its last layer initialised to zero, so an untrained
transfer is the identity on ŵ (the model fitted on the new period, as Fine-tune would serve it)
and Adam's weight decay pulls Θ back towards that, not towards the bias-only output that maps
every row to one constant vector.
The skip reads ŵ from the stack's second row, so the gradient still reaches ŵ only through that
row (never through c). The plain form lets an untrained or decayed network squeeze all rows into a
small cloud: NCF's ReLU tower is then linear over the cloud (one ranking for every user), and the
``no-fc`` output (one scalar function shared by every dimension) maps each row close to a
multiple of the all-ones vector. ``keep_scale`` rescales each output row to its ŵ row's norm, so
step 2 cannot inflate the rows as a free logit scale either (docs/sml-stability.md).

Alternatives for the ablations: ``no-cnn`` (FC on the flattened 3 x d stack), ``no-fc`` (the CNN,
then a 1x1 convolution back to one channel of width d), ``linear`` (αw + (1-α)ŵ with α learned),
``mlp`` (MLP on [w; ŵ]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .precision import autocast

TRANSFER_KINDS = ("cnn", "no-cnn", "no-fc", "linear", "mlp")


GELU_SCALE = 1.702
# bf16 on a CPU: oneDNN builds (JIT-compiles) and caches a kernel per batch shape, and SML's batches
# of distinct rows take a new size nearly every step. Measured with 1,500 batches of 700-2,048 rows:
# +1.2 GB resident, against +0.14 GB with rows padded to a multiple of 128 (at most 128 rows of
# zeros per batch, which add nothing to any gradient).
BF16_CPU_ROW_MULTIPLE = 128


def gelu_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """The authors' GELU approximation x·σ(1.702x), computed as silu(1.702x)/1.702 (one fused
    kernel forward and backward instead of four elementwise passes)."""
    return F.silu(GELU_SCALE * x) / GELU_SCALE


def stacked_rows(w_prev: torch.Tensor, w_hat: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """[w; ŵ; c] as ``[B, 3, d]`` with c = w ⊙ stopgrad(ŵ) / (||w|| + eps)."""
    norm = w_prev.norm(dim=-1, keepdim=True) + eps
    combined = w_prev * w_hat.detach() / norm
    return torch.stack([w_prev, w_hat, combined], dim=1)


class Transfer(nn.Module):
    """One transfer network (one for users, another for items)."""

    def __init__(self, dim: int, kind: str = "cnn", channels: int = 10, channels2: int = 5,
                 hidden: int = 512, eps: float = 1e-12, precision: str = "fp32",
                 residual: bool = False, keep_scale: bool = False) -> None:
        super().__init__()
        if kind not in TRANSFER_KINDS:
            raise ValueError(f"unknown transfer {kind!r} (known: {', '.join(TRANSFER_KINDS)})")
        self.kind = kind
        self.precision = precision   # fp32 | bf16 (models/precision.py); outputs are float32 either way
        self.dim = dim
        self.eps = eps
        if kind in ("cnn", "no-fc"):
            self.conv1 = nn.Conv2d(1, channels, kernel_size=(3, 1))
            self.conv2 = nn.Conv2d(channels, channels2, kernel_size=(1, 1))
        if kind == "cnn":
            self.fc1 = nn.Linear(channels2 * dim, hidden)
            self.fc2 = nn.Linear(hidden, dim)
        elif kind == "no-fc":
            self.conv3 = nn.Conv2d(channels2, 1, kernel_size=(1, 1))
        elif kind == "no-cnn":
            self.fc1 = nn.Linear(3 * dim, hidden)
            self.fc2 = nn.Linear(hidden, dim)
        elif kind == "mlp":
            self.fc1 = nn.Linear(2 * dim, hidden)
            self.fc2 = nn.Linear(hidden, dim)
        elif kind == "linear":
            self.alpha = nn.Parameter(torch.tensor(0.5))
        # The linear mix is already a convex combination around its inputs: no skip for it.
        self.residual = residual and kind != "linear"
        self.keep_scale = keep_scale
        if self.residual:
            last = self.conv3 if kind == "no-fc" else self.fc2
            with torch.no_grad():
                last.weight.zero_()
                last.bias.zero_()

    def forward(self, w_prev: torch.Tensor, w_hat: torch.Tensor) -> torch.Tensor:
        if self.precision == "fp32":
            return self._scaled(self._folded(w_prev, w_hat), w_hat)
        rows = w_prev.shape[0]
        pad = -rows % BF16_CPU_ROW_MULTIPLE if w_prev.device.type == "cpu" else 0
        if pad:
            w_prev, w_hat = F.pad(w_prev, (0, 0, 0, pad)), F.pad(w_hat, (0, 0, 0, pad))
        with autocast(self.precision, w_prev.device):
            out = self._folded(w_prev, w_hat)
        return self._scaled(out[:rows].float(), w_hat[:rows])

    def _scaled(self, out: torch.Tensor, w_hat: torch.Tensor) -> torch.Tensor:
        """``keep_scale``: each output row rescaled to its ŵ row's norm (the transfer then chooses
        a direction, never a scale: it cannot inflate the rows the base scores)."""
        if not self.keep_scale:
            return out
        return out * (w_hat.norm(dim=-1, keepdim=True) / (out.norm(dim=-1, keepdim=True) + self.eps))

    def _folded(self, w_prev: torch.Tensor, w_hat: torch.Tensor) -> torch.Tensor:
        """f with the GELU scale folded into the weights (module doc); s_k = a·g(z_k)."""
        if not self.residual:
            return self._folded_delta(w_prev, w_hat)
        if self.kind == "mlp":
            return w_hat + self._folded_delta(w_prev, w_hat)
        x = stacked_rows(w_prev, w_hat, self.eps)
        return x[:, 1] + self._folded_delta(w_prev, w_hat, x)

    def _folded_delta(self, w_prev: torch.Tensor, w_hat: torch.Tensor,
                      x: torch.Tensor | None = None) -> torch.Tensor:
        a = GELU_SCALE
        if self.kind == "linear":
            return self.alpha * w_prev + (1.0 - self.alpha) * w_hat
        if self.kind == "mlp":
            s = F.silu(F.linear(torch.cat([w_prev, w_hat], dim=-1), self.fc1.weight * a, self.fc1.bias * a))
            return F.linear(s, self.fc2.weight / a, self.fc2.bias)
        x = stacked_rows(w_prev, w_hat, self.eps) if x is None else x   # [B, 3, d]
        if self.kind == "no-cnn":
            s = F.silu(F.linear(x.flatten(1), self.fc1.weight * a, self.fc1.bias * a))
            return F.linear(s, self.fc2.weight / a, self.fc2.bias)
        s1 = F.silu(torch.einsum("ck,bkd->bcd", self.conv1.weight[:, 0, :, 0] * a, x)
                    + (self.conv1.bias * a)[None, :, None])             # [B, C1, d]
        # z2 = W2·g(z1) + b2, so a·z2 = W2·s1 + a·b2
        s2 = F.silu(torch.einsum("oc,bcd->bod", self.conv2.weight[:, :, 0, 0], s1)
                    + (self.conv2.bias * a)[None, :, None])             # [B, C2, d]
        if self.kind == "no-fc":
            return torch.einsum("oc,bcd->bod", self.conv3.weight[:, :, 0, 0] / a, s2)[:, 0] + self.conv3.bias
        s3 = F.silu(F.linear(s2.flatten(1), self.fc1.weight, self.fc1.bias * a))
        return F.linear(s3, self.fc2.weight / a, self.fc2.bias)

    def forward_reference(self, w_prev: torch.Tensor, w_hat: torch.Tensor) -> torch.Tensor:
        """The formula of the module doc, term by term (the slow twin of ``forward``, fp32)."""
        out = self._reference_net(w_prev, w_hat)
        if self.residual:
            out = stacked_rows(w_prev, w_hat, self.eps)[:, 1] + out
        if self.keep_scale:
            out = out / (torch.linalg.vector_norm(out, dim=-1, keepdim=True) + self.eps) \
                * torch.linalg.vector_norm(w_hat, dim=-1, keepdim=True)
        return out

    def _reference_net(self, w_prev: torch.Tensor, w_hat: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return self.alpha * w_prev + (1.0 - self.alpha) * w_hat
        if self.kind == "mlp":
            return self.fc2(gelu_sigmoid(self.fc1(torch.cat([w_prev, w_hat], dim=-1))))
        x = stacked_rows(w_prev, w_hat, self.eps)                       # [B, 3, d]
        if self.kind == "no-cnn":
            return self.fc2(gelu_sigmoid(self.fc1(x.flatten(1))))
        h1 = gelu_sigmoid(torch.einsum("ck,bkd->bcd", self.conv1.weight[:, 0, :, 0], x)
                          + self.conv1.bias[None, :, None])             # [B, C1, d]
        h2 = torch.einsum("oc,bcd->bod", self.conv2.weight[:, :, 0, 0], h1) \
            + self.conv2.bias[None, :, None]                            # [B, C2, d]
        if self.kind == "no-fc":
            return torch.einsum("oc,bcd->bod", self.conv3.weight[:, :, 0, 0], gelu_sigmoid(h2))[:, 0] \
                + self.conv3.bias
        return self.fc2(gelu_sigmoid(self.fc1(gelu_sigmoid(h2).flatten(1))))

    @torch.no_grad()
    def transform_table(self, w_prev: torch.Tensor, w_hat: torch.Tensor, batch_size: int = 8192,
                        out: torch.Tensor | None = None) -> torch.Tensor:
        """f applied to every row of two whole tables, in batches, into ``out`` (new if None).

        ``out`` may be ``w_hat`` itself: each batch is read whole before its rows are written, so
        the table is transformed in place without a second table in memory."""
        out = torch.empty_like(w_prev) if out is None else out
        for lo in range(0, w_prev.shape[0], batch_size):
            out[lo: lo + batch_size] = self(w_prev[lo: lo + batch_size], w_hat[lo: lo + batch_size])
        return out
