"""``sml-blend``: SML and other history-aware models mixed per row by weights meta-trained on the next period.

The strategy holds an :class:`~smlrec.strategies.sml.SML` and the models named in ``components``
(any of ``itemknn``, ``sknn``, ``ials``, ``pop-recent``, ``ease`` and the counted priors
``new-items`` and ``period-pop`` of strategies/novelty.py; each built with its own seed
stream ``<name>:<component>``) and serves, for row ``r`` and candidate ``c``::

    score(r, c) = sum_k a_k(r) * z_k(r, c)

``z_k`` are model k's scores standardised over the row's candidates (``normalise = "zscore"``)
or their ranks scaled to [0, 1] (``"rank"``). The weights are ``gate = "softmax"``:
``a(r) = softmax(W x(r))`` over the K models, the last model's logit fixed at 0 (so with one
component ``a_sml = sigmoid(w . x)``, the original two-model form), or ``gate = "sigmoid"``:
``a_k(r) = sigmoid(W_k . x(r))``, one free gate per model. ``x(r)`` are features known when row
``r`` is scored, read from rows strictly before it (sml-method.md section 6): a constant 1,
``log(1 + rows of the user so far)``, whether the user has no row in earlier periods,
``log(1 + the user's rows earlier in this period)``, ``log(1 + periods since the user's last
row)`` and, with ``features = "counts+share"``, the share of the user's rows so far that fall
in the current period. The cross-entropy loss also learns one temperature.

Meta-training, SML's rule "optimise towards the next period": ``update(D_{t+1})`` first scores
D_{t+1}'s rows with the models currently served (trained on periods <= t) against
``negatives`` sampled negatives per row (the prefix pool: items seen up to the row minus the user's
items so far, data/sampling.py), fits ``W`` on those rows only (``steps`` full-batch Adam steps on
a smoothed sampled Recall, ``loss = "recall"``, or the softmax cross-entropy of the positive among
its negatives, ``"ce"``; warm-started from the previous ``W``), and only then updates every model
on D_{t+1}. So the ``W`` that serves period t+2 was fitted on D_{t+1} with the models of period t;
the scored period is never trained on before it is scored.

``ease`` holds dense item x item matrices: when the log has more items than ``EASESettings``'
``max_items`` it is left out of the blend with a logged note (not an error).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..config import require
from ..data.periods import Period
from ..data.sampling import sample_prefix_negatives
from .base import Strategy, StrategyContext
from .linear import EASE, IALS, EASESettings, IALSSettings
from .neighbours import SKNN, ItemKNN, ItemKNNSettings, SKNNSettings
from .novelty import NoveltyScores, NoveltySettings
from .popularity import Popularity, PopularitySettings
from .sml import SML, SMLSettings

log = logging.getLogger(__name__)

BASE_FEATURES = 5
FEATURE_SETS = {"counts": BASE_FEATURES, "counts+share": BASE_FEATURES + 1}
N_FEATURES = BASE_FEATURES        # the default feature set's width
NORMALISERS = ("zscore", "rank")
LOSSES = ("recall", "ce")
GATES = ("softmax", "sigmoid")
COMPONENTS = ("itemknn", "sknn", "ials", "pop-recent", "ease", "new-items", "period-pop")
# The two counted priors of strategies/novelty.py as components: "new-items" counts the scored
# period's earlier rows of items first seen at most 2 periods ago (the form chosen on a news log),
# "period-pop" those of every item plus its count in the last period (the form chosen for itemknn
# on the bundled data); docs/new-items.md.
ANY_AGE = 1_000_000
PRIORS = ("new-items", "period-pop")
DEFAULT_COMPONENTS = "itemknn,sknn,ials,pop-recent,ease"


def parse_components(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class BlendSettings(SMLSettings):
    """The inner SML's settings (every SMLSettings field), the inner ItemKNN's (``knn_*``) and the
    blend's own. The other components run their registered defaults (pop-recent: decay 0.5)."""

    # the models blended with SML (COMPONENTS): every model, the best list on the bundled data's
    # validation periods without the priors (.3756). With them validation is higher (.3888), but
    # they count the scored period's rows, which production sees only at update, so they are
    # opt-in (docs/sml-blend.md); "itemknn" alone is the original two-model blend
    components: str = DEFAULT_COMPONENTS
    gate: str = "softmax"             # softmax over the models | sigmoid (one gate per model)
    features: str = "counts"          # counts | counts+share (module doc)
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
    steps: int = 100                  # full-batch Adam steps on W per period
    blend_lr: float = 0.05
    blend_l2: float = 1e-3            # on W (not its biases): keeps it small on short periods
    initial_sml_weight: float = 0.5   # SML's weight before any fit (the rest share 1 - it equally)

    def __post_init__(self) -> None:
        super().__post_init__()
        ItemKNNSettings(**self.knn_settings_dict())   # the inner model's own checks
        names = parse_components(self.components)
        require(len(names) >= 1 and all(n in COMPONENTS for n in names), "components",
                f"a comma-separated list of {', '.join(COMPONENTS)}", self.components)
        require(len(set(names)) == len(names), "components", "no model twice", self.components)
        require(self.gate in GATES, "gate", f"one of {', '.join(GATES)}", self.gate)
        require(self.features in FEATURE_SETS, "features", f"one of {', '.join(FEATURE_SETS)}", self.features)
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

    def component_names(self) -> tuple[str, ...]:
        return parse_components(self.components)


