"""ASMG (Peng et al., "Learning an Adaptive Meta Model-Generator for Incrementally Updating
Recommender Systems", RecSys 2021; sml-authors-code-notes.md section 9), on any base model.

Fine-tune ("IU") produces one model per period; ASMG keeps the last k of them (default 3) and a
meta-generator that reads, for every parameter coordinate, the sequence of its values in those
models (a GRU per coordinate, hidden 4, linear output: models/meta_generator.py) and generates
the next model. With the window m_a, ..., m_t (m_j fine-tuned through period j)::

    update(D_t+1):
        train the generator: the output after step j (input m_j) is scored on D_j+1,
            loss = Σ_j w_j BCE_j with w_j = j / (1 + ... + L) (multi-step, later steps weigh more);
            D_t+1 is the new period: the last step learns to generate the model for the future
        fine-tune m_t+1 on D_t+1 and slide the window (keep k models)
        serve the generator's last output on the window ending at m_t+1 (scored on D_t+2)

The generator is trained only when a new period arrives, on the periods that follow each window
model; the model served for t+2 is generated before D_t+2 is known. The generator's weights
carry across periods, and so does its hidden state, truncated: the window's initial hidden state
is the hidden state after the first step of the previous window (zeros at the start), and no
gradient flows into it (truncated back-propagation through time). Until k models exist, the
window is shorter and the same rules apply.

Choices (documented here, not in the paper): the fine-tuned models are smlrec's Fine-tune (same
settings and cold rules; the graph is D_t for LightGCN, ``graph = "held"``, not Fine-tune's preset
"seen": the generator is trained on, and serves, models propagated over each period's graph);
every weight of the base is generated (tables
and NCF's MLP), each tensor with its own per-coordinate GRU; the cold rules apply to the generated
tables with the trained rows of the model each step read (the generator is trained for what is
served); a generated LightGCN model propagates over the graph of the period its last input model
was trained on; a row's carried hidden state is reset to zero while its id is untrained, so a
production registry that grows its tables for a new id holds exactly the replay's state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import require
from ..data.periods import Period
from ..data.sampling import SetNegativeSampler
from ..models.bases import base_state, dense_parameters
from ..models.growth import init_rows
from ..models.meta_generator import CoordinateGRU
from ..random import make_torch_generator
from .base import StrategyContext, to_tensor
from .cold import TrainedRows, with_cold_rows
from .mf_retrain import FineTune, RetrainSettings

TABLES = ("user", "item")


@dataclass(frozen=True)
class ASMGSettings(RetrainSettings):
    """ASMG: Fine-tune's settings for the models it reads, plus the generator's."""

    window: int = 3                    # k, models the generator reads
    hidden: int = 4                    # GRU hidden size per coordinate
    generator_lr: float = 0.01         # Adam for the generator
    generator_epochs: int = 1          # passes over the window's target periods per update
    generator_batch_size: int = 1024   # rows of each target period per batch (batches aligned)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.window >= 1, "window", ">= 1", self.window)
        require(self.hidden >= 1, "hidden", ">= 1", self.hidden)
        require(self.generator_lr > 0, "generator_lr", "> 0", self.generator_lr)
        require(self.generator_epochs >= 0, "generator_epochs", ">= 0", self.generator_epochs)
        require(self.generator_batch_size >= 1, "generator_batch_size", ">= 1", self.generator_batch_size)


@dataclass
class WindowModel:
    """One fine-tuned model of the window, what it had trained on, and the period it learned."""

    params: dict[str, torch.Tensor]
    user_rows: TrainedRows
    item_rows: TrainedRows
    users: np.ndarray                  # the period it was fine-tuned on (its graph; the previous
    items: np.ndarray                  # model's target period)
    index: int


def _key(name: str) -> str:
    return name.replace(".", "__")     # ModuleDict keys cannot hold dots


class ASMG(FineTune):
    name = "asmg"

    def __init__(self, settings: ASMGSettings, context: StrategyContext) -> None:
        super().__init__(settings, context)
        generator = make_torch_generator(context.seed, "asmg", context.name or self.name)
        self.names = [*TABLES, *dense_parameters(self.model)]
        grus = {}
        for name in self.names:
            coords = self.model.user.weight.shape[1] if name in TABLES else \
                dense_parameters(self.model)[name].numel()
            grus[_key(name)] = CoordinateGRU(coords, settings.hidden, generator)
        self.generator = nn.ModuleDict(grus).to(self.device)
        self.generator_optimizer = torch.optim.Adam(self.generator.parameters(), lr=settings.generator_lr)
        self.window: list[WindowModel] = []
        self.h0: dict[str, torch.Tensor] = {}
        self._generated: dict[str, torch.Tensor] | None = None
        self.generator_targets: list[tuple[int, float]] = []   # (target period, weight), latest update
        self.generator_losses: list[float] = []

    # -- lifecycle -------------------------------------------------------------------------
    def _start(self, pretrain: Period, initial_state: dict[str, torch.Tensor]) -> None:
        super()._start(pretrain, initial_state)
        self.window = [self._snapshot(pretrain)]
        self.h0 = {name: self.generator[_key(name)].initial_hidden(self._rows_of(name), self.device)
                   for name in self.names}
        self._generated = None

    def _rows_of(self, name: str) -> int:
        return self.n_users if name == "user" else self.n_items if name == "item" else 1

    def _snapshot(self, period: Period) -> WindowModel:
        rows = []
        for source in (self.user_rows, self.item_rows):
            copy = TrainedRows(len(source.trained))
            copy.load(source.state())
            rows.append(copy)
        return WindowModel(base_state(self.model), rows[0], rows[1], np.asarray(period.users, np.int64).copy(),
                           np.asarray(period.items, np.int64).copy(), int(period.index))

    def _update(self, period: Period) -> None:
        self._train_generator(period)
        super()._update(period)                 # m_t+1: fine-tune on the new period
        self.window.append(self._snapshot(period))
        if len(self.window) > self.settings.window:
            with torch.no_grad():
                _, first_hidden = self._run_generator()
            dropped = self.window.pop(0)
            self.h0 = {}
            for name, hidden in first_hidden.items():
                if name in TABLES:   # untrained ids restart from zero (module doc: production)
                    trained = (dropped.user_rows if name == "user" else dropped.item_rows).trained
                    hidden = hidden * torch.from_numpy(trained).to(hidden)[:, None, None]
                self.h0[name] = hidden.detach().clone()
        self._generated = None
        self._layer0 = self._encoded = None

    # -- the generator ---------------------------------------------------------------------
    def _run_generator(self) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """The generated model after every step of the window, and the hidden state after step 1."""
        outputs: list[dict[str, torch.Tensor]] = [{} for _ in self.window]
        first_hidden = {}
        for name in self.names:
            gru = self.generator[_key(name)]
            h = self.h0[name]
            for j, model in enumerate(self.window):
                x = model.params[name]
                h = gru.cell(x.reshape(h.shape[0], -1), h)
                outputs[j][name] = gru.output(h).reshape(x.shape)
                if j == 0:
                    first_hidden[name] = h
        return outputs, first_hidden

    def _train_generator(self, incoming: Period) -> None:
        """Multi-step training: step j's generated model on the period after model j."""
        s = self.settings
        window = self.window
        L = len(window)
        weights = [(j + 1) / (L * (L + 1) / 2) for j in range(L)]
        targets = [(m.users, m.items, m.index) for m in window[1:]]
        targets.append((np.asarray(incoming.users, np.int64), np.asarray(incoming.items, np.int64),
                        int(incoming.index)))
        self.generator_targets = [(index, w) for (_, _, index), w in zip(targets, weights)]
        graphs = [self.model.graph_for(m.users, m.items) for m in window]
        samplers = [SetNegativeSampler(users, items) for users, items, _ in targets]
        users_t = [to_tensor(users, self.device) for users, _, _ in targets]
        items_t = [to_tensor(items, self.device) for _, items, _ in targets]
        sizes = [len(users) for users, _, _ in targets]
        n_batches = math.ceil(max(sizes) / s.generator_batch_size)
        dense_names = [name for name in self.names if name not in TABLES]
        self.generator_losses = []
        for _ in range(s.generator_epochs):
            negatives = [to_tensor(sampler(self.rng), self.device) for sampler in samplers]
            orders = [to_tensor(self.rng.permutation(n), self.device) for n in sizes]
            total = 0.0
            for b in range(n_batches):
                self.generator_optimizer.zero_grad(set_to_none=True)
                outputs, _ = self._run_generator()
                loss = torch.zeros((), device=self.device)
                for j in range(L):
                    # Each target period is cut into the same number of batches (aligned).
                    rows = orders[j][b * sizes[j] // n_batches: (b + 1) * sizes[j] // n_batches]
                    if len(rows) == 0:
                        continue
                    out = outputs[j]
                    user_table = with_cold_rows(out["user"], window[j].user_rows, s.cold_users)
                    item_table = with_cold_rows(out["item"], window[j].item_rows, s.cold_items)
                    user_final, item_final = self.model.encode(user_table, item_table, graphs[j])
                    dense = {name: out[name] for name in dense_names} or None
                    u = users_t[j][rows]
                    both = torch.cat([items_t[j][rows], negatives[j][rows]])
                    scores = self.model.pair_scores(user_final[u].repeat(2, 1), item_final[both], dense)
                    n = len(rows)
                    loss = loss + weights[j] * self.model.pair_loss(scores[:n], scores[n:])
                loss.backward()
                self.generator_optimizer.step()
                total += float(loss.detach())
            self.generator_losses.append(total / max(n_batches, 1))

    def _generated_model(self) -> dict[str, torch.Tensor]:
        if self._generated is None:
            with torch.no_grad():
                outputs, _ = self._run_generator()
            self._generated = outputs[-1]
        return self._generated

    # -- serving ---------------------------------------------------------------------------
    def _raw_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        generated = self._generated_model()
        return generated["user"], generated["item"]

    def _served_dense(self) -> dict[str, torch.Tensor] | None:
        generated = self._generated_model()
        return {name: generated[name] for name in self.names if name not in TABLES} or None

    # -- production ------------------------------------------------------------------------
    def _grow(self, n_users: int, n_items: int) -> None:
        """Fine-tune's growth, and the window models and hidden state grow with the rows a replay
        holds for ids not seen yet: their initial rows (never trained) and a zero hidden state."""
        old = {"user": self.n_users, "item": self.n_items}
        super()._grow(n_users, n_items)
        new = {"user": n_users, "item": n_items}
        mf, seed = self.context.mf, self.context.seed
        for table in TABLES:
            if new[table] == old[table]:
                continue
            rows = init_rows(seed, table, old[table], new[table], mf.dim, mf.init_std).to(self.device)
            for model in self.window:
                model.params[table] = torch.cat([model.params[table], rows])
                (model.user_rows if table == "user" else model.item_rows).grow(new[table])
            h = self.h0[table]
            self.h0[table] = torch.cat([h, h.new_zeros(new[table] - old[table], *h.shape[1:])])
        self._generated = None

    # -- state -----------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        window = [{"params": {k: v.clone() for k, v in m.params.items()}, "user_rows": m.user_rows.state(),
                   "item_rows": m.item_rows.state(), "users": m.users, "items": m.items, "index": m.index}
                  for m in self.window]
        return {**super()._state(), "generator": self.generator.state_dict(),
                "generator_optimizer": self.generator_optimizer.state_dict(),
                "h0": {k: v.clone() for k, v in self.h0.items()}, "window": window}

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        self.generator.load_state_dict(state["generator"])
        self.generator_optimizer.load_state_dict(state["generator_optimizer"])
        self.h0 = {k: torch.as_tensor(v).to(self.device).clone() for k, v in state["h0"].items()}
        self.window = []
        for saved in state["window"]:
            rows = []
            for table, size in (("user_rows", self.n_users), ("item_rows", self.n_items)):
                tracked = TrainedRows(size)
                tracked.load(saved[table])
                rows.append(tracked)
            self.window.append(WindowModel({k: torch.as_tensor(v).to(self.device).clone()
                                            for k, v in saved["params"].items()}, rows[0], rows[1],
                                           np.asarray(saved["users"], np.int64),
                                           np.asarray(saved["items"], np.int64), int(saved["index"])))
        self._generated = None
