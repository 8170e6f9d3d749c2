"""The one minibatch training loop every strategy uses.

Each epoch draws one fresh negative per positive for all rows at once (vectorised), shuffles
the rows, and takes one step on each consecutive slice of the shuffled order. A step is either
autograd + torch optimisers (``train_epochs``) or a fused kernel such as ``FusedMFTrainer.step``
(``run_epochs``). ``run_trainer_epochs`` is the same loop for an MF trainer that takes a whole
epoch's shuffled rows at once (``FusedMFTrainer.train_epoch``: one compiled call per epoch); it
draws the same negatives and order from ``rng``, so both give the same steps.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np
import torch
import torch.distributed as dist

from . import distributed

BatchLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``batch_loss(rows, negative_items)``: the loss of the given training rows (LongTensors)."""

BatchStep = Callable[[torch.Tensor, torch.Tensor], float]
"""``step(rows, negative_items)``: one optimisation step; returns the batch loss."""


def run_epochs(step: BatchStep, n_rows: int, sample_negatives: Callable[[np.random.Generator], np.ndarray],
               epochs: int, batch_size: int, rng: np.random.Generator,
               device: str | torch.device = "cpu") -> list[float]:
    """Run ``epochs`` passes over ``n_rows`` training rows; returns the mean loss of each epoch."""
    losses = []
    for _ in range(epochs):
        negatives = torch.from_numpy(np.asarray(sample_negatives(rng), dtype=np.int64)).to(device)
        order = torch.from_numpy(rng.permutation(n_rows)).to(device)
        total, batches = 0.0, 0
        for lo in range(0, n_rows, batch_size):
            rows = order[lo: lo + batch_size]
            total += step(rows, negatives[rows])
            batches += 1
        losses.append(total / max(batches, 1))
    return losses


class EpochTrainer(Protocol):
    def train_epoch(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                    batch_size: int) -> list[float]: ...


def run_trainer_epochs(trainer: EpochTrainer, users: torch.Tensor, items: torch.Tensor,
                       sample_negatives: Callable[[np.random.Generator], np.ndarray], epochs: int,
                       batch_size: int, rng: np.random.Generator,
                       device: str | torch.device = "cpu") -> list[float]:
    """``run_epochs`` with ``trainer.step(users[rows], items[rows], negatives)`` as the step, one
    ``train_epoch`` call per epoch: the same draws from ``rng`` in the same order (negatives, then
    the permutation), the same batches; returns the mean batch loss of each epoch."""
    losses = []
    n_rows = int(users.shape[0])
    for _ in range(epochs):
        negatives = torch.from_numpy(np.asarray(sample_negatives(rng), dtype=np.int64)).to(device)
        order = torch.from_numpy(rng.permutation(n_rows)).to(device)
        batch_losses = trainer.train_epoch(users[order], items[order], negatives[order], batch_size)
        losses.append(sum(batch_losses) / max(len(batch_losses), 1))
    return losses


def autograd_step(batch_loss: BatchLoss, optimizers: list[torch.optim.Optimizer]) -> BatchStep:
    """A step that backpropagates ``batch_loss`` and steps every optimiser."""

    def step(rows: torch.Tensor, negatives: torch.Tensor) -> float:
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss = batch_loss(rows, negatives)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        return float(loss.detach())

    return step


def data_parallel_step(batch_loss: BatchLoss, optimizers: list[torch.optim.Optimizer]) -> BatchStep:
    """``autograd_step`` with each batch split across the ranks of torch.distributed.

    ``batch_loss`` must be a mean over the batch's rows (as the pair losses are): rank r takes
    the loss of its chunk of k_r rows weighted by k_r / n, so the all-reduced (summed) gradients
    are those of the whole batch's mean, and every rank's optimiser takes the same step. A
    parameter is stepped only when some rank gave it a gradient, as in a single process.
    """
    params = list({id(p): p for optimizer in optimizers for group in optimizer.param_groups
                   for p in group["params"]}.values())

    def step(rows: torch.Tensor, negatives: torch.Tensor) -> float:
        rank, size = distributed.world()
        n = rows.shape[0]
        lo, hi = distributed.chunk_bounds(n, rank, size)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss_value = 0.0
        if hi > lo:
            loss = batch_loss(rows[lo:hi], negatives[lo:hi]) * ((hi - lo) / n)
            loss.backward()
            loss_value = float(loss.detach())
        device = rows.device
        has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
        dist.all_reduce(has_grad)
        for p, anyone in zip(params, has_grad.tolist()):
            if not anyone:
                continue
            grad = torch.zeros_like(p) if p.grad is None else p.grad
            if grad.is_sparse:
                raise ValueError("a data-parallel autograd step needs dense gradients (sparse "
                                 "embeddings exchange rows: see FusedMFTrainer)")
            dist.all_reduce(grad)
            p.grad = grad
        for optimizer in optimizers:
            optimizer.step()
        return distributed.sum_over_ranks(loss_value, device)

    return step


def train_epochs(batch_loss: BatchLoss, optimizers: list[torch.optim.Optimizer], n_rows: int,
                 sample_negatives: Callable[[np.random.Generator], np.ndarray], epochs: int,
                 batch_size: int, rng: np.random.Generator,
                 device: str | torch.device = "cpu", data_parallel: bool = False) -> list[float]:
    """``run_epochs`` with autograd steps of ``batch_loss`` on ``optimizers``.

    ``data_parallel``: under torch.distributed with several ranks, split every batch across them
    (``data_parallel_step``; ``batch_loss`` must be a mean over rows and its optimisers dense);
    otherwise every rank computes the whole batch (replicated)."""
    data_parallel = data_parallel and distributed.world()[1] > 1
    step = (data_parallel_step if data_parallel else autograd_step)(batch_loss, optimizers)
    return run_epochs(step, n_rows, sample_negatives, epochs, batch_size, rng, device)


def make_optimizer(module: torch.nn.Module, lr: float, sparse: bool) -> torch.optim.Optimizer:
    """Adam for a module's parameters; the lazy (row-wise) SparseAdam when gradients are sparse."""
    params = [p for p in module.parameters() if p.requires_grad]
    if sparse:
        return torch.optim.SparseAdam(params, lr=lr)
    return torch.optim.Adam(params, lr=lr)


def steps_over_slices(step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], float], users: torch.Tensor,
                      positives: torch.Tensor, negatives: torch.Tensor, batch_size: int) -> list[float]:
    """One ``step`` on each consecutive slice of ``batch_size`` rows (an epoch of an autograd
    trainer, in row order); returns the batch losses."""
    return [step(users[lo: lo + batch_size], positives[lo: lo + batch_size], negatives[lo: lo + batch_size])
            for lo in range(0, users.shape[0], batch_size)]
