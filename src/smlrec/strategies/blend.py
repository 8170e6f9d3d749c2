"""``sml-blend``: SML and item neighbours combined per row by weights meta-trained on the next period.

The strategy holds an :class:`~smlrec.strategies.sml.SML` and an
:class:`~smlrec.strategies.neighbours.ItemKNN` (built from this strategy's settings, each with its
own seed stream) and serves, for row ``r`` and candidate ``c``::

    score(r, c) = a(r) * z_sml(r, c) + (1 - a(r)) * z_knn(r, c),   a(r) = sigmoid(w . x(r))

``z`` are each model's scores standardised over the row's candidates (``normalise = "zscore"``)
or their ranks scaled to [0, 1] (``"rank"``). ``x(r)`` are features known when row ``r`` is
scored, read from rows strictly before it (sml-method.md section 6): a constant 1,
``log(1 + rows of the user so far)``, whether the user has no row in earlier periods,
``log(1 + the user's rows earlier in this period)`` and ``log(1 + periods since the user's last
row)``; ``w`` has ``N_FEATURES`` numbers plus the cross-entropy's temperature.

Meta-training, SML's rule "optimise towards the next period": ``update(D_{t+1})`` first scores
D_{t+1}'s rows with the models currently served (trained on periods <= t) against
``negatives`` sampled negatives per row (the prefix pool: items seen up to the row minus the user's
items so far, data/sampling.py), fits ``w`` on those rows only (``steps`` full-batch Adam steps on
a smoothed sampled Recall, ``loss = "recall"``, or the softmax cross-entropy of the positive among
its negatives, ``"ce"``; warm-started from the previous ``w``), and only then updates SML and ItemKNN on D_{t+1}. So the ``w`` that serves period t+2 was
fitted on D_{t+1} with the models of period t; the scored period is never trained on before it is
scored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import require
from ..data.periods import Period
from ..data.sampling import sample_prefix_negatives
from .base import Strategy, StrategyContext
from .neighbours import ItemKNN, ItemKNNSettings
from .sml import SML, SMLSettings

N_FEATURES = 5
NORMALISERS = ("zscore", "rank")
LOSSES = ("recall", "ce")


@dataclass(frozen=True)
class BlendSettings(SMLSettings):
    """The inner SML's settings (every SMLSettings field), the inner ItemKNN's (``knn_*``) and the
    blend's own."""

    knn_window: int = 0
    knn_alpha: float = 0.7
    knn_neighbours: int = 100
    knn_history: int = 20
    knn_recency: float = 0.8
    normalise: str = "zscore"         # zscore | rank (per row, over its candidates)
    loss: str = "recall"              # recall (smoothed sampled Recall) | ce (softmax cross-entropy)
    negatives: int = 200              # sampled negatives per row of D_{t+1} in the meta-fit
    top_fraction: float = 0.02        # recall loss: the top share of the candidates that counts
                                      # (0.02: top 20 of the evaluation's 1000 = top 4 of 200)
    smoothing: float = 0.3            # recall loss: temperature of the pairwise comparisons
    steps: int = 100                  # full-batch Adam steps on w per period
    blend_lr: float = 0.05
    blend_l2: float = 1e-3            # on w (not its bias): keeps it small on short periods
    initial_sml_weight: float = 0.5   # a(r) before any fit (the bias starts at its logit)

    def __post_init__(self) -> None:
        super().__post_init__()
        ItemKNNSettings(**self.knn_settings_dict())   # the inner model's own checks
        require(self.normalise in NORMALISERS, "normalise", f"one of {', '.join(NORMALISERS)}", self.normalise)
        require(self.loss in LOSSES, "loss", f"one of {', '.join(LOSSES)}", self.loss)
        require(self.negatives >= 1, "negatives", ">= 1", self.negatives)
        require(0.0 < self.top_fraction <= 1.0, "top_fraction", "in (0, 1]", self.top_fraction)
        require(self.smoothing > 0, "smoothing", "> 0", self.smoothing)
        require(self.steps >= 0, "steps", ">= 0", self.steps)
        require(self.blend_lr > 0, "blend_lr", "> 0", self.blend_lr)
        require(self.blend_l2 >= 0, "blend_l2", ">= 0", self.blend_l2)
        require(0.0 < self.initial_sml_weight < 1.0, "initial_sml_weight", "in (0, 1)", self.initial_sml_weight)

    def sml_settings(self) -> SMLSettings:
        return SMLSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SMLSettings)})

    def knn_settings_dict(self) -> dict[str, Any]:
        return {"window": self.knn_window, "alpha": self.knn_alpha, "neighbours": self.knn_neighbours,
                "history": self.knn_history, "recency": self.knn_recency}


