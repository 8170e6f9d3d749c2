"""A fused MF training step: BCE gradients by hand and lazy (row-wise) Adam, without autograd.

For a batch of B triples (u, i, j) with s⁺ = <p_u, q_i>, s⁻ = <p_u, q_j>:

    L       = mean softplus(-s⁺) + mean softplus(s⁻)
    ∂L/∂s⁺  = -σ(-s⁺) / B          ∂L/∂s⁻ = σ(s⁻) / B
    ∇p_u    = ∂L/∂s⁺ · q_i + ∂L/∂s⁻ · q_j
    ∇q_i    = ∂L/∂s⁺ · p_u         ∇q_j   = ∂L/∂s⁻ · p_u

Gradients are summed per distinct row, then Adam updates only those rows (moments of other rows
do not move), with the bias correction of a global step count: exactly ``torch.optim.SparseAdam``
on autograd's sparse gradients (``tests/test_fused_mf.py`` checks it against that slow twin), at a
fraction of the per-batch overhead.

Two kernels run the same steps: ``"torch"`` (``step``, one batch per call: ~15 small torch ops,
~140k triples/s on 2 cores) and ``"numba"`` (``train_epoch``: every batch of an epoch in one compiled
call, models/mf_kernels.py). ``train_epoch`` with the torch kernel is the slow twin the tests
compare the compiled one with, batch by batch on the same rows and negatives.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed, mf_kernels
from .distributed import chunk_bounds
from .mf import MF
from .train_loop import steps_over_slices

KERNELS = ("auto", "numba", "torch")


def resolve_kernel(kernel: str, device: str | torch.device) -> str:
    """``"auto"``: numba on the CPU when it is installed, else torch (also on a GPU)."""
    if kernel not in KERNELS:
        raise ValueError(f"MF kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    on_cpu = torch.device(device).type == "cpu"
    if kernel == "auto":
        return "numba" if mf_kernels.AVAILABLE and on_cpu else "torch"
    if kernel == "numba" and not (mf_kernels.AVAILABLE and on_cpu):
        raise ValueError("mf.kernel = 'numba' needs numba installed and the model on the CPU")
    return kernel


class FusedMFTrainer:
    """Trains an :class:`MF` in place with fused BCE steps and lazy Adam."""

    def __init__(self, model: MF, lr: float = 0.01, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, kernel: str = "auto") -> None:
        self.model = model
        self.kernel = resolve_kernel(kernel, model.user.weight.device)
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.steps = 0
        self.user_m = torch.zeros_like(model.user.weight)
        self.user_v = torch.zeros_like(model.user.weight)
        self.item_m = torch.zeros_like(model.item.weight)
        self.item_v = torch.zeros_like(model.item.weight)
        self._slots: tuple[np.ndarray, np.ndarray] | None = None

    @torch.no_grad()
    def step(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> float:
        loss_sum, user_grads, positive_grads, negative_grads = self._row_gradients(
            users, positives, negatives, users.shape[0])
        self._apply(users, positives, negatives, user_grads, positive_grads, negative_grads)
        return float(loss_sum / users.shape[0])

    def _row_gradients(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                       n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The summed loss and the gradient rows of p_u, q_i, q_j of a batch of ``n`` rows (of which
        these are some: a data-parallel rank computes its chunk of the batch)."""
        P = self.model.user.weight
        Q = self.model.item.weight
        p = P.index_select(0, users)
        q_pos = Q.index_select(0, positives)
        q_neg = Q.index_select(0, negatives)
        s_pos = (p * q_pos).sum(-1)
        s_neg = (p * q_neg).sum(-1)
        loss_sum = F.softplus(-s_pos).sum() + F.softplus(s_neg).sum()
        d_pos = (-torch.sigmoid(-s_pos) / n).unsqueeze(1)
        d_neg = (torch.sigmoid(s_neg) / n).unsqueeze(1)
        return loss_sum, d_pos * q_pos + d_neg * q_neg, d_pos * p, d_neg * p

    def _apply(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
               user_grads: torch.Tensor, positive_grads: torch.Tensor, negative_grads: torch.Tensor) -> None:
        """One lazy-Adam step on the rows of a batch given its gradient rows."""
        self.steps += 1
        self._adam_rows(self.model.user.weight, self.user_m, self.user_v, users, user_grads)
        self._adam_rows(self.model.item.weight, self.item_m, self.item_v, torch.cat([positives, negatives]),
                        torch.cat([positive_grads, negative_grads]))

    @torch.no_grad()
    def _data_parallel_epoch(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                             batch_size: int) -> list[float]:
        """``train_epoch`` split across the ranks of torch.distributed (models/distributed.py):
        each rank computes its chunk of every batch, the (row, gradient) pairs are all-gathered,
        and every rank applies the whole batch's update."""
        rank, size = distributed.world()
        losses = []
        for start in range(0, users.shape[0], batch_size):
            n = min(batch_size, users.shape[0] - start)
            lo, hi = chunk_bounds(n, rank, size)
            mine = slice(start + lo, start + hi)
            loss_sum, *grads = self._row_gradients(users[mine], positives[mine], negatives[mine], n)
            indices, grads = distributed.gather_rows(
                torch.stack([users[mine], positives[mine], negatives[mine]]), torch.stack(grads), n)
            self._apply(*indices, *grads)
            losses.append(distributed.sum_over_ranks(float(loss_sum), users.device) / n)
        return losses

    def train_epoch(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                    batch_size: int) -> list[float]:
        """One ``step`` on each consecutive slice of ``batch_size`` rows; returns the batch losses.

        Under torch.distributed with several ranks, the slices are split across the ranks with
        the torch kernel (the numba kernel cannot exchange gradients in the middle of an epoch)."""
        if distributed.world()[1] > 1:
            return self._data_parallel_epoch(users, positives, negatives, batch_size)
        if self.kernel == "torch":
            return [self.step(users[lo: lo + batch_size], positives[lo: lo + batch_size],
                              negatives[lo: lo + batch_size])
                    for lo in range(0, users.shape[0], batch_size)]
        n = int(users.shape[0])
        losses = np.zeros(-(-n // batch_size), dtype=np.float64)
        P = _numpy_view(self.model.user.weight)
        Q = _numpy_view(self.model.item.weight)
        moments = [_numpy_view(t) for t in (self.user_m, self.user_v, self.item_m, self.item_v)]
        # Scratch maps from a table row to its slot in the batch; the kernel leaves them all -1.
        if self._slots is None or self._slots[0].shape[0] != P.shape[0] or self._slots[1].shape[0] != Q.shape[0]:
            self._slots = (np.full(P.shape[0], -1, dtype=np.int32), np.full(Q.shape[0], -1, dtype=np.int32))
        batches = mf_kernels.train_rows(
            P, Q, *moments, _index_array(users), _index_array(positives), _index_array(negatives),
            batch_size, self.steps + 1, float(self.lr), float(self.betas[0]), float(self.betas[1]),
            float(self.eps), self._slots[0], self._slots[1], losses)
        self.steps += int(batches)
        return losses.tolist()

    def _adam_rows(self, table: torch.Tensor, m: torch.Tensor, v: torch.Tensor, rows: torch.Tensor,
                   grads: torch.Tensor) -> None:
        unique, inverse = torch.unique(rows, return_inverse=True)
        g = torch.zeros(unique.shape[0], table.shape[1], dtype=grads.dtype, device=grads.device)
        g.index_add_(0, inverse, grads)
        beta1, beta2 = self.betas
        m_rows = m.index_select(0, unique).mul_(beta1).add_(g, alpha=1 - beta1)
        v_rows = v.index_select(0, unique).mul_(beta2).addcmul_(g, g, value=1 - beta2)
        m.index_copy_(0, unique, m_rows)
        v.index_copy_(0, unique, v_rows)
        bias1 = 1 - beta1 ** self.steps
        bias2 = 1 - beta2 ** self.steps
        step_size = self.lr * math.sqrt(bias2) / bias1
        table.index_add_(0, unique, m_rows.div_(v_rows.sqrt_().add_(self.eps)), alpha=-step_size)

    def grow(self, n_users: int, n_items: int) -> None:
        """Zero moments for rows added to the model's tables."""
        self.user_m = _pad_rows(self.user_m, n_users)
        self.user_v = _pad_rows(self.user_v, n_users)
        self.item_m = _pad_rows(self.item_m, n_items)
        self.item_v = _pad_rows(self.item_v, n_items)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "user_m": self.user_m.clone(), "user_v": self.user_v.clone(),
                "item_m": self.item_m.clone(), "item_v": self.item_v.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        for name in ("user_m", "user_v", "item_m", "item_v"):
            current = getattr(self, name)
            value = torch.as_tensor(state[name]).to(current.device, current.dtype)
            if value.shape != current.shape:
                raise ValueError(f"{name}: shape {tuple(value.shape)} does not fit {tuple(current.shape)}")
            setattr(self, name, value.clone())


def _numpy_view(table: torch.Tensor) -> np.ndarray:
    """A numpy array sharing ``table``'s memory (so the kernel's in-place updates are the model's)."""
    if table.dtype != torch.float32 or not table.is_contiguous():
        raise ValueError("the numba MF kernel needs contiguous float32 tables")
    return table.detach().numpy()


def _index_array(index: torch.Tensor | np.ndarray) -> np.ndarray:
    array = index.numpy() if isinstance(index, torch.Tensor) else index
    return np.ascontiguousarray(array, dtype=np.int64)


def _pad_rows(table: torch.Tensor, n_rows: int) -> torch.Tensor:
    if n_rows <= table.shape[0]:
        return table
    extra = torch.zeros(n_rows - table.shape[0], table.shape[1], dtype=table.dtype, device=table.device)
    return torch.cat([table, extra])


class DenseMFTrainer:
    """The same interface with autograd and dense ``torch.optim.Adam`` (moments of every row move)."""

    def __init__(self, model: MF, lr: float = 0.01) -> None:
        self.model = model
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def step(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> float:
        from .losses import bce_pair_loss

        self.optimizer.zero_grad(set_to_none=True)
        loss = bce_pair_loss(self.model.score(users, positives), self.model.score(users, negatives))
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def train_epoch(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                    batch_size: int) -> list[float]:
        """One ``step`` on each consecutive slice of ``batch_size`` rows; returns the batch losses."""
        return steps_over_slices(self.step, users, positives, negatives, batch_size)

    def grow(self, n_users: int, n_items: int) -> None:
        for param, n_rows in ((self.model.user.weight, n_users), (self.model.item.weight, n_items)):
            state = self.optimizer.state.get(param)
            if state:
                for key in ("exp_avg", "exp_avg_sq"):
                    state[key] = _pad_rows(state[key], n_rows)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)


def make_mf_trainer(model: MF, lr: float, sparse: bool,
                    kernel: str = "auto") -> FusedMFTrainer | DenseMFTrainer:
    """The lazy fused trainer for sparse (row-wise) updates (``kernel``: see ``resolve_kernel``),
    else dense autograd Adam."""
    return FusedMFTrainer(model, lr, kernel=kernel) if sparse else DenseMFTrainer(model, lr)
