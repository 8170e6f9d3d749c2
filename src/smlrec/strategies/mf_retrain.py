"""Full-retrain and Fine-tune (sml-method.md section 6): warm-started MF on a window of data.

* Full-retrain: each period, continue training the previous model on D_0..D_t (all data so far).
* Fine-tune: each period, continue training the previous model on D_t only.

Negatives are uniform over the items of the training set, minus the user's items in it.
One Adam (lazy, row-wise, by default) lives for the whole run (its moments carry across periods).

Cold start (strategies/cold.py): a user the model has never trained on is served the mean of the
user rows trained in the latest period (``cold_users = "recent"``, chosen over ``"mean"`` on
validation periods), an untrained item the mean of every trained item row (``cold_items =
"mean"``: a neutral row, so a new item is not ranked high by accident), never its random initial
row; ``"init"`` restores the untrained rows for comparison.

Base models (models/bases.py): the strategies train whichever base the context names, with every
weight of it (NCF's MLP too) trained on the window; the cold rules apply to the layer-0 tables.
LightGCN trains and serves over one graph, set by ``graph``: ``"held"``, the window it trains on
(all data so far for Full-retrain, reservoir ∪ D_t for SPMF, D_t for ASMG's fine-tuned models), or
``"seen"``, every distinct pair seen so far (edges only: the loss still reads the window alone),
Fine-tune's preset. With ``cold_on = "final"`` (SPMF's default) the cold rules average final
embeddings instead of layer-0 rows. Both only act on a base that propagates: MF and NCF never see
them.

Why (bundled data, validation periods 13-14, R@20; sampled protocol): with D_t as its graph
(~50 heavy users, ~2,200 items) Fine-tune scored .0157, SPMF .0502, because the cold users (71-82%
of the rows) were served the mean *layer-0* user row as an isolated node, and on such a graph a
user's preference lives in the propagated layers: cold users scored R@20 .002, below random (.02),
warm users .09 (.03 when scored with their layer-0 rows alone). Serving isolated rows unscaled
(.0034) or serving over all seen edges without training over them (.0094) did not help. Chosen on
those periods: Fine-tune "seen" + layer0 .2214 (held + final .2040, seen + final .2114); SPMF held
+ final .2430 (seen + layer0 .2334, seen + final .2262).
"""

from __future__ import annotations

from dataclasses import dataclass
import time
from typing import Any

import numpy as np
import torch

from ..config import require
from ..data.periods import Period
from ..data.sampling import SetNegativeSampler
from ..errors import ConfigError
from ..models.bases import load_base_state, make_base, make_trainer, score_encoded
from ..models.growth import grow_embedding, init_rows
from ..models.train_loop import run_trainer_epochs
from ..random import make_rng
from .base import Strategy, StrategyContext, to_tensor
from .cold import MF_COLD_RULES, TrainedRows, cold_row, with_cold_rows
from .converge import train_to_convergence
from .foldin import FoldIn, HistorySettings, check_history_settings


@dataclass(frozen=True)
class RetrainSettings(HistorySettings):
    """Settings of the warm-started MF baselines (``history*``: strategies/foldin.py)."""

    epochs: int = 5                   # passes over the training window per period
    lr: float | None = None           # None: the MF learning rate
    batch_size: int | None = None     # None: the MF batch size
    cold_users: str = "recent"        # rule for untrained users: mean | recent | init (strategies/cold.py)
    cold_items: str = "mean"          # rule for untrained items: mean | recent | init
    graph: str = "held"               # LightGCN's graph: held (the training window) | seen (every
                                      #   pair seen so far: edges only, no extra training data)
    cold_on: str = "layer0"           # what the cold rules average for LightGCN: layer0 rows (then
                                      #   propagated) | final embeddings (served as they are)
    converge: bool = False            # train to convergence instead (strategies/converge.py): early
    max_epochs: int = 100             #   stopping on a seeded held-out slice of the training window,
    patience: int = 3                 #   after `patience` epochs without a better held-out NDCG@20,
    holdout: float = 0.05             #   at most `max_epochs`; `holdout`: share of the window held out

    def __post_init__(self) -> None:
        require(self.epochs >= 0, "epochs", ">= 0", self.epochs)
        require(self.max_epochs >= 1, "max_epochs", ">= 1", self.max_epochs)
        require(self.patience >= 1, "patience", ">= 1", self.patience)
        require(0 < self.holdout < 1, "holdout", "in (0, 1)", self.holdout)
        require(self.lr is None or self.lr > 0, "lr", "> 0", self.lr)
        require(self.batch_size is None or self.batch_size >= 1, "batch_size", ">= 1", self.batch_size)
        check_cold_rules(self)
        check_history_settings(self)


