"""SML: sequential meta-learning of a transfer (sml-method.md section 4), and its ablations.

Per period t, with W_prev the model carried from t-1::

    for round r in 0 .. R-1:
        step 1: fit Ŵ on D_t through the frozen transfer (BCE + λ1/2 Σ_batch ||ŵ||²)
        r == 0: serve f_Θ(W_prev, Ŵ) for period t+1
        step 2: fit Θ on D_{t+1} with W_prev and Ŵ fixed (Adam with weight decay)
    carry W_t := f_Θ(W_prev, Ŵ)

Causal order: the model for t+1 must be served before D_{t+1} is known, so ``update(D_{t+1})``
first *finishes* period t (round 0's step 2, rounds 1..R-1, the carried W_t), then runs round 0's
step 1 of period t+1 and serves. The strategy keeps D_t, W_prev and Ŵ between updates; it never
holds older data.

Ablations are settings of this one class (see ``SMLSettings``); ``strategies/__init__`` registers
them by name: sml-s, sml-n, sml-fp, sml-cnn, sml-fc, sml-linear, sml-mlp.

Cold start: a user or item not seen yet has no trained row. Its rule (``cold_users``,
``cold_items``) is one of

* ``transfer``: every unseen id shares one cold row ``c`` that is carried through the transfer
  like any row: served ``f_Θ(c, c)`` (an untrained Ŵ row is its W_prev row), carried
  ``c := f_Θ(c, c)`` with the final Θ; step 2 trains Θ on D_{t+1} whose new ids are cold, so the
  transfer learns what to serve them. ``c`` starts as the mean of the pretrained rows.
* ``learned``: a separate cold row, a parameter trained in step 2 (with Θ) on the cold ids of
  D_{t+1}, so the transfer is not pulled two ways; a new id's W_prev row is that cold row.
* ``every-row``: the authors' code: f_Θ applied to every row of the table, trained or not (each
  unseen id keeps its own iterated random row). A production registry cannot grow such tables
  (a new row would need every past Θ), so it refuses to.
* ``untrained``: the random initial row, untouched (the behaviour before these rules).

Under ``transfer`` and ``learned`` an id first seen in period t starts that period from the cold
row (W_prev row c, Ŵ from c) unless ``new_users`` / ``new_items`` = ``"init"``, which start it from
its own initial row as ``untrained`` does and keep the cold row for serving unseen ids only. A
rarely-seen id's served row stays a near-copy of the cold row's (mean cosine .96-.98 for items seen
once on four synthetic logs), so its ranking follows what step 2 makes of the cold row; on a log
where new items are the likely ones that costs warm users (docs/sml-stability.md, "The cold row
and warm users").

``transfer`` and ``learned`` give every unseen id the same row, so a production update with new
ids equals the replay step exactly, and an unknown user is served the cold row. The default,
``transfer`` for both tables, has the best mean validation Recall@20 over the bundled data and two
synthetic logs (mostly warm, mostly cold); ``learned`` is better on the bundled data alone but
collapses on the mostly-cold log (README, "Cold start", has the numbers).

Base models (models/bases.py): SML transfers the layer-0 user and item tables of any base; the
cold rules act on those tables. The base's other weights (NCF's MLP) are not transferred: step 1
fits them on D_t together with Ŵ (they are part of the new model fitted on the new period, as a
fine-tuned model's would be) and they are carried as fitted; Θ (step 2) is the transfers only, as
in the paper. LightGCN's graph is D_t, the one period SML holds: step 1 and step 2 of period t
and the model served for t+1 all propagate the transferred layer-0 tables over D_t's graph (step 2
trains Θ for the model that is served, and a graph of D_t+1 would not be known when serving). A
propagated row reads its neighbours' rows, so with LightGCN each batch transfers every node of the
graph (not only the batch's rows) before propagating: slower, but the exact gradient.

NCF (refused by default; docs/sml-stability.md has the numbers). The plain transfer squeezes the
rows into a tiny cloud (served user spread 0.004 from input rows of norm 0.5 on a small synthetic
log), and with ``round_start = "transferred"`` and the carry the squeeze compounds (spread 1e-4).
MF still has curvature there (its bilinear score), so step 2 spreads the rows again; NCF's ReLU
tower is piecewise linear and the whole cloud sits inside one linear region, so the scores are
a(user) + b(item) and step 2 sees no signal; on the bundled data the last hidden layer then dies
and every score ties (test R@20 .0021). The residual transfer (``residual``: f = ŵ + Δ, Δ zero
at start) removes the squeeze but lets step 2 inflate the rows (a free logit scale for the
frozen MLP; user row norm 2.2 -> 34 -> 101 in two periods, compounded over the rounds) until
units die again; keeping each row at ŵ's norm (``keep_scale``) with rounds from ŵ
(``round_start = "hat"``) stops both but stays far below NCF Fine-tune (validation R@20 .160
against .244). Standardising the rows the MLP sees per dimension was tried earlier: it removed the
squeeze on the synthetic log but lowered validation R@20 on the bundled data in 2 of 3 seeds
(.189 against .235 over seeds 2020-2022). So ``check_context`` refuses every SML variant on NCF
unless ``allow_ncf``.

SML-FC (``transfer = "no-fc"``) is registered in that residual, scale-keeping form: its plain
output is one scalar function of (w[j], ŵ[j], c[j]) shared by every dimension j, which an
untrained or decayed network makes nearly constant, so every row lands near one multiple of the
all-ones vector (test R@20 .0801, below pop). The default ``sml`` keeps the plain form: the
residual, scale-keeping one lowered its validation R@20 on the bundled data (.2488 against .2603).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data.periods import Period
from ..data.sampling import PrefixNegativeSampler, SetNegativeSampler
from ..errors import ConfigError
from ..models.bases import dense_parameters, make_base, score_encoded
from ..models.growth import grow_embedding, init_rows
from ..models.precision import effective_precision
from ..models.train_loop import LossParts, train_epochs
from ..models.transfer import TRANSFER_KINDS, Transfer
from ..random import make_torch_generator
from .base import Strategy, StrategyContext, to_tensor
from .foldin import FoldIn, HistorySettings, check_history_settings

COLD_RULES = ("transfer", "learned", "every-row", "untrained")
NEW_ROWS = ("cold", "init")


@dataclass(frozen=True)
class SMLSettings(HistorySettings):
    """SML settings; defaults are the paper's Yelp column (sml-method.md section 4). The
    ``history*`` fields (HistorySettings) are the history-aware user rows of strategies/foldin.py
    (served row u + g * h, the gate g fitted on D_{t+1}; docs/sml-history.md)."""

    rounds: int = 10                    # R, outer rounds per period
    step1_epochs: int = 1               # E1
    step2_epochs: int = 1               # E2
    step1_lr: float = 0.01              # Adam for Ŵ
    dense_lr: float = 1e-3              # Adam for the base's dense weights in step 1 (NCF's MLP):
                                        # at step1_lr (0.01) the MLP collapsed on the bundled data
                                        # (test R@20 .00-.04 per period; module doc, "NCF")
    step2_lr: float = 1e-3              # Adam for Θ
    step1_batch_size: int = 1024
    step2_batch_size: int = 256
    l2_hat: float = 1e-6                # λ1 on the raw ŵ rows of the batch
    transfer_weight_decay: float = 1e-4  # λ2, as Adam weight decay
    transfer: str = "cnn"               # cnn | no-cnn (SML-CNN) | no-fc (SML-FC) | linear | mlp
    residual: bool = False              # f = ŵ + Δ with Δ's last layer zero at start (models/transfer.py)
    keep_scale: bool = False            # each transferred row rescaled to its ŵ row's norm
    conv_channels: int = 10
    conv2_channels: int = 5
    hidden: int = 512
    round_start: str = "transferred"    # rounds r>=1 start Ŵ from f_Θ(W_prev, Ŵ) (authors) or "hat"
    step2_data: str = "next"            # "next": D_{t+1}; "current": D_t (SML-N)
    step1_through_transfer: bool = True  # False: Ŵ fitted on its own loss, then merged (SML-FP)
    freeze_when_scored: bool = False    # SML-S: no step 2 (one step-1 pass) once periods are scored
    frozen_step1_epochs: int | None = None  # step-1 epochs while frozen (None: step1_epochs)
    offline_passes: int = 1             # >1: walk the offline periods again before the first
                                        # scored one, to learn a better transfer (keeps their rows)
    cold_users: str = "transfer"        # transfer | learned | every-row | untrained (module doc)
    cold_items: str = "transfer"        # (both chosen on validation periods; see the README)
    new_users: str = "cold"             # what a newly seen id's W_prev row is under "transfer" /
    new_items: str = "cold"             # "learned": the shared cold row, or its own initial row
                                        # ("init"; the cold row is then only served; module doc)
    eps: float = 1e-12
    table_batch_size: int = 8192        # rows per batch in full-table transforms
    allow_ncf: bool = False             # run on the NCF base anyway (refused: module doc, "NCF")

    def __post_init__(self) -> None:
        if self.transfer not in TRANSFER_KINDS:
            raise ConfigError(f"strategy sml: transfer must be one of {', '.join(TRANSFER_KINDS)}, "
                              f"got {self.transfer!r}")
        if self.round_start not in ("transferred", "hat"):
            raise ConfigError(f"strategy sml: round_start must be 'transferred' or 'hat', got {self.round_start!r}")
        if self.step2_data not in ("next", "current"):
            raise ConfigError(f"strategy sml: step2_data must be 'next' or 'current', got {self.step2_data!r}")
        if self.rounds < 1:
            raise ConfigError("strategy sml: rounds must be >= 1")
        if self.offline_passes < 1:
            raise ConfigError("strategy sml: offline_passes must be >= 1")
        if not self.dense_lr > 0:
            raise ConfigError(f"strategy sml: dense_lr must be > 0, got {self.dense_lr}")
        for name in ("new_users", "new_items"):
            if getattr(self, name) not in NEW_ROWS:
                raise ConfigError(f"strategy sml: {name} must be one of {', '.join(NEW_ROWS)}, "
                                  f"got {getattr(self, name)!r}")
        for name in ("cold_users", "cold_items"):
            if getattr(self, name) not in COLD_RULES:
                raise ConfigError(f"strategy sml: {name} must be one of {', '.join(COLD_RULES)}, "
                                  f"got {getattr(self, name)!r}")
        check_history_settings(self)


@dataclass
class _PeriodRows:
    """The rows SML keeps of the period it has not finished yet (D_t)."""

    users: np.ndarray
    items: np.ndarray
    positions: np.ndarray
    items_seen: np.ndarray

    @classmethod
    def of(cls, period: Period) -> "_PeriodRows":
        return cls(np.asarray(period.users, np.int64), np.asarray(period.items, np.int64),
                   period.positions, np.asarray(period.items_seen, np.int64))


class SML(Strategy):
    name = "sml"

    @classmethod
    def check_context(cls, settings: SMLSettings, context: StrategyContext, name: str) -> None:
        if settings.history != "none" and context.base.kind == "ncf":
            raise ConfigError(f"strategy {name}: history = {settings.history!r} adds to the served user "
                              "row in the space of inner products; the NCF base scores through an MLP")
        if context.base.kind == "ncf" and not settings.allow_ncf:
            form = "residual" if settings.residual and settings.transfer != "linear" else "plain"
            raise ConfigError(
                f"strategy {name}: the {settings.transfer!r} transfer ({form}) on the NCF base is refused: "
                "it collapsed or stayed far below NCF Fine-tune on the bundled data (plain: test R@20 "
                ".0021, every score tied; residual, scale-keeping: validation R@20 .160 against "
                "Fine-tune's .244; docs/sml-stability.md). Use fine-tune (or full-retrain, spmf) on "
                f"--base ncf, or {name} on --base mf; set strategy.{name}.allow_ncf = true to run it "
                "anyway")

    def __init__(self, settings: SMLSettings, context: StrategyContext) -> None:
        super().__init__(settings, context)
        mf = context.mf
        s = settings
        generator = make_torch_generator(context.seed, "sml-transfer", context.name or self.name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
            precision = effective_precision(context.precision, self.device)
            self.user_transfer, self.item_transfer = (
                Transfer(mf.dim, s.transfer, s.conv_channels, s.conv2_channels, s.hidden, s.eps, precision,
                         s.residual, s.keep_scale).to(self.device) for _ in range(2))
        # Ŵ: the layer-0 tables of the base model (and its dense weights, fitted in step 1).
        self.hat = make_base(context.base, context.n_users, context.n_items, mf, context.seed, self.device)
        tables = [self.hat.user.weight, self.hat.item.weight]
        self.hat_optimizer = (torch.optim.SparseAdam(tables, lr=s.step1_lr) if self.hat.user.sparse
                              else torch.optim.Adam(tables, lr=s.step1_lr))
        dense = list(dense_parameters(self.hat).values())
        self.dense_optimizer = torch.optim.Adam(dense, lr=s.dense_lr) if dense else None
        self._graph_nodes: tuple[torch.Tensor, torch.Tensor] | None = None   # LightGCN: D_t's ids
        self._encoded: tuple | None = None   # (user_served, item_served, their final embeddings)
        # The cold rows of the "transfer" and "learned" rules (module doc); only "learned" ones
        # receive gradients, so Adam leaves the others alone.
        self.user_cold = torch.nn.Parameter(torch.zeros(mf.dim, device=self.device))
        self.item_cold = torch.nn.Parameter(torch.zeros(mf.dim, device=self.device))
        self.transfer_optimizer = torch.optim.Adam(
            [*self.user_transfer.parameters(), *self.item_transfer.parameters(), self.user_cold,
             self.item_cold], lr=s.step2_lr, weight_decay=s.transfer_weight_decay, fused=True)
        n_users, n_items, dim = context.n_users, context.n_items, mf.dim
        self.user_prev = torch.zeros(n_users, dim, device=self.device)
        self.item_prev = torch.zeros(n_items, dim, device=self.device)
        self.user_served = torch.zeros(n_users, dim, device=self.device)
        self.item_served = torch.zeros(n_items, dim, device=self.device)
        self.pending: _PeriodRows | None = None   # D_t, whose rounds 1..R-1 are not done yet
        # Ids are numbered in order of first appearance, so the users and items seen so far are
        # the rows 0..n-1; later rows stay untouched (their initial values) until their id appears.
        self.n_users_seen = 0
        self.n_items_seen = 0
        self.offline_history: list[_PeriodRows] = []  # only with offline_passes > 1
        self.step1_losses: list[float] = []   # per epoch, of the latest update only
        self.step2_losses: list[float] = []
        self.foldin = None if s.history == "none" else FoldIn(s, n_users, context.seed, context.name or self.name)

    # -- lifecycle -------------------------------------------------------------------------
    def _start(self, pretrain: Period, initial_state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.user_prev.copy_(initial_state["user"])
            self.item_prev.copy_(initial_state["item"])
            self.user_served.copy_(initial_state["user"])
            self.item_served.copy_(initial_state["item"])
            for name, parameter in dense_parameters(self.hat).items():
                parameter.copy_(initial_state[name])
        self._set_graph(pretrain.users, pretrain.items)
        self.pending = None
        self._note_seen(pretrain)
        if self.foldin is not None:
            self.foldin.receive(pretrain.users, pretrain.items)
        with torch.no_grad():
            for table in ("user", "item"):
                prev, n_seen = getattr(self, f"{table}_prev"), self._n_seen(table)
                getattr(self, f"{table}_cold").copy_(prev[:n_seen].mean(dim=0))
                if self._rule(table) in ("transfer", "learned"):
                    names = ("served",) if self._new_rows(table) == "init" else ("prev", "served")
                    for name in names:
                        getattr(self, f"{table}_{name}")[n_seen:] = getattr(self, f"{table}_cold")

    def _rule(self, table: str) -> str:
        return self.settings.cold_users if table == "user" else self.settings.cold_items

    def _new_rows(self, table: str) -> str:
        return self.settings.new_users if table == "user" else self.settings.new_items

    def _n_seen(self, table: str) -> int:
        return self.n_users_seen if table == "user" else self.n_items_seen

    def _cold_output(self, table: str) -> torch.Tensor | None:
        """The served row of an unseen id under the table's rule (None: each row its own)."""
        rule, cold = self._rule(table), getattr(self, f"{table}_cold")
        if rule == "learned":
            return cold
        if rule == "transfer":
            transfer = self.user_transfer if table == "user" else self.item_transfer
            row = cold.detach()[None, :]
            return transfer(row, row)[0]
        return None

    def _note_seen(self, period: Period) -> None:
        self.n_users_seen = max(self.n_users_seen, int(period.users.max()) + 1)
        self.n_items_seen = max(self.n_items_seen, int(period.items_seen[-1]))

    def _update(self, period: Period) -> None:
        incoming = _PeriodRows.of(period)
        self.step1_losses, self.step2_losses = [], []
        frozen = self.settings.freeze_when_scored and period.role in ("validation", "test")
        if self.foldin is not None and not frozen:
            self._fit_history(period)      # on D_{t+1}, with the model served before it
        if self.pending is not None:
            self._finish_period(self.pending, incoming, period, frozen)
            if self.offline_history and period.role != "offline":
                self._repeat_offline_passes(incoming, period)
        self._note_seen(period)
        self._begin_period(incoming, period, frozen)
        self.pending = incoming
        if self.settings.offline_passes > 1 and period.role == "offline":
            self.offline_history.append(incoming)
        if self.foldin is not None:
            self.foldin.receive(incoming.users, incoming.items)

    def _repeat_offline_passes(self, incoming: _PeriodRows, period: Period) -> None:
        """Walk the offline periods again (the transfer keeps learning; W_prev restarts from the
        model carried so far, as in the authors' multi-pass option), then forget their rows."""
        sequence = [*self.offline_history, incoming]
        for _ in range(self.settings.offline_passes - 1):
            for rows, next_rows in zip(sequence[:-1], sequence[1:]):
                self._begin_period(rows, period, frozen=False)
                self._finish_period(rows, next_rows, period, frozen=False)
        self.offline_history = []
    def score(self, period: Period, rows: slice, candidates: torch.Tensor) -> torch.Tensor:
        if self.foldin is not None:
            return self._history_scores(period, rows, candidates)
        users = to_tensor(period.users[rows], self.device)
        user_final, item_final = self.encoded_tables()
        return score_encoded(self.hat, user_final, item_final, users, candidates)

    # -- history-aware rows (strategies/foldin.py) -----------------------------------------
    def _untrained_users(self, users: np.ndarray) -> np.ndarray:
        """Users served the cold row (ids are numbered by first appearance)."""
        return np.asarray(users) >= self.n_users_seen

    def _history_scores(self, period: Period, rows: slice, candidates: torch.Tensor) -> torch.Tensor:
        users = np.asarray(period.users[rows], np.int64)
        user_final, item_final = self.encoded_tables()
        with torch.no_grad():
            vectors = self.foldin.user_rows(user_final[to_tensor(users, self.device)], item_final,
                                            self.foldin.contexts(period)[rows], self._untrained_users(users))
            return self.hat.candidate_scores(vectors, item_final, candidates.to(self.device))

    def _fit_history(self, period: Period) -> None:
        user_final, item_final = self.encoded_tables()
        self.foldin.fit(period, user_final, item_final, self._untrained_users(np.arange(self.n_users)))

    def score_new_users(self, candidates: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            cold = self._cold_output("user")
            if cold is None:
                raise ConfigError(f"{self.name}: cold_users = {self.settings.cold_users!r} has no row for "
                                  "an unknown user (use 'transfer' or 'learned')")
            vector = self.hat.isolated(cold.detach())   # an unknown id has no edges (LightGCN)
            return self.hat.candidate_scores(vector.expand(len(candidates), -1), self.encoded_tables()[1],
                                             candidates.to(self.device))

    def encoded_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final embeddings of the served tables (LightGCN: propagated over D_t's graph)."""
        cached = self._encoded
        if cached is None or cached[0] is not self.user_served or cached[1] is not self.item_served:
            with torch.no_grad():
                cached = (self.user_served, self.item_served, self.hat.encode(self.user_served, self.item_served))
            self._encoded = cached
        return cached[2]

    def _set_graph(self, users: np.ndarray, items: np.ndarray) -> None:
        """The data SML holds (D_t) as the base's graph; a no-op for bases without one."""
        self.hat.set_graph(users, items)
        self._encoded = None
        if self.hat.propagates:
            self._graph_nodes = (to_tensor(np.unique(users), self.device), to_tensor(np.unique(items), self.device))

    def reads_history(self) -> bool | None:
        return self.foldin is not None   # history = "fold-in" reads the user's last items

    def served_tables(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Final tables whose inner products are the scores (None when the base is not an inner
        product, e.g. NCF)."""
        if not self.hat.inner_product:
            return None
        user_final, item_final = self.encoded_tables()
        if self.foldin is not None:
            with torch.no_grad():
                user_final = self.foldin.baked_table(user_final, item_final,
                                                     self._untrained_users(np.arange(self.n_users)))
        return user_final, item_final

    # -- the schedule ----------------------------------------------------------------------
    def _begin_period(self, rows: _PeriodRows, period: Period, frozen: bool) -> None:
        """Round 0's step 1 on the new period, from Ŵ = W_prev; serve f_Θ(W_prev, Ŵ)."""
        self._set_graph(rows.users, rows.items)
        with torch.no_grad():
            self.hat.user.weight.copy_(self.user_prev)
            self.hat.item.weight.copy_(self.item_prev)
        epochs = (self.settings.frozen_step1_epochs or self.settings.step1_epochs) if frozen \
            else self.settings.step1_epochs
        self._step1(rows, period, epochs)
        self.user_served, self.item_served = self._transformed_tables(serve=True)

    def _finish_period(self, rows: _PeriodRows, incoming: _PeriodRows, period: Period,
                       frozen: bool) -> None:
        """Rounds of period t (whose round-0 step 1 is done) now that D_{t+1} is known; carry W_t."""
        s = self.settings
        self._set_graph(rows.users, rows.items)
        if frozen:
            carried = (self.user_served.clone(), self.item_served.clone())
            self._keep_unseen_rows(carried)
        else:
            step2_rows = incoming if s.step2_data == "next" else rows
            for round_index in range(s.rounds):
                if round_index > 0:
                    if s.round_start == "transferred":   # Ŵ := f_Θ(W_prev, Ŵ), in place
                        self._transformed_tables(into=(self.hat.user.weight.detach(),
                                                       self.hat.item.weight.detach()))
                    self._step1(rows, period, s.step1_epochs)
                self._step2(step2_rows)
            carried = self._transformed_tables()   # fresh tensors: nothing else holds them
        self._carry_cold_rows()
        self.user_prev, self.item_prev = carried

    def _transferred_rows(self, users: torch.Tensor, items: torch.Tensor, user_hat, item_hat
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Transferred user and item rows of a batch, computing f once per distinct row; ids not
        seen yet get their table's cold row (module doc)."""
        out = []
        for table, ids, hat in (("user", users, user_hat), ("item", items, item_hat)):
            rows, inverse = torch.unique(ids, return_inverse=True)
            transfer = self.user_transfer if table == "user" else self.item_transfer
            prev = getattr(self, f"{table}_prev")
            rule = self._rule(table)
            # Ids are numbered by first appearance: the unseen ones are the last distinct rows.
            n_warm = len(rows) if rule in ("every-row", "untrained") \
                else int(torch.searchsorted(rows, self._n_seen(table)))
            warm = rows[:n_warm]
            n_cold = len(rows) - n_warm
            if n_cold == 0:
                vectors = transfer(prev[warm], hat(warm))
            elif rule == "transfer":
                # f is row-wise, so the cold row c rides in the warm rows' call (one call, not two:
                # 10% of a Yelp-scale update): f(c, c) comes out last.
                cold = getattr(self, f"{table}_cold").detach()[None, :]
                merged = transfer(torch.cat([prev[warm], cold]), torch.cat([hat(warm), cold]))
                vectors = torch.cat([merged[:n_warm], merged[n_warm:].expand(n_cold, -1)])
            else:   # learned: the cold row itself, trained in step 2
                vectors = torch.cat([transfer(prev[warm], hat(warm)),
                                     self._cold_output(table).expand(n_cold, -1)])
            out.append(vectors[inverse])
        return out[0], out[1]

    def _batch_vectors(self, users: torch.Tensor, items: torch.Tensor, user_hat, item_hat
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user and item vectors of a batch through the transfer.

        Bases without propagation: the transferred rows themselves. LightGCN: a row's final
        embedding reads its graph neighbours, so every node of D_t's graph (and the batch's ids)
        is transferred, the layer-0 tables are propagated, and the batch's rows are read.
        """
        if not self.hat.propagates:
            return self._transferred_rows(users, items, user_hat, item_hat)
        graph_users, graph_items = self._graph_nodes
        user_nodes = torch.unique(torch.cat([graph_users, users]))
        item_nodes = torch.unique(torch.cat([graph_items, items]))
        user_rows, item_rows = self._transferred_rows(user_nodes, item_nodes, user_hat, item_hat)
        # Rows outside the graph and the batch are read by nobody: zeros keep the product cheap.
        user_table = user_rows.new_zeros(self.n_users, user_rows.shape[1]).index_put((user_nodes,), user_rows)
        item_table = item_rows.new_zeros(self.n_items, item_rows.shape[1]).index_put((item_nodes,), item_rows)
        user_final, item_final = self.hat.encode(user_table, item_table)
        return user_final[users], item_final[items]

    def _step1(self, rows: _PeriodRows, period: Period, epochs: int) -> None:
        """Fit Ŵ on D_t (negatives: items seen so far minus the user's history so far)."""
        s = self.settings
        users = to_tensor(rows.users, self.device)
        items = to_tensor(rows.items, self.device)
        sampler = PrefixNegativeSampler(rows.users, rows.positions, rows.items_seen, period.seen)
        hat = self.hat
        through = s.step1_through_transfer
        self._set_transfer_trainable(False)

        def batch_loss(batch: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor | LossParts:
            u = users[batch]
            both = torch.cat([items[batch], negatives])
            if through:
                u_vec, i_vec = self._batch_vectors(u, both, hat.user, hat.item)
            else:
                u_vec, i_vec = hat.batch_vectors(u, both)
            n = len(batch)
            scores = hat.pair_scores(u_vec.repeat(2, 1), i_vec)
            loss = hat.pair_loss(scores[:n], scores[n:])
            if s.l2_hat:
                # A sum over the batch's rows, not a mean: a data-parallel step must add it once
                # per chunk rather than weight it by the chunk's share, hence the separate part.
                l2 = hat.user(u).pow(2).sum() + hat.item(both).pow(2).sum()
                return LossParts(loss, s.l2_hat * 0.5 * l2)
            return loss

        optimizers = [self.hat_optimizer] + ([self.dense_optimizer] if self.dense_optimizer else [])
        self.step1_losses += train_epochs(batch_loss, optimizers, len(users), sampler, epochs,
                                          s.step1_batch_size, self.rng, self.device, data_parallel=True)
        self._set_transfer_trainable(True)

    def _step2(self, rows: _PeriodRows) -> None:
        """Fit Θ on the step-2 period with W_prev and Ŵ fixed (negatives: that period's items)."""
        s = self.settings
        users = to_tensor(rows.users, self.device)
        items = to_tensor(rows.items, self.device)
        user_hat = self.hat.user.weight.detach()
        item_hat = self.hat.item.weight.detach()
        hat = self.hat
        dense = list(dense_parameters(hat).values())   # fixed in step 2 (fitted in step 1)
        for parameter in dense:
            parameter.requires_grad_(False)

        def batch_loss(batch: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
            u = users[batch]
            both = torch.cat([items[batch], negatives])
            u_vec, i_vec = self._batch_vectors(u, both, user_hat.__getitem__, item_hat.__getitem__)
            n = len(batch)
            scores = hat.pair_scores(u_vec.repeat(2, 1), i_vec)
            return hat.pair_loss(scores[:n], scores[n:])

        self.step2_losses += train_epochs(batch_loss, [self.transfer_optimizer], len(users),
                                          SetNegativeSampler(rows.users, rows.items), s.step2_epochs,
                                          s.step2_batch_size, self.rng, self.device, data_parallel=True)
        for parameter in dense:
            parameter.requires_grad_(True)

    @torch.no_grad()
    def _transformed_tables(self, into: tuple[torch.Tensor, torch.Tensor] | None = None,
                            serve: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """f_Θ(W_prev, Ŵ) over every row of the ids seen so far; unseen rows by their cold rule
        (``new_users`` / ``new_items`` = "init": only in the served tables; carried ones keep their W_prev row).

        Written into ``into`` (which may be Ŵ's own tables) or new tensors: at Adressa scale a
        user table is ~120 MB, so no intermediate copy is made."""
        size = self.settings.table_batch_size
        out = []
        for index, (table, transfer, prev, hat) in enumerate((
                ("user", self.user_transfer, self.user_prev, self.hat.user.weight.detach()),
                ("item", self.item_transfer, self.item_prev, self.hat.item.weight.detach()))):
            n_seen = len(prev) if self._rule(table) == "every-row" else self._n_seen(table)
            result = torch.empty_like(prev) if into is None else into[index]
            transfer.transform_table(prev[:n_seen], hat[:n_seen], size, out=result[:n_seen])
            cold = self._cold_output(table) if serve or self._new_rows(table) == "cold" else None
            result[n_seen:] = prev[n_seen:] if cold is None else cold.detach()
            out.append(result)
        return out[0], out[1]

    def _keep_unseen_rows(self, tables: tuple[torch.Tensor, torch.Tensor]) -> None:
        """``new_users`` / ``new_items`` = "init": the unseen rows of ``tables`` (copies of the served ones) back to
        their W_prev rows, so the cold row is never what a new id starts from."""
        for table, result in zip(("user", "item"), tables):
            if self._rule(table) in ("transfer", "learned") and self._new_rows(table) == "init":
                n_seen = self._n_seen(table)
                result[n_seen:] = getattr(self, f"{table}_prev")[n_seen:]

    def _carry_cold_rows(self) -> None:
        """The "transfer" rule's cold row moves on with the model: c := f_Θ(c, c)."""
        with torch.no_grad():
            for table in ("user", "item"):
                if self._rule(table) == "transfer":
                    getattr(self, f"{table}_cold").copy_(self._cold_output(table))

    def _grow(self, n_users: int, n_items: int) -> None:
        """New rows start as the rows a replay over the whole log holds for ids not seen yet:
        the cold row (W_prev and Ŵ) and its served value for the "transfer" and "learned" rules;
        fresh MF rows (models/growth.py) for "untrained". "every-row" cannot grow (module doc)."""
        mf, seed = self.context.mf, self.context.seed
        for table, embedding, new_size in (("user", self.hat.user, n_users), ("item", self.hat.item, n_items)):
            old_size = embedding.num_embeddings
            if new_size == old_size:
                continue
            rule = self._rule(table)
            if rule == "every-row":
                raise ConfigError(f"{self.name}: cold_{table}s = 'every-row' transforms every row of the "
                                  "replay's tables each period, so new ids cannot be added later; use "
                                  "'transfer' or 'learned' for production")
            if rule == "untrained":
                fresh = init_rows(seed, table, old_size, new_size, mf.dim, mf.init_std).to(self.device)
                served = fresh
            else:
                with torch.no_grad():
                    fresh = getattr(self, f"{table}_cold").detach().expand(new_size - old_size, -1).clone() \
                        if self._new_rows(table) == "cold" \
                        else init_rows(seed, table, old_size, new_size, mf.dim, mf.init_std).to(self.device)
                    served = self._cold_output(table).detach().expand(new_size - old_size, -1).clone()
            grow_embedding(embedding, fresh, [self.hat_optimizer])
            setattr(self, f"{table}_prev", torch.cat([getattr(self, f"{table}_prev"), fresh]))
            setattr(self, f"{table}_served", torch.cat([getattr(self, f"{table}_served"), served]))
        if self.foldin is not None:
            self.foldin.grow(n_users)

    def _set_transfer_trainable(self, trainable: bool) -> None:
        for module in (self.user_transfer, self.item_transfer):
            for parameter in module.parameters():
                parameter.requires_grad_(trainable)

    # -- state -----------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        pending = None if self.pending is None else _rows_state(self.pending)
        return {"user_prev": self.user_prev.clone(), "item_prev": self.item_prev.clone(),
                "user_served": self.user_served.clone(), "item_served": self.item_served.clone(),
                "hat": self.hat.state_dict(), "user_transfer": self.user_transfer.state_dict(),
                "item_transfer": self.item_transfer.state_dict(),
                "hat_optimizer": self.hat_optimizer.state_dict(),
                "transfer_optimizer": self.transfer_optimizer.state_dict(), "pending": pending,
                "n_users_seen": self.n_users_seen, "n_items_seen": self.n_items_seen,
                "user_cold": self.user_cold.detach().clone(), "item_cold": self.item_cold.detach().clone(),
                "offline_history": [_rows_state(r) for r in self.offline_history],
                **({"dense_optimizer": self.dense_optimizer.state_dict()} if self.dense_optimizer else {}),
                **({"foldin": self.foldin.state()} if self.foldin is not None else {}),
                **self.hat.graph_state()}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.user_prev = state["user_prev"].clone().to(self.device)
        self.item_prev = state["item_prev"].clone().to(self.device)
        self.user_served = state["user_served"].clone().to(self.device)
        self.item_served = state["item_served"].clone().to(self.device)
        self.hat.load_state_dict(state["hat"])
        with torch.no_grad():
            self.user_cold.copy_(state["user_cold"])
            self.item_cold.copy_(state["item_cold"])
        self.user_transfer.load_state_dict(state["user_transfer"])
        self.item_transfer.load_state_dict(state["item_transfer"])
        self.hat_optimizer.load_state_dict(state["hat_optimizer"])
        if self.dense_optimizer is not None:
            self.dense_optimizer.load_state_dict(state["dense_optimizer"])
        if self.hat.propagates:
            self._set_graph(np.asarray(state["graph_users"]), np.asarray(state["graph_items"]))
        self.transfer_optimizer.load_state_dict(state["transfer_optimizer"])
        self.n_users_seen = int(state["n_users_seen"])
        self.n_items_seen = int(state["n_items_seen"])
        pending = state.get("pending")
        self.pending = None if pending is None else _rows_from_state(pending)
        self.offline_history = [_rows_from_state(r) for r in state.get("offline_history", [])]
        if self.foldin is not None:
            self.foldin.load_state(state["foldin"])


def _rows_state(rows: _PeriodRows) -> dict[str, np.ndarray]:
    return {"users": rows.users, "items": rows.items, "positions": rows.positions,
            "items_seen": rows.items_seen}


def _rows_from_state(state: dict[str, Any]) -> _PeriodRows:
    return _PeriodRows(*(np.asarray(state[k], dtype=np.int64)
                         for k in ("users", "items", "positions", "items_seen")))