def normalise_scores(scores: torch.Tensor, valid: torch.Tensor, how: str) -> torch.Tensor:
    """Per-row standardised scores (``zscore``) or ranks in [0, 1] (``rank``, ties share the
    lower rank) over the row's valid candidates; invalid (padding) entries become 0."""
    scores = scores.double()
    count = valid.sum(dim=1, keepdim=True).clamp(min=1)
    if how == "zscore":
        masked = torch.where(valid, scores, torch.zeros_like(scores))
        mean = masked.sum(dim=1, keepdim=True) / count
        var = (torch.where(valid, scores - mean, torch.zeros_like(scores)) ** 2).sum(dim=1, keepdim=True) / count
        out = (scores - mean) / (var.sqrt() + 1e-9)
    else:
        # rank = number of valid candidates scoring strictly lower, over (count - 1)
        filled = torch.where(valid, scores, torch.full_like(scores, float("inf")))
        ordered, _ = torch.sort(filled, dim=1)
        below = torch.searchsorted(ordered.contiguous(), scores.contiguous(), right=False)
        out = below.double() / (count - 1).clamp(min=1)
    return torch.where(valid, out, torch.zeros_like(out))


def smoothed_recall_loss(scores: torch.Tensor, top: float, smoothing: float) -> torch.Tensor:
    """Minus a smooth sampled Recall: column 0 is the positive; its rank among the negatives is
    ``sum sigmoid((s_neg - s_pos) / smoothing)`` and a hit is ``sigmoid(top - rank)``.

    Chosen over cross-entropy on the validation periods: cross-entropy rewards lifting a positive
    from the bottom to the middle, which the neighbour model cannot do for items without
    neighbours and SML can, so it pulls the weight towards SML while Recall@20 only counts the top.
    """
    rank = torch.sigmoid((scores[:, 1:] - scores[:, :1]) / smoothing).sum(dim=1)
    return -torch.sigmoid(top - rank).mean()


def blend(a: torch.Tensor, z_sml: torch.Tensor, z_knn: torch.Tensor) -> torch.Tensor:
    return a[:, None] * z_sml + (1.0 - a[:, None]) * z_knn