GRAPHS = ("held", "seen")
COLD_ON = ("layer0", "final")


def check_cold_rules(settings) -> None:
    for name in ("cold_users", "cold_items"):
        value = getattr(settings, name)
        require(value in MF_COLD_RULES, name, f"one of {', '.join(MF_COLD_RULES)}", value)
    require(settings.graph in GRAPHS, "graph", f"one of {', '.join(GRAPHS)}", settings.graph)
    require(settings.cold_on in COLD_ON, "cold_on", f"one of {', '.join(COLD_ON)}", settings.cold_on)


class MFRetrain(Strategy):
    """Warm-started MF retrained each period on the rows ``_training_rows`` chooses."""

    def __init__(self, settings: RetrainSettings, context: StrategyContext) -> None:
        super().__init__(settings, context)
        mf = context.mf
        self.model = make_base(context.base, context.n_users, context.n_items, mf, context.seed, self.device)
        self.trainer = make_trainer(self.model, settings.lr or mf.lr, mf.sparse, mf.kernel)
        self.user_rows = TrainedRows(context.n_users)
        self.item_rows = TrainedRows(context.n_items)
        self._layer0: tuple[torch.Tensor, torch.Tensor] | None = None
        self._encoded: tuple[torch.Tensor, torch.Tensor] | None = None
        self.foldin = None if getattr(settings, "history", "none") == "none" else \
            FoldIn(settings, context.n_users, context.seed, context.name or self.name)

    @classmethod
    def check_context(cls, settings: Any, context: StrategyContext, name: str) -> None:
        if getattr(settings, "history", "none") != "none" and context.base.kind == "ncf":
            raise ConfigError(f"strategy {name}: history = {settings.history!r} adds to the served user "
                              "row in the space of inner products; the NCF base scores through an MLP")

    def _start(self, pretrain: Period, initial_state: dict[str, torch.Tensor]) -> None:
        load_base_state(self.model, initial_state)
        self._hold_graph(pretrain.users, pretrain.items)
        self._mark_trained(pretrain.users, pretrain.items)
        if self.foldin is not None:
            self.foldin.receive(pretrain.users, pretrain.items)

    def update(self, period: Period) -> float:
        """With a fold-in: its gate is fitted on ``period`` (D_{t+1}) with the tables served now,
        before the model's own update; the windows move on after it (strategies/foldin.py)."""
        if self.foldin is None or len(period) == 0 or period.users.max() >= self.n_users \
                or period.items.max() >= self.n_items:
            return super().update(period)      # (the base refuses a bad period)
        began = time.perf_counter()
        self.foldin.fit(period, *self.encoded_tables(), ~self.user_rows.trained)
        fitted = time.perf_counter() - began
        seconds = super().update(period)
        self.foldin.receive(period.users, period.items)
        return seconds + fitted

    def _hold_graph(self, users: np.ndarray, items: np.ndarray) -> None:
        """Give the base the graph it trains and serves over: the training window (``graph =
        "held"``) or, with ``"seen"``, every distinct pair seen so far (the previous graph's edges
        and the window's). A no-op for bases without a graph, so MF is never touched."""
        if not self.model.propagates:
            return
        if self.settings.graph == "seen":
            n_items = self.model.item.weight.shape[0]
            keys = np.unique(np.concatenate([self.model.graph.users * n_items + self.model.graph.items,
                                             np.asarray(users, np.int64) * n_items
                                             + np.asarray(items, np.int64)]))
            users, items = keys // n_items, keys % n_items
        self.model.set_graph(users, items)

    def _mark_trained(self, users: np.ndarray, items: np.ndarray) -> None:
        """The rows of one period's training data (the latest period for the ``recent`` rule)."""
        self.user_rows.mark(users)
        self.item_rows.mark(items)
        self._layer0 = self._encoded = None

    def _training_rows(self, period: Period) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _update(self, period: Period) -> None:
        user_rows, item_rows = self._training_rows(period)
        self._hold_graph(user_rows, item_rows)
        batch_size = self.settings.batch_size or self.context.mf.batch_size
        if self.settings.converge:
            result = train_to_convergence(
                self.model, self.trainer, user_rows, item_rows, self.settings.holdout,
                self.settings.max_epochs, self.settings.patience, batch_size, self.rng,
                make_rng(self.context.seed, "strategy", self.name, "holdout", period.index), self.device)
            self.last_losses = result.losses
        else:
            self.last_losses = run_trainer_epochs(self.trainer, to_tensor(user_rows, self.device),
                                                  to_tensor(item_rows, self.device),
                                                  SetNegativeSampler(user_rows, item_rows),
                                                  self.settings.epochs, batch_size, self.rng, self.device)
        self.last_epochs = len(self.last_losses)
        self._mark_trained(period.users, period.items)

    def _grow(self, n_users: int, n_items: int) -> None:
        """New rows start as fresh MF rows: N(0, init_std^2), counter-based from the run seed
        (models/growth.py), i.e. the very rows pretraining gives an id it has not trained; their
        Adam moments start at zero, as for a row that has never had a gradient."""
        mf, seed = self.context.mf, self.context.seed
        for table, embedding, new_size in (("user", self.model.user, n_users),
                                           ("item", self.model.item, n_items)):
            old_size = embedding.num_embeddings
            grow_embedding(embedding, init_rows(seed, table, old_size, new_size, mf.dim, mf.init_std))
        self.trainer.grow(n_users, n_items)
        self.user_rows.grow(n_users)
        self.item_rows.grow(n_items)
        self._layer0 = self._encoded = None
        if self.foldin is not None:
            self.foldin.grow(n_users)

    def score(self, period: Period, rows: slice, candidates: torch.Tensor) -> torch.Tensor:
        users = to_tensor(period.users[rows], self.device)
        user_final, item_final = self.encoded_tables()
        if self.foldin is None:
            return score_encoded(self.model, user_final, item_final, users, candidates, self._served_dense())
        chosen = np.asarray(period.users[rows], np.int64)
        with torch.no_grad():
            vectors = self.foldin.user_rows(user_final[users], item_final, self.foldin.contexts(period)[rows],
                                            ~self.user_rows.trained[chosen])
            return self.model.candidate_scores(vectors, item_final, candidates.to(self.device),
                                               self._served_dense())

    def score_new_users(self, candidates: torch.Tensor) -> torch.Tensor:
        user_final, item_final = self.encoded_tables()
        if self._cold_on_final():   # the same final-space row ``score`` serves an untrained user
            vector = cold_row(user_final, self.user_rows, self.settings.cold_users)
        else:
            vector = cold_row(self._raw_tables()[0], self.user_rows, self.settings.cold_users)
        if vector is None:   # "init": an id never seen has no row at all; its fresh row is random
            raise ConfigError(f"{self.name}: cold_users = 'init' has no row for an unknown user")
        with torch.no_grad():
            if not self._cold_on_final():   # an unknown id has no edges: LightGCN serves its row / (K+1)
                vector = self.model.isolated(vector)
            return self.model.candidate_scores(vector.expand(len(candidates), -1), item_final, candidates,
                                               self._served_dense())

    def _cold_on_final(self) -> bool:
        return self.model.propagates and self.settings.cold_on == "final"

    def encoded_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final embeddings of the served tables (LightGCN: propagated over the held graph).

        With ``cold_on = "final"`` (a base that propagates), an untrained row is then replaced by
        its cold rule's mean of *final* trained rows, served as it is: on a small graph (one
        period: ~50 users of ~100 items each on the bundled data) a user's preference lives in the
        propagated layers, so the mean of layer-0 rows, served as an isolated node, ranked the
        next period's items below random (validation R@20 of cold users .002)."""
        if self._encoded is None:
            with torch.no_grad():
                user_final, item_final = self.model.encode(*self.layer0_tables())
                if self._cold_on_final():
                    user_final = with_cold_rows(user_final, self.user_rows, self.settings.cold_users)
                    item_final = with_cold_rows(item_final, self.item_rows, self.settings.cold_items)
                self._encoded = (user_final, item_final)
        return self._encoded

    def reads_history(self) -> bool | None:
        return self.foldin is not None   # history = "fold-in" reads the user's last items

    def served_tables(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The final tables whose inner products are the scores (None for a base such as NCF
        that scores with an MLP); production serves them directly."""
        if not self.model.inner_product:
            return None
        user_final, item_final = self.encoded_tables()
        if self.foldin is not None:
            with torch.no_grad():
                user_final = self.foldin.baked_table(user_final, item_final, ~self.user_rows.trained)
        return user_final, item_final

    def layer0_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The trained layer-0 tables with every untrained row replaced by its cold-start rule's row."""
        if self._layer0 is None:
            with torch.no_grad():
                user_table, item_table = self._raw_tables()
                self._layer0 = (with_cold_rows(user_table, self.user_rows, self.settings.cold_users),
                                with_cold_rows(item_table, self.item_rows, self.settings.cold_items))
        return self._layer0

    def _raw_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer-0 tables the strategy serves, before cold rules (ASMG: generated ones)."""
        return self.model.user.weight.detach(), self.model.item.weight.detach()

    def _served_dense(self) -> dict[str, torch.Tensor] | None:
        """Dense weights that replace the model's own when serving (None: the model's own)."""
        return None

    def _state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.trainer.state_dict(),
                "user_rows": self.user_rows.state(), "item_rows": self.item_rows.state(), **self.model.graph_state(),
                **({"foldin": self.foldin.state()} if self.foldin is not None else {})}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.trainer.load_state_dict(state["optimizer"])
        self.user_rows.load(state["user_rows"])
        self.item_rows.load(state["item_rows"])
        self.model.load_graph_state(state)
        self._layer0 = self._encoded = None
        if self.foldin is not None:
            self.foldin.load_state(state["foldin"])


class FullRetrain(MFRetrain):
    """Retrain on all data so far (D_0..D_t), warm-started from the previous model."""

    name = "full-retrain"

    def _start(self, pretrain: Period, initial_state: dict[str, torch.Tensor]) -> None:
        super()._start(pretrain, initial_state)
        self.history_users = np.asarray(pretrain.users, dtype=np.int64)
        self.history_items = np.asarray(pretrain.items, dtype=np.int64)

    def _training_rows(self, period: Period) -> tuple[np.ndarray, np.ndarray]:
        self.history_users = np.concatenate([self.history_users, period.users])
        self.history_items = np.concatenate([self.history_items, period.items])
        return self.history_users, self.history_items

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "history_users": self.history_users,
                "history_items": self.history_items}

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        self.history_users = np.asarray(state["history_users"], dtype=np.int64)
        self.history_items = np.asarray(state["history_items"], dtype=np.int64)


class FineTune(MFRetrain):
    """Continue training the previous model on the new period only."""

    name = "fine-tune"

    def _training_rows(self, period: Period) -> tuple[np.ndarray, np.ndarray]:
        return period.users, period.items
