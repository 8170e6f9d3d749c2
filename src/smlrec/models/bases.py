"""Base models: the tables a strategy keeps, and how they score (``--base mf|lightgcn|ncf``).

Every base is an ``nn.Module`` with the same small interface, so the strategies (Full-retrain,
Fine-tune, SPMF, SML, ASMG) never ask which base they hold:

* ``user``, ``item``: ``nn.Embedding`` layer-0 tables. These are what strategies warm-start, carry,
  transfer (SML), generate (ASMG), grow for new ids and apply their cold-start rules to.
* ``dense_parameters()``: every other weight (NCF's MLP; none for MF and LightGCN), by name.
* ``set_graph(users, items)``: the training data the strategy holds (LightGCN's graph; a no-op for
  bases without one). ``propagates`` says whether a row's final embedding depends on other rows.
* ``encode(user_table, item_table)``: final embeddings from layer-0 tables (identity except
  LightGCN); ``isolated(rows)``: the final embedding of rows with no edges.
* ``pair_scores(u, i, dense)`` -> ``[B]`` and ``candidate_scores(u, item_table, candidates, dense)``
  -> ``[B, C]`` from final embeddings; ``dense`` (a name -> tensor mapping) replaces the module's
  own dense weights (ASMG scores a generated model with them).
* ``pair_loss(pos, neg)``: BCE with one negative (every base's default) or BPR.
* ``train_loss(users, positives, negatives)`` on the module's own tables, for the trainer.

MF (models/mf.py) implements the interface with its original arithmetic, so ``--base mf`` gives
bit-identical results to the code before bases existed (its fused lazy-Adam trainer stays).
LightGCN and NCF train with autograd (:class:`BaseTrainer`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import BaseSettings, MFSettings
from ..random import make_torch_generator
from .fused_mf import make_mf_trainer
from .growth import init_rows
from .losses import bce_pair_loss, bpr_loss
from .mf import MF
from .train_loop import steps_over_slices

LOSSES = {"bce": bce_pair_loss, "bpr": bpr_loss}


class _Base(nn.Module):
    """What LightGCN and NCF share: the training loss on their own tables, and own-table scores."""

    propagates = False
    inner_product = True    # score = <final user row, final item row> (NCF: an MLP instead)
    loss = "bce"

    def pair_loss(self, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        return LOSSES[self.loss](positive, negative)

    def set_graph(self, users: np.ndarray, items: np.ndarray) -> None:
        """Bases without a graph ignore the data the strategy holds."""

    def graph_state(self) -> dict[str, Any]:
        return {}

    def load_graph_state(self, state: Mapping[str, Any]) -> None:
        pass

    def isolated(self, rows: torch.Tensor) -> torch.Tensor:
        return rows

    def graph_for(self, users: np.ndarray, items: np.ndarray) -> Any:
        """A graph of other data than the held one, for ``encode(..., graph)`` (None: no graph)."""
        return None

    def encode(self, user_table: torch.Tensor, item_table: torch.Tensor, graph: Any = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        return user_table, item_table

    def dense_parameters(self) -> dict[str, nn.Parameter]:
        return {name: p for name, p in self.named_parameters() if not name.startswith(("user.", "item."))}

    def batch_vectors(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Final embeddings of a batch's users and items from the module's own tables."""
        if self.propagates:
            user_final, item_final = self.encode(self.user.weight, self.item.weight)
            return user_final[users], item_final[items]
        return self.user(users), self.item(items)

    def train_loss(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        u, i = self.batch_vectors(users, torch.cat([positives, negatives]))
        scores = self.pair_scores(u.repeat(2, 1), i)
        n = len(users)
        return self.pair_loss(scores[:n], scores[n:])

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of (user, item) pairs ([B]) or of candidate blocks ([B, C]) on the own tables."""
        user_final, item_final = self.encode(self.user.weight, self.item.weight)
        if items.dim() == users.dim() + 1:
            return self.candidate_scores(user_final[users], item_final, items)
        return self.pair_scores(user_final[users], item_final[items])


# ----------------------------------------------------------------------------------------------
# LightGCN

def normalized_adjacency(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int,
                         device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The user->item block R̃ of D^-1/2 A D^-1/2 (A = [[0, R], [Rᵀ, 0]], R binary: a pair seen
    several times is one edge) as sparse ``[n_users, n_items]``, and its transpose."""
    keys = np.unique(np.asarray(users, np.int64) * n_items + np.asarray(items, np.int64))
    rows, cols = keys // n_items, keys % n_items
    user_degree = np.bincount(rows, minlength=n_users).astype(np.float64)
    item_degree = np.bincount(cols, minlength=n_items).astype(np.float64)
    values = 1.0 / np.sqrt(user_degree[rows] * item_degree[cols]) if len(keys) else np.zeros(0)
    index = torch.from_numpy(np.stack([rows, cols]))
    weights = torch.from_numpy(values.astype(np.float32))
    forward = torch.sparse_coo_tensor(index, weights, (n_users, n_items), check_invariants=False).coalesce().to(device)
    backward = torch.sparse_coo_tensor(index.flip(0), weights, (n_items, n_users),
                                       check_invariants=False).coalesce().to(device)
    return forward, backward


def propagate(user_table: torch.Tensor, item_table: torch.Tensor, forward: torch.Tensor,
              backward: torch.Tensor, layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LightGCN: E^(k+1) = Ã E^(k) (users from items, items from users), final = mean of E^(0..K).

    An id without edges keeps only its layer-0 row: its final embedding is that row / (K+1).
    """
    user_sum, item_sum = user_table, item_table
    users, items = user_table, item_table
    for _ in range(layers):
        users, items = torch.sparse.mm(forward, items), torch.sparse.mm(backward, users)
        user_sum = user_sum + users
        item_sum = item_sum + items
    return user_sum / (layers + 1), item_sum / (layers + 1)


class Graph:
    """The edges of a training set and, built on first use for the tables' sizes, R̃ and R̃ᵀ."""

    def __init__(self, users: np.ndarray, items: np.ndarray) -> None:
        self.users = np.asarray(users, np.int64).copy()
        self.items = np.asarray(items, np.int64).copy()
        self._adjacency: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None

    def adjacency(self, n_users: int, n_items: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (n_users, n_items, str(device))   # rebuilt when the tables grow
        if self._adjacency is None or self._adjacency[0] != key:
            self._adjacency = (key, normalized_adjacency(self.users, self.items, n_users, n_items, device))
        return self._adjacency[1]


class LightGCN(_Base):
    """He et al., SIGIR 2020: MF tables propagated over the symmetric-normalised user-item graph.

    The graph is data the strategy holds (``set_graph``): all data so far for Full-retrain, and
    for Fine-tune (its preset ``graph = "seen"``: every pair seen, edges only; it still trains on
    D_t alone), D_t for SML and ASMG, reservoir ∪ D_t for SPMF. The same graph serves the next
    period, because it is the only data a strategy may use when it serves (a graph of the period
    being scored would use its own interactions). Tables are dense-gradient (propagation
    reads every row), so LightGCN trains with plain Adam whatever ``mf.sparse`` says.
    """

    propagates = True

    def __init__(self, n_users: int, n_items: int, dim: int = 64, init_std: float = 0.1,
                 layers: int = 3, loss: str = "bce") -> None:
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        with torch.no_grad():
            self.user.weight.normal_(0.0, init_std)
            self.item.weight.normal_(0.0, init_std)
        self.layers = layers
        self.loss = loss
        self.graph = Graph(np.zeros(0, np.int64), np.zeros(0, np.int64))

    def set_graph(self, users: np.ndarray, items: np.ndarray) -> None:
        self.graph = Graph(users, items)

    def graph_for(self, users: np.ndarray, items: np.ndarray) -> Graph:
        return Graph(users, items)

    def graph_state(self) -> dict[str, Any]:
        return {"graph_users": self.graph.users.copy(), "graph_items": self.graph.items.copy()}

    def load_graph_state(self, state: Mapping[str, Any]) -> None:
        self.set_graph(np.asarray(state["graph_users"]), np.asarray(state["graph_items"]))

    def encode(self, user_table: torch.Tensor, item_table: torch.Tensor, graph: Graph | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        graph = graph or self.graph
        forward, backward = graph.adjacency(len(user_table), len(item_table), user_table.device)
        return propagate(user_table, item_table, forward, backward, self.layers)

    def isolated(self, rows: torch.Tensor) -> torch.Tensor:
        return rows / (self.layers + 1)

    def pair_scores(self, u: torch.Tensor, i: torch.Tensor, dense: Mapping | None = None) -> torch.Tensor:
        return (u * i).sum(-1)

    def candidate_scores(self, u: torch.Tensor, item_table: torch.Tensor, candidates: torch.Tensor,
                         dense: Mapping | None = None) -> torch.Tensor:
        from .mf import candidate_scores

        return candidate_scores(u, item_table, candidates)


# ----------------------------------------------------------------------------------------------
# NCF

class NCF(_Base):
    """Embedding + MLP scorer (NeuMF's MLP tower; the base of ASMG's experiments):

        s(u, i) = w_L · ReLU(... ReLU(W_1 [p_u; q_i] + b_1) ...) + b_L

    The first layer is split as W_1 = [W_u | W_i], so scoring C candidates for B users computes
    the item half once per item of the table and the user half once per user, then adds them:
    ``[B, C, h_1]`` without ever building the ``[B, C, 2d]`` concatenation.
    """

    inner_product = False

    CHUNK_FLOATS = 1 << 22   # bounds the [rows, C, h_1] activations of one candidate chunk (16 MB)

    def __init__(self, n_users: int, n_items: int, dim: int = 64, init_std: float = 0.1,
                 hidden: tuple[int, ...] = (64, 32, 16), loss: str = "bce", sparse: bool = True,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.user = nn.Embedding(n_users, dim, sparse=sparse)
        self.item = nn.Embedding(n_items, dim, sparse=sparse)
        widths = [2 * dim, *hidden, 1]
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        with torch.no_grad():
            # The MLP first: its initial weights must not depend on the tables' sizes (a
            # production registry has fewer rows than a replay over the whole log).
            for layer in self.mlp:   # PyTorch's default bound 1/sqrt(fan_in), from a seeded stream
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
            self.user.weight.normal_(0.0, init_std, generator=generator)
            self.item.weight.normal_(0.0, init_std, generator=generator)
        self.loss = loss
        self.sparse = sparse

    def _weights(self, dense: Mapping | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if dense is None:
            return [(layer.weight, layer.bias) for layer in self.mlp]
        return [(dense[f"mlp.{k}.weight"], dense[f"mlp.{k}.bias"]) for k in range(len(self.mlp))]

    @staticmethod
    def _tower(first: torch.Tensor, weights: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        h = F.relu(first)
        for weight, bias in weights[1:-1]:
            h = F.relu(F.linear(h, weight, bias))
        weight, bias = weights[-1]
        return F.linear(h, weight, bias).squeeze(-1)

    def pair_scores(self, u: torch.Tensor, i: torch.Tensor, dense: Mapping | None = None) -> torch.Tensor:
        weights = self._weights(dense)
        w1, b1 = weights[0]
        d = u.shape[-1]
        return self._tower(F.linear(u, w1[:, :d]) + F.linear(i, w1[:, d:], b1), weights)

    def candidate_scores(self, u: torch.Tensor, item_table: torch.Tensor, candidates: torch.Tensor,
                         dense: Mapping | None = None) -> torch.Tensor:
        weights = self._weights(dense)
        w1, b1 = weights[0]
        d = u.shape[-1]
        item_half = F.linear(item_table, w1[:, d:], b1)    # [n_items, h1], once per item
        user_half = F.linear(u, w1[:, :d])                 # [B, h1]
        n_cands, width = candidates.shape[-1], w1.shape[0]
        step = max(1, self.CHUNK_FLOATS // max(1, n_cands * width))
        return torch.cat([self._tower(item_half[candidates[lo: lo + step]] + user_half[lo: lo + step, None, :],
                                      weights)
                          for lo in range(0, len(u), step)]) if len(u) else u.new_zeros(candidates.shape)


def score_encoded(model: nn.Module, user_final: torch.Tensor, item_final: torch.Tensor, users: torch.Tensor,
                  items: torch.Tensor, dense: Mapping | None = None) -> torch.Tensor:
    """Scores from final embeddings: pairs (items [B]) or candidate blocks (items [B, C])."""
    u = user_final[users]
    if items.dim() == users.dim() + 1:
        return model.candidate_scores(u, item_final, items, dense)
    return model.pair_scores(u, item_final[items], dense)


def ncf_reference_score(p: torch.Tensor, q: torch.Tensor, weights: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Slow, obvious twin of NCF's scorer for one pair: the MLP on the concatenation [p; q]."""
    h = torch.cat([p, q])
    for k, (weight, bias) in enumerate(weights):
        h = weight @ h + bias
        if k < len(weights) - 1:
            h = torch.relu(h)
    return h[0]


# ----------------------------------------------------------------------------------------------
# Construction, state, training

def make_base(base: BaseSettings, n_users: int, n_items: int, mf: MFSettings, seed: int,
              device: torch.device | str = "cpu") -> nn.Module:
    """An untrained base model (its rows are overwritten by pretrained or counter-based rows)."""
    if base.kind == "mf":
        return MF(n_users, n_items, mf.dim, mf.init_std, mf.sparse).to(device)
    if base.kind == "lightgcn":
        return LightGCN(n_users, n_items, mf.dim, mf.init_std, base.lightgcn.layers,
                        base.lightgcn.loss).to(device)
    generator = make_torch_generator(seed, "base", base.kind)  # the same MLP init in every strategy
    return NCF(n_users, n_items, mf.dim, mf.init_std, base.ncf.hidden, base.ncf.loss, mf.sparse,
               generator).to(device)


def dense_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The base's weights other than the two tables (MF has none)."""
    return model.dense_parameters() if hasattr(model, "dense_parameters") else {}


def base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The starting state strategies share: ``user``, ``item`` and any dense weights by name."""
    state = {"user": model.user.weight.detach().clone(), "item": model.item.weight.detach().clone()}
    state.update({name: p.detach().clone() for name, p in dense_parameters(model).items()})
    return state


def load_base_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy a :func:`base_state` into ``model`` (tables first; dense weights by name)."""
    with torch.no_grad():
        model.user.weight.copy_(state["user"])
        model.item.weight.copy_(state["item"])
        for name, parameter in dense_parameters(model).items():
            parameter.copy_(state[name])


def init_base_rows(model: nn.Module, seed: int, mf: MFSettings) -> None:
    """Counter-based initial rows (models/growth.py) for both tables, as MF pretraining uses."""
    with torch.no_grad():
        for table in ("user", "item"):
            weight = getattr(model, table).weight
            weight.copy_(init_rows(seed, table, 0, weight.shape[0], weight.shape[1], mf.init_std))


class BaseTrainer:
    """Autograd training of a non-MF base with Adam: row-wise (SparseAdam) for tables whose
    gradients are sparse (NCF with ``mf.sparse``), dense Adam otherwise (LightGCN: propagation
    reads every row); the dense weights always with Adam. Same ``step`` / ``grow`` / state
    interface as the fused MF trainer."""

    def __init__(self, model: nn.Module, lr: float) -> None:
        self.model = model
        tables = [model.user.weight, model.item.weight]
        self.table_optimizer = (torch.optim.SparseAdam(tables, lr=lr) if model.user.sparse
                                else torch.optim.Adam(tables, lr=lr))
        dense = list(dense_parameters(model).values())
        self.dense_optimizer = torch.optim.Adam(dense, lr=lr) if dense else None

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.table_optimizer, self.dense_optimizer) if o is not None]

    def step(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> float:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss = self.model.train_loss(users, positives, negatives)
        loss.backward()
        for optimizer in self.optimizers:
            optimizer.step()
        return float(loss.detach())

    def train_epoch(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                    batch_size: int) -> list[float]:
        """One ``step`` on each consecutive slice of ``batch_size`` rows; returns the batch losses."""
        return steps_over_slices(self.step, users, positives, negatives, batch_size)

    def grow(self, n_users: int, n_items: int) -> None:
        pad_optimizer_rows(self.table_optimizer)

    def state_dict(self) -> dict[str, Any]:
        return {"tables": self.table_optimizer.state_dict(),
                "dense": None if self.dense_optimizer is None else self.dense_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.table_optimizer.load_state_dict(state["tables"])
        if self.dense_optimizer is not None:
            self.dense_optimizer.load_state_dict(state["dense"])


def pad_optimizer_rows(optimizer: torch.optim.Optimizer) -> None:
    """Zero per-row state for rows appended to the optimiser's parameters (a row that has never
    had a gradient); call after the tables grew."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            state = optimizer.state.get(parameter)
            for key, value in (state or {}).items():
                if torch.is_tensor(value) and value.dim() == parameter.dim() and value.shape[0] < parameter.shape[0]:
                    pad = value.new_zeros((parameter.shape[0] - value.shape[0], *value.shape[1:]))
                    state[key] = torch.cat([value, pad])


def make_trainer(model: nn.Module, lr: float, sparse: bool, kernel: str = "auto"):
    """MF keeps its fused lazy-Adam kernel (or dense autograd Adam); other bases use autograd."""
    if isinstance(model, MF):
        return make_mf_trainer(model, lr, sparse, kernel)
    return BaseTrainer(model, lr)
