"""The one minibatch training loop every strategy uses.

Each epoch draws one fresh negative per positive for all rows at once (vectorised), shuffles
the rows, and takes one step on each consecutive slice of the shuffled order. A step is either
autograd + torch optimisers (``train_epochs``) or a fused kernel such as ``FusedMFTrainer.step``
(``run_epochs``). ``run_trainer_epochs`` is the same loop for an MF trainer that takes a whole
epoch's shuffled rows at once (``FusedMFTrainer.train_epoch``: one compiled call per epoch); it
draws the same negatives and order from ``rng``, so both give the same steps.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Protocol, Union

import numpy as np
import torch
import torch.distributed as dist

from . import distributed


class LossParts(NamedTuple):
    """A batch loss with a part summed over the batch's rows (an L2 penalty on the rows a batch
    reads) beside the usual mean; the loss is ``mean + total``. A data-parallel step must weight
    the two differently (the mean by the chunk's share of rows, the sum not at all), so a loss
    with both says which is which."""

    mean: torch.Tensor
    total: torch.Tensor


BatchLoss = Callable[[torch.Tensor, torch.Tensor], Union[torch.Tensor, LossParts]]
"""``batch_loss(rows, negative_items)``: the loss of the given training rows (LongTensors): a mean
over the rows, or ``LossParts`` (mean + sum over the rows)."""

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
        loss = _whole(batch_loss(rows, negatives), 1.0)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        return float(loss.detach())

    return step


def _whole(loss: torch.Tensor | LossParts, share: float) -> torch.Tensor:
    """The loss a chunk holding ``share`` of its batch's rows contributes: mean parts weighted by
    the share (they sum to the batch's mean over the ranks), summed parts as they are."""
    mean, total = loss if isinstance(loss, LossParts) else (loss, None)
    if share != 1.0:          # a whole batch (one process) keeps the loss's own operations
        mean = mean * share
    return mean if total is None else mean + total


def data_parallel_step(batch_loss: BatchLoss, optimizers: list[torch.optim.Optimizer]) -> BatchStep:
    """``autograd_step`` with each batch split across the ranks of torch.distributed.

    ``batch_loss`` must be a mean over the batch's rows (as the pair losses are), or ``LossParts``
    whose other part is a sum over the rows: rank r weights the mean of its chunk of k_r rows by
    k_r / n and adds its rows' sum, so the combined gradients are those of the whole batch's loss.

    Gradients are combined so that every rank's optimisers see one gradient and take the same
    step: dense ones are summed with one ``all_reduce`` (flattened, per dtype); sparse ones (an
    ``nn.Embedding(sparse=True)`` under SparseAdam) are coalesced per rank, their (row, value)
    pairs all-gathered in rank order and coalesced again, so each touched row gets the sum of its
    chunks' rows (the single-process gradient up to the order of that float32 sum). A parameter
    is stepped only when some rank gave it a gradient, as in a single process.

    Random draws made while computing a chunk (dropout masks) go through ``distributed.batch_rand``,
    which draws the whole batch's values on every rank and keeps the chunk's rows. A batch too
    small to give every rank a row is computed whole on every rank (no exchange): a rank without
    rows would skip those draws and its generator would fall out of step.
    """
    params = list({id(p): p for optimizer in optimizers for group in optimizer.param_groups
                   for p in group["params"]}.values())
    whole_batch = autograd_step(batch_loss, optimizers)

    def step(rows: torch.Tensor, negatives: torch.Tensor) -> float:
        rank, size = distributed.world()
        n = rows.shape[0]
        last_lo, last_hi = distributed.chunk_bounds(n, size - 1, size)
        if last_hi == last_lo:
            return whole_batch(rows, negatives)
        lo, hi = distributed.chunk_bounds(n, rank, size)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        with distributed.computing_chunk(distributed.BatchChunk(n, lo, hi)):
            loss = _whole(batch_loss(rows[lo:hi], negatives[lo:hi]), (hi - lo) / n)
        loss.backward()
        # One small exchange first: per parameter, the kind of gradient this rank holds (0 none,
        # 1 dense, 2 sparse) and its number of sparse rows; and this rank's loss.
        grads = [None if p.grad is None else p.grad.coalesce() if p.grad.is_sparse else p.grad for p in params]
        kinds = [0.0 if g is None else 2.0 if g.is_sparse else 1.0 for g in grads]
        counts = [float(g.indices().shape[1]) if g is not None and g.is_sparse else 0.0 for g in grads]
        summary = torch.tensor([*kinds, *counts, float(loss.detach())], dtype=torch.float64, device=rows.device)
        summaries = [torch.empty_like(summary) for _ in range(size)]
        dist.all_gather(summaries, summary)
        table = torch.stack(summaries).cpu()          # [ranks, 2P + 1]
        n_params = len(params)
        dense_somewhere = (table[:, :n_params] == 1).any(0).tolist()
        sparse_somewhere = (table[:, :n_params] == 2).any(0).tolist()
        if any(d and s for d, s in zip(dense_somewhere, sparse_somewhere)):
            raise ValueError("a parameter has a dense gradient on one rank and a sparse one on another")
        _all_reduce_dense([p for p, d in zip(params, dense_somewhere) if d])
        for k, (p, g) in enumerate(zip(params, grads)):
            if sparse_somewhere[k]:
                p.grad = _gathered_sparse(p, g, table[:, n_params + k].long().tolist())
        for optimizer in optimizers:
            optimizer.step()
        return float(table[:, -1].sum())

    return step


def _all_reduce_dense(params: list[torch.nn.Parameter]) -> None:
    """Sum the ranks' dense gradients of ``params`` (zeros where a rank has none): one
    ``all_reduce`` per dtype over the flattened gradients, not one per parameter, since each
    collective costs a round trip."""
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in params:
        by_dtype.setdefault(p.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in group])
        dist.all_reduce(flat)
        offset = 0
        for p in group:
            p.grad = flat[offset: offset + p.numel()].view_as(p)
            offset += p.numel()


def _gathered_sparse(param: torch.nn.Parameter, local: torch.Tensor | None, counts: list[int]) -> torch.Tensor:
    """The batch's sparse row gradient of ``param`` from every rank's coalesced rows (``counts[r]``
    rows on rank r): rows and values all-gathered in rank order, then coalesced, which adds the
    chunks' contributions to a row that several chunks touched."""
    if local is None:
        local = torch.sparse_coo_tensor(torch.zeros((1, 0), dtype=torch.int64, device=param.device),
                                        param.new_zeros((0, *param.shape[1:])), param.shape,
                                        check_invariants=False)
    if local.sparse_dim() != 1:
        raise ValueError("data-parallel sparse gradients must be row gradients (one sparse dimension)")
    indices = distributed.gather_slices(local.indices()[0], counts)
    values = distributed.gather_slices(local.values(), counts)
    # The rows come from coalesced gradients of this very table: valid indices, nothing to check.
    return torch.sparse_coo_tensor(indices[None, :], values, param.shape, check_invariants=False).coalesce()


def train_epochs(batch_loss: BatchLoss, optimizers: list[torch.optim.Optimizer], n_rows: int,
                 sample_negatives: Callable[[np.random.Generator], np.ndarray], epochs: int,
                 batch_size: int, rng: np.random.Generator,
                 device: str | torch.device = "cpu", data_parallel: bool = False) -> list[float]:
    """``run_epochs`` with autograd steps of ``batch_loss`` on ``optimizers``.

    ``data_parallel``: under torch.distributed with several ranks, split every batch across them
    (``data_parallel_step``: ``batch_loss`` a mean over rows, or ``LossParts``; dense gradients
    all-reduced, sparse row gradients gathered); otherwise every rank computes the whole batch
    (replicated)."""
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
