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


def train_epochs(batch_loss: BatchLoss, optimizers: list[torch.optim.Optimizer], n_rows: int,
                 sample_negatives: Callable[[np.random.Generator], np.ndarray], epochs: int,
                 batch_size: int, rng: np.random.Generator,
                 device: str | torch.device = "cpu") -> list[float]:
    """``run_epochs`` with autograd steps of ``batch_loss`` on ``optimizers``."""
    return run_epochs(autograd_step(batch_loss, optimizers), n_rows, sample_negatives, epochs,
                      batch_size, rng, device)


def make_optimizer(module: torch.nn.Module, lr: float, sparse: bool) -> torch.optim.Optimizer:
    """Adam for a module's parameters; the lazy (row-wise) SparseAdam when gradients are sparse."""
    params = [p for p in module.parameters() if p.requires_grad]
    if sparse:
        return torch.optim.SparseAdam(params, lr=lr)
    return torch.optim.Adam(params, lr=lr)