class SMLBlend(Strategy):
    """SML and ItemKNN blended per row by weights fitted on the next period (module doc)."""

    name = "sml-blend"
    calibrated_scores = False
    history = "itemknn's last 20 items before the row; blend features from the user's row counts before the row"

    def __init__(self, settings: BlendSettings, context: StrategyContext) -> None:
        super().__init__(settings, context)
        own = context.name or self.name
        self.sml = SML(settings.sml_settings(), dataclasses.replace(context, name=f"{own}:sml"))
        self.knn = ItemKNN(ItemKNNSettings(**settings.knn_settings_dict()),
                           dataclasses.replace(context, name=f"{own}:itemknn"))
        p = settings.initial_sml_weight
        self.w = torch.zeros(N_FEATURES + 1, dtype=torch.float64)   # features, then log temperature
        self.w[0] = float(np.log(p / (1 - p)))
        self.user_rows = np.zeros(context.n_users, dtype=np.int64)       # rows received per user
        self.user_last_block = np.full(context.n_users, -1, dtype=np.int64)
        self.blocks = 0
        self.fit_log: list[dict[str, Any]] = []   # per meta-fit: the period fitted on, rows, losses

    # -- lifecycle -------------------------------------------------------------------------
    def _start(self, pretrain: Period, initial_state: dict[str, torch.Tensor]) -> None:
        self.sml.start(pretrain, initial_state)
        self.knn.start(pretrain, initial_state)
        self._receive(pretrain)

    def _update(self, period: Period) -> None:
        self.fit_weights(period)           # the served models, trained on periods <= t, score D_{t+1}
        self.sml.update(period)
        self.knn.update(period)
        self._receive(period)

    def _receive(self, period: Period) -> None:
        users = np.asarray(period.users, dtype=np.int64)
        np.add.at(self.user_rows, users, 1)
        self.user_last_block[users] = self.blocks
        self.blocks += 1

    # -- features and scores ---------------------------------------------------------------
    def features(self, period: Period, rows: slice) -> torch.Tensor:
        """``[n, N_FEATURES]`` features of the period's rows ``rows``, from rows strictly before each."""
        users = np.asarray(period.users, dtype=np.int64)
        stop = len(users) if rows.stop is None else rows.stop
        before = _earlier_in_period(users[:stop])[rows]
        chosen = users[rows]
        earlier = self.user_rows[chosen]
        last = self.user_last_block[chosen]
        gap = np.where(before > 0, 0, np.where(last >= 0, self.blocks - 1 - last, 0))
        x = np.stack([np.ones(len(chosen)), np.log1p(earlier + before), (earlier == 0).astype(np.float64),
                      np.log1p(before), np.log1p(gap)], axis=1)
        return torch.from_numpy(x)

    def sml_weight(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x @ self.w[:N_FEATURES])

    def _parts(self, period: Period, rows: slice, candidates: torch.Tensor) -> tuple[torch.Tensor, ...]:
        valid = candidates.cpu() >= 0
        safe = candidates.clamp(min=0)
        with torch.no_grad():
            z_sml = normalise_scores(self.sml.score(period, rows, safe).cpu(), valid, self.settings.normalise)
            z_knn = normalise_scores(self.knn.score(period, rows, safe).cpu(), valid, self.settings.normalise)
        return self.features(period, rows), z_sml, z_knn

    def score(self, period: Period, rows: slice, candidates: torch.Tensor) -> torch.Tensor:
        x, z_sml, z_knn = self._parts(period, rows, candidates)
        return blend(self.sml_weight(x), z_sml, z_knn).float().to(self.device)

    def score_new_users(self, candidates: torch.Tensor) -> torch.Tensor:
        valid = candidates.cpu() >= 0
        safe = candidates.clamp(min=0)
        with torch.no_grad():
            z_sml = normalise_scores(self.sml.score_new_users(safe).cpu(), valid, self.settings.normalise)
            z_knn = normalise_scores(self.knn.score_new_users(safe).cpu(), valid, self.settings.normalise)
        x = torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0]], dtype=torch.float64).expand(len(z_sml), -1)
        return blend(self.sml_weight(x), z_sml, z_knn).float().to(self.device)

    # -- the meta-fit ----------------------------------------------------------------------
    def fit_weights(self, period: Period) -> None:
        """Fit ``w`` on ``period`` (D_{t+1}) scored by the models served now (module doc)."""
        s = self.settings
        users = np.asarray(period.users, dtype=np.int64)
        negatives = np.stack([sample_prefix_negatives(users, period.positions, period.items_seen, period.seen,
                                                      self.rng) for _ in range(s.negatives)], axis=1)
        candidates = torch.from_numpy(np.concatenate([np.asarray(period.items, np.int64)[:, None], negatives],
                                                     axis=1))
        x, z_sml, z_knn = self._parts(period, slice(0, len(users)), candidates)
        w = self.w.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([w], lr=s.blend_lr)
        target = torch.zeros(len(users), dtype=torch.long)      # the positive is column 0
        losses = []
        with torch.enable_grad():      # an update may be called under no_grad (serving code)
            for _ in range(s.steps):
                optimizer.zero_grad()
                a = torch.sigmoid(x @ w[:N_FEATURES])
                blended = blend(a, z_sml, z_knn)
                if s.loss == "ce":
                    loss = torch.nn.functional.cross_entropy(blended * torch.exp(w[N_FEATURES]), target)
                else:
                    loss = smoothed_recall_loss(blended, s.top_fraction * s.negatives, s.smoothing)
                losses.append(float(loss.detach()))
                (loss + s.blend_l2 * w[1:N_FEATURES].pow(2).sum()).backward()
                optimizer.step()
        self.w = w.detach().clone()
        self.fit_log.append({"period": period.index, "role": period.role, "rows": len(users),
                             "sml_periods_seen": self.sml.periods_seen, "knn_blocks": self.knn.blocks,
                             "loss_first": losses[0] if losses else None,
                             "loss_last": losses[-1] if losses else None})

    # -- production ------------------------------------------------------------------------
    def _grow(self, n_users: int, n_items: int) -> None:
        """Both inner models grow by their own rules; new users have no rows yet."""
        self.sml.grow(n_users, n_items)
        self.knn.grow(n_users, n_items)
        extra = n_users - len(self.user_rows)
        self.user_rows = np.concatenate([self.user_rows, np.zeros(extra, dtype=np.int64)])
        self.user_last_block = np.concatenate([self.user_last_block, np.full(extra, -1, dtype=np.int64)])

    def _state(self) -> dict[str, Any]:
        return {"sml": self.sml.state_dict(), "knn": self.knn.state_dict(), "w": self.w.clone(),
                "user_rows": self.user_rows.copy(), "user_last_block": self.user_last_block.copy(),
                "blocks": self.blocks}

    def _load_state(self, state: dict[str, Any]) -> None:
        w = torch.as_tensor(state["w"], dtype=torch.float64)
        if w.shape != (N_FEATURES + 1,):
            raise ValueError(f"w of shape {tuple(w.shape)}, expected ({N_FEATURES + 1},)")
        user_rows = np.asarray(state["user_rows"], dtype=np.int64)
        if user_rows.shape != (self.n_users,):
            raise ValueError(f"user_rows of shape {user_rows.shape}, expected ({self.n_users},)")
        self.sml.load_state_dict(state["sml"])
        self.knn.load_state_dict(state["knn"])
        self.w = w.clone()
        self.user_rows = user_rows.copy()
        self.user_last_block = np.asarray(state["user_last_block"], dtype=np.int64).copy()
        self.blocks = int(state["blocks"])


def _earlier_in_period(users: np.ndarray) -> np.ndarray:
    """For each row, how many rows of the same user come before it in ``users`` (vectorised)."""
    order = np.argsort(users, kind="stable")
    sorted_users = users[order]
    start = np.ones(len(users), dtype=bool)
    start[1:] = sorted_users[1:] != sorted_users[:-1]
    group_start = np.maximum.accumulate(np.where(start, np.arange(len(users)), 0))
    out = np.empty(len(users), dtype=np.int64)
    out[order] = np.arange(len(users)) - group_start
    return out


def earlier_in_period_reference(users: np.ndarray) -> np.ndarray:
    """Slow twin of :func:`_earlier_in_period`."""
    seen: dict[int, int] = {}
    out = []
    for user in users:
        out.append(seen.get(int(user), 0))
        seen[int(user)] = seen.get(int(user), 0) + 1
    return np.array(out, dtype=np.int64)