def _component_builders(settings: BlendSettings) -> dict[str, Callable[[StrategyContext], Strategy]]:
    return {"itemknn": lambda c: ItemKNN(ItemKNNSettings(**settings.knn_settings_dict()), c),
            "sknn": lambda c: SKNN(SKNNSettings(), c),
            "ials": lambda c: IALS(IALSSettings(), c),
            "pop-recent": lambda c: Popularity(PopularitySettings(decay=0.5), c),
            "ease": lambda c: EASE(EASESettings(), c),
            "new-items": lambda c: NoveltyScores(NoveltySettings(max_age=2), c),
            "period-pop": lambda c: NoveltyScores(NoveltySettings(max_age=ANY_AGE, carry=1.0), c)}


def served_components(settings: BlendSettings, n_items: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the models blended with SML, those left out): ease is left out when the log holds more
    items than its ``max_items``."""
    kept, dropped = [], []
    for name in settings.component_names():
        (dropped if name == "ease" and n_items > EASESettings().max_items else kept).append(name)
    return tuple(kept), tuple(dropped)


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


def mixture_weights(W: torch.Tensor, x: torch.Tensor, gate: str) -> torch.Tensor:
    """``[n, K]`` weights of the K models for features ``x`` ``[n, F]``. ``softmax``: ``W`` is
    ``[K-1, F]``, the last model's logit is 0; ``sigmoid``: ``W`` is ``[K, F]``."""
    logits = x @ W.T
    if gate == "sigmoid":
        return torch.sigmoid(logits)
    return torch.softmax(torch.cat([logits, torch.zeros(len(x), 1, dtype=logits.dtype)], dim=1), dim=1)


