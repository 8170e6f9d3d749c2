"""Growing embedding tables for new users and items (the production loop), and their initial rows.

Row initialisation is *counter-based*: row ``r`` of table ``"user"`` (or ``"item"``) is drawn
N(0, init_std^2) from a random stream named by ``(seed, "mf-init", table, r // ROW_BLOCK)``, so the
value of a row depends only on the seed, the table and the row's index, never on how many rows the
table had when it was made. Consequences:

* a table grown from ``n`` to ``m`` rows gets exactly the rows a table made with ``m`` rows from
  the start would have had (this is what makes a production update equal to a replay step:
  the replay sizes its tables for every id of the whole log up front);
* MF pretraining (strategies/pretrain.py) initialises its tables the same way.

Growing an ``nn.Embedding`` keeps the same ``Parameter`` object (its data is replaced by a longer
tensor), so optimisers holding it stay valid; their per-row state (Adam / SparseAdam
``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``) is padded with zeros, exactly the state an
optimiser holds for a row that has never had a gradient. Scalar state (``step``) is kept.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn

from ..random import make_rng

ROW_BLOCK = 1024
"""Rows drawn per random stream; a constant of the format (changing it changes every init)."""


def init_rows(seed: int, table: str, start: int, stop: int, dim: int, init_std: float,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Initial values of rows ``start..stop-1`` of ``table``: N(0, init_std^2), counter-based."""
    if not 0 <= start <= stop:
        raise ValueError(f"rows {start}..{stop}: expected 0 <= start <= stop")
    out = np.empty((stop - start, dim), dtype=np.float32)
    first_block, last_block = start // ROW_BLOCK, (stop - 1) // ROW_BLOCK
    for block in range(first_block, last_block + 1) if stop > start else ():
        values = make_rng(seed, "mf-init", table, block).standard_normal((ROW_BLOCK, dim), dtype=np.float32)
        lo, hi = max(start, block * ROW_BLOCK), min(stop, (block + 1) * ROW_BLOCK)
        out[lo - start: hi - start] = values[lo - block * ROW_BLOCK: hi - block * ROW_BLOCK]
    return torch.from_numpy(out * np.float32(init_std)).to(dtype)


def grow_embedding(embedding: nn.Embedding, new_rows: torch.Tensor,
                   optimizers: Iterable[torch.optim.Optimizer] = ()) -> None:
    """Append ``new_rows`` to ``embedding`` in place and pad the optimisers' row state with zeros.

    The ``Parameter`` object is kept, so every optimiser that holds it still updates it.
    """
    weight = embedding.weight
    old_shape = tuple(weight.shape)
    if new_rows.dim() != 2 or new_rows.shape[1] != old_shape[1]:
        raise ValueError(f"new rows of shape {tuple(new_rows.shape)} do not fit a table of shape {old_shape}")
    if new_rows.shape[0] == 0:
        return
    with torch.no_grad():
        weight.data = torch.cat([weight.data, new_rows.to(weight.device, weight.dtype)])
    embedding.num_embeddings = int(weight.shape[0])
    for optimizer in optimizers:
        state = optimizer.state.get(weight)
        if not state:
            continue
        for key, value in state.items():
            if torch.is_tensor(value) and tuple(value.shape) == old_shape:
                pad = torch.zeros((new_rows.shape[0], *old_shape[1:]), dtype=value.dtype, device=value.device)
                state[key] = torch.cat([value, pad])
