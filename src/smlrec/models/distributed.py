"""Data-parallel MF steps on ``torch.distributed``: the tables are replicated, touched rows exchanged;
and the small collectives the split scoring (evaluation/split.py) and the registry updates
(production/update.py) use.

Launched by ``torchrun --nproc-per-node N -m smlrec replay ...`` (gloo on the CPU, NCCL on a GPU),
every rank holds the whole model and draws the same negatives and the same shuffled order (the
same seeded streams). A step of global batch B (the configured ``batch_size``) is cut into N
consecutive chunks of ceil(B / N) rows; rank r computes the row gradients of chunk r, and an
``all_gather`` gives every rank the (row index, gradient row) pairs of the whole batch in the
single-process order. Each rank then applies the same lazy-Adam update, so the tables stay
identical, and the step equals a single-process step of batch B on the same rows: the gradient
rows come from the same element-wise operations and are summed per row in the same order, up to
the last bit of float32 (torch's vectorised sigmoid / softplus take a SIMD or a scalar path by
slice length; tests/test_distributed.py measures and bounds it). docs/scaling.md gives the bytes
exchanged and the memory per rank.

Autograd steps (SML, GRU4Rec, Caser) split their batches the same way through
``train_loop.data_parallel_step``, which uses ``gather_slices`` for sparse row gradients and
``batch_rand`` for dropout masks drawn inside a chunk.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Iterator, NamedTuple

import numpy as np
import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, number of ranks) of the data-parallel group; (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_leader() -> bool:
    """True on rank 0 (and in a single process): the one that writes results."""
    return world()[0] == 0


def init_from_environment(device: str = "cpu") -> bool:
    """Join the process group ``torchrun`` describes (WORLD_SIZE > 1 in the environment); gloo
    on the CPU, NCCL on CUDA. Returns whether this process is distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    global _joined_here
    dist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo")
    _joined_here = True
    global _ever_joined
    _ever_joined = True
    return True


_ever_joined = False


def joined_a_group() -> bool:
    """Whether this process joined a process group through ``init_from_environment`` (left or not)."""
    return _ever_joined


_joined_here = False


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if world()[1] > 1:
        dist.barrier()


def leave() -> None:
    """Leave the process group ``init_from_environment`` joined (one a caller made is left alone)."""
    global _joined_here
    if _joined_here and dist.is_initialized():
        dist.barrier()   # destroying a gloo group while a peer still talks to it can abort
        dist.destroy_process_group()
    _joined_here = False


def local_ranks() -> int:
    """Processes of this job on this machine (torchrun's LOCAL_WORLD_SIZE), for sharing its cores."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def chunk_bounds(n_rows: int, rank: int, size: int) -> tuple[int, int]:
    """The [lo, hi) rows of a batch of ``n_rows`` that ``rank`` of ``size`` computes."""
    chunk = -(-n_rows // size)
    lo = min(n_rows, rank * chunk)
    return lo, min(n_rows, lo + chunk)


def gather_rows(indices: torch.Tensor, grads: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's ``indices`` [G, k] and ``grads`` [G, k, d] (G groups of rows, k = this rank's
    chunk of a batch of ``n_rows``), as [G, n_rows] and [G, n_rows, d] in rank order
    (``gather_slices`` along the chunk dimension; every rank knows every chunk's length)."""
    size = world()[1]
    lengths = [hi - lo for lo, hi in (chunk_bounds(n_rows, r, size) for r in range(size))]
    return (gather_slices(indices.transpose(0, 1).contiguous(), lengths).transpose(0, 1),
            gather_slices(grads.transpose(0, 1).contiguous(), lengths).transpose(0, 1))


def sum_over_ranks(value: float, device: str | torch.device = "cpu") -> float:
    """The sum of ``value`` over the ranks (the loss of a batch split across them); ``device``:
    where the group's tensors live (NCCL needs them on the GPU)."""
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total.item())


def share(message: object, device: str | torch.device = "cpu") -> object:
    """Rank 0's ``message`` (a small picklable value) on every rank; the message itself in a single
    process. Rank 0 decides what only one process may decide (take the registry lock, refuse a
    batch) and the others follow it."""
    if world()[1] == 1:
        return message
    box = [message]
    dist.broadcast_object_list(box, src=0, device=_object_device(device))
    return box[0]


def same_everywhere(value: object, device: str | torch.device = "cpu") -> bool:
    """Whether every rank holds an equal ``value`` (e.g. a digest of its model); True in a single
    process. Every rank gets the same answer."""
    size = world()[1]
    if size == 1:
        return True
    values: list[object] = [None] * size
    dist.all_gather_object(values, value)
    return all(v == values[0] for v in values)


def _object_device(device: str | torch.device) -> torch.device | None:
    # The object collectives pickle into a tensor that NCCL needs on this rank's GPU.
    device = torch.device(device)
    return torch.device("cuda", torch.cuda.current_device()) if device.type == "cuda" else None


def gather_slices(local: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Every rank's slice of a tensor (rank r holds ``lengths[r]`` leading rows), concatenated in
    rank order, on every rank.

    ``all_gather`` needs equal shapes: the caller knows every slice's length (from the period, or
    from a gathered count), so slices are padded to the longest and the padding dropped after.
    """
    rank, size = world()
    if local.shape[0] != lengths[rank]:
        raise ValueError(f"rank {rank} holds {local.shape[0]} rows, its slice has {lengths[rank]}")
    longest = max(lengths)
    if longest == 0:      # nothing to exchange (every rank knows it): gloo refuses empty tensors
        return local
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:length] for part, length in zip(parts, lengths)])


def gather_row_slices(local: np.ndarray, lengths: list[int], device: str | torch.device = "cpu") -> np.ndarray:
    """``gather_slices`` for a per-row numpy array (the split scoring's outcomes)."""
    local = np.ascontiguousarray(local)
    gathered = gather_slices(torch.from_numpy(local).to(device), lengths)
    return gathered.cpu().numpy()


class BatchChunk(NamedTuple):
    """The rows [lo, hi) of a batch of ``rows`` that this rank computes in a data-parallel step."""

    rows: int
    lo: int
    hi: int


_chunk: contextvars.ContextVar[BatchChunk | None] = contextvars.ContextVar("smlrec_batch_chunk", default=None)


@contextlib.contextmanager
def computing_chunk(chunk: BatchChunk) -> Iterator[None]:
    """While a data-parallel step computes this rank's chunk of a batch (``batch_rand`` reads it)."""
    token = _chunk.set(chunk)
    try:
        yield
    finally:
        _chunk.reset(token)


def batch_rand(shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None,
               device: str | torch.device) -> torch.Tensor:
    """Uniform draws for a tensor whose first dimension is the batch's rows (a dropout mask).

    Inside a data-parallel step every rank draws the whole batch's values, as one process would
    (so the seeded generator advances alike on every rank and the run stays reproducible), and
    keeps its chunk's rows: rank r's mask rows are the single process's rows lo..hi-1.
    """
    chunk = _chunk.get()
    if chunk is None:
        return torch.rand(shape, generator=generator, device=device)
    if shape[0] != chunk.hi - chunk.lo:
        raise ValueError(f"batch_rand: a tensor of {shape[0]} rows inside a chunk of {chunk.hi - chunk.lo} "
                         "batch rows (the first dimension must be the batch's rows)")
    whole = torch.rand((chunk.rows, *shape[1:]), generator=generator, device=device)
    return whole[chunk.lo: chunk.hi]