def mix(weights: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
    """``sum_k weights[:, k] * parts[k]`` for ``parts`` ``[K, n, C]``."""
    return torch.einsum("nk,knc->nc", weights, parts)


def blend(a: torch.Tensor, z_sml: torch.Tensor, z_knn: torch.Tensor) -> torch.Tensor:
    """The two-model form: ``a * z_sml + (1 - a) * z_knn``."""
    return a[:, None] * z_sml + (1.0 - a[:, None]) * z_knn


def initial_weights(k: int, n_features: int, gate: str, sml_weight: float) -> torch.Tensor:
    """``W`` before any fit: SML at ``sml_weight``, the other models sharing the rest equally
    (SML alone, when ease was the only component and was left out: weight 1 whatever ``W``)."""
    if k == 1:
        W = torch.zeros(1 if gate == "sigmoid" else 0, n_features, dtype=torch.float64)
        if gate == "sigmoid":
            W[0, 0] = float(np.log(sml_weight / (1 - sml_weight)))
        return W
    rest = (1.0 - sml_weight) / (k - 1)
    if gate == "sigmoid":
        W = torch.zeros(k, n_features, dtype=torch.float64)
        W[0, 0] = float(np.log(sml_weight / (1 - sml_weight)))
        W[1:, 0] = float(np.log(rest / (1 - rest))) if rest < 1 else 0.0
        return W
    W = torch.zeros(k - 1, n_features, dtype=torch.float64)
    W[0, 0] = float(np.log(sml_weight / rest))       # logits relative to the last model's 0
    return W


class SMLBlend(Strategy):
    """SML and history-aware models blended per row by weights fitted on the next period (module doc)."""

    name = "sml-blend"
    calibrated_scores = False
    history = ("the components' own history rules (itemknn: last 20 items before the row); blend "
               "features from the user's row counts before the row")

    def __init__(self, settings: BlendSettings, context: StrategyContext) -> None:
        super().__init__(settings, context)
        own = context.name or self.name
        kept, self.dropped = served_components(settings, context.n_items)
        for name in self.dropped:
            log.warning("%s: %s left out of the blend: the log has %d items, above its max_items %d",
                        own, name, context.n_items, EASESettings().max_items)
        builders = _component_builders(settings)
        self.names = ("sml",) + kept
        self.period_counts = any(name in PRIORS for name in kept)   # type: ignore[misc]
        self.models: list[Strategy] = [SML(settings.sml_settings(), dataclasses.replace(context, name=f"{own}:sml"))]
        self.models += [builders[name](dataclasses.replace(context, name=f"{own}:{name}")) for name in kept]
        self.n_features = FEATURE_SETS[settings.features]
        self.W = initial_weights(len(self.models), self.n_features, settings.gate, settings.initial_sml_weight)
        self.log_temperature = torch.zeros((), dtype=torch.float64)
        self.user_rows = np.zeros(context.n_users, dtype=np.int64)       # rows received per user
        self.user_last_block = np.full(context.n_users, -1, dtype=np.int64)
        self.blocks = 0
        self.fit_log: list[dict[str, Any]] = []   # per meta-fit: the period fitted on, rows, losses

    @property
    def sml(self) -> SML:
        return self.models[0]   # type: ignore[return-value]

    def model(self, name: str) -> Strategy:
        return self.models[self.names.index(name)]

    # -- lifecycle -------------------------------------------------------------------------
    def _start(self, pretrain: Period, initial_state: dict[str, torch.Tensor]) -> None:
        for model in self.models:
            model.start(pretrain, initial_state)
        self._receive(pretrain)

    def _update(self, period: Period) -> None:
        self.fit_weights(period)           # the served models, trained on periods <= t, score D_{t+1}
        for model in self.models:
            model.update(period)
        self._receive(period)

    def _receive(self, period: Period) -> None:
        users = np.asarray(period.users, dtype=np.int64)
        np.add.at(self.user_rows, users, 1)
        self.user_last_block[users] = self.blocks
        self.blocks += 1

    # -- features and scores ---------------------------------------------------------------
    def features(self, period: Period, rows: slice) -> torch.Tensor:
        """``[n, n_features]`` features of the period's rows ``rows``, from rows strictly before each."""
        users = np.asarray(period.users, dtype=np.int64)
        stop = len(users) if rows.stop is None else rows.stop
        before = _earlier_in_period(users[:stop])[rows]
        chosen = users[rows]
        earlier = self.user_rows[chosen]
        last = self.user_last_block[chosen]
        gap = np.where(before > 0, 0, np.where(last >= 0, self.blocks - 1 - last, 0))
        columns = [np.ones(len(chosen)), np.log1p(earlier + before), (earlier == 0).astype(np.float64),
                   np.log1p(before), np.log1p(gap)]
        if self.n_features > BASE_FEATURES:
            columns.append(before / np.maximum(earlier + before, 1))
        return torch.from_numpy(np.stack(columns, axis=1))

    def new_user_features(self, n: int) -> torch.Tensor:
        x = torch.zeros(n, self.n_features, dtype=torch.float64)
        x[:, 0] = 1.0
        x[:, 2] = 1.0
        return x

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, K]`` weights of the models (``self.names`` order) for features ``x``."""
        return mixture_weights(self.W, x, self.settings.gate)

    def sml_weight(self, x: torch.Tensor) -> torch.Tensor:
        return self.weights(x)[:, 0]

    def parts(self, period: Period, rows: slice, candidates: torch.Tensor) -> torch.Tensor:
        """``[K, n, C]`` normalised scores of every model."""
        valid = candidates.cpu() >= 0
        safe = candidates.clamp(min=0)
        with torch.no_grad():
            return torch.stack([normalise_scores(m.score(period, rows, safe).cpu(), valid, self.settings.normalise)
                                for m in self.models])

    def score(self, period: Period, rows: slice, candidates: torch.Tensor) -> torch.Tensor:
        z = self.parts(period, rows, candidates)
        return mix(self.weights(self.features(period, rows)), z).float().to(self.device)

    def score_new_users(self, candidates: torch.Tensor) -> torch.Tensor:
        valid = candidates.cpu() >= 0
        safe = candidates.clamp(min=0)
        with torch.no_grad():
            z = torch.stack([normalise_scores(m.score_new_users(safe).cpu(), valid, self.settings.normalise)
                             for m in self.models])
        return mix(self.weights(self.new_user_features(z.shape[1])), z).float().to(self.device)

    # -- the meta-fit ----------------------------------------------------------------------
    def fit_weights(self, period: Period) -> None:
        """Fit ``W`` on ``period`` (D_{t+1}) scored by the models served now (module doc)."""
        s = self.settings
        users = np.asarray(period.users, dtype=np.int64)
        negatives = np.stack([sample_prefix_negatives(users, period.positions, period.items_seen, period.seen,
                                                      self.rng) for _ in range(s.negatives)], axis=1)
        candidates = torch.from_numpy(np.concatenate([np.asarray(period.items, np.int64)[:, None], negatives],
                                                     axis=1))
        rows = slice(0, len(users))
        x, z = self.features(period, rows), self.parts(period, rows, candidates)
        W, log_t, losses = fit_mixture(self.W, self.log_temperature, x, z, s)
        self.W, self.log_temperature = W, log_t
        self.fit_log.append({"period": period.index, "role": period.role, "rows": len(users),
                             "sml_periods_seen": self.sml.periods_seen,
                             "loss_first": losses[0] if losses else None,
                             "loss_last": losses[-1] if losses else None})

    # -- production ------------------------------------------------------------------------
    def _grow(self, n_users: int, n_items: int) -> None:
        """Every model grows by its own rules; new users have no rows yet."""
        for model in self.models:
            model.grow(n_users, n_items)
        extra = n_users - len(self.user_rows)
        self.user_rows = np.concatenate([self.user_rows, np.zeros(extra, dtype=np.int64)])
        self.user_last_block = np.concatenate([self.user_last_block, np.full(extra, -1, dtype=np.int64)])

    def _state(self) -> dict[str, Any]:
        return {"models": {name: m.state_dict() for name, m in zip(self.names, self.models)},
                "W": self.W.clone(), "log_temperature": self.log_temperature.clone(),
                "user_rows": self.user_rows.copy(), "user_last_block": self.user_last_block.copy(),
                "blocks": self.blocks}

    def _load_state(self, state: dict[str, Any]) -> None:
        W = torch.as_tensor(state["W"], dtype=torch.float64)
        if W.shape != self.W.shape:
            raise ValueError(f"W of shape {tuple(W.shape)}, expected {tuple(self.W.shape)} "
                             f"(models {', '.join(self.names)}, features {self.settings.features!r})")
        if set(state["models"]) != set(self.names):
            raise ValueError(f"states of models {sorted(state['models'])}, expected {sorted(self.names)}")
        user_rows = np.asarray(state["user_rows"], dtype=np.int64)
        if user_rows.shape != (self.n_users,):
            raise ValueError(f"user_rows of shape {user_rows.shape}, expected ({self.n_users},)")
        for name, model in zip(self.names, self.models):
            model.load_state_dict(state["models"][name])
        self.W = W.clone()
        self.log_temperature = torch.as_tensor(state["log_temperature"], dtype=torch.float64).clone()
        self.user_rows = user_rows.copy()
        self.user_last_block = np.asarray(state["user_last_block"], dtype=np.int64).copy()
        self.blocks = int(state["blocks"])


def fit_mixture(W: torch.Tensor, log_temperature: torch.Tensor, x: torch.Tensor, z: torch.Tensor,
                s: BlendSettings) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """``s.steps`` full-batch Adam steps from ``W`` on rows ``x`` ``[n, F]`` with normalised scores
    ``z`` ``[K, n, C]`` (column 0 the positive); returns the new ``W``, temperature and losses."""
    W = W.clone().requires_grad_(True)
    log_t = log_temperature.clone().requires_grad_(True)
    params = [W, log_t] if s.loss == "ce" else [W]
    optimizer = torch.optim.Adam(params, lr=s.blend_lr)
    target = torch.zeros(len(x), dtype=torch.long)      # the positive is column 0
    losses = []
    with torch.enable_grad():      # an update may be called under no_grad (serving code)
        for _ in range(s.steps):
            optimizer.zero_grad()
            blended = mix(mixture_weights(W, x, s.gate), z)
            if s.loss == "ce":
                loss = torch.nn.functional.cross_entropy(blended * torch.exp(log_t), target)
            else:
                loss = smoothed_recall_loss(blended, s.top_fraction * (z.shape[2] - 1), s.smoothing)
            losses.append(float(loss.detach()))
            (loss + s.blend_l2 * W[:, 1:].pow(2).sum()).backward()
            optimizer.step()
    return W.detach().clone(), log_t.detach().clone(), losses


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
