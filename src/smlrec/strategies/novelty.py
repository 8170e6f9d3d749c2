"""A counted prior for items first seen recently, and a wrapper that adds it to any strategy.

Every strategy scores an item it has not trained on (one first seen in the scored period, or in
the last period) at its mean item row or count 0, so a brand-new item almost never reaches the
top 20; on news-like logs (``smlrec synth --regime news``) a new item is the likely one. The
prior counts what can be known at row ``r`` of the scored period without leaking:

* ``age(i)``: periods since item ``i`` was first seen, counted in updates (0: first seen in the
  scored period, at a row before ``r``); an item not seen before row ``r`` has no prior;
* ``n(i, r)``: how often ``i`` occurs in the scored period's rows ``max(0, r - window) .. r-1``
  (``window = 0``: every earlier row of the period), plus ``carry`` times its count in the last
  period the strategy was updated with;

    prior(i, r) = log(1 + n(i, r))   if age(i) <= max_age,   else 0.

Row ``r`` itself and later rows are never read (sml-method.md section 6). Only rows the log
records count: production's query period holds one placeholder row per user, which the log's
pair index does not hold at that position, so it adds nothing.

:class:`NoveltyTracker` keeps what the prior needs between periods (first-seen update, last
period's counts) and computes it for ``(period, rows, candidates)`` (vectorised; the test suite
compares it with a per-row twin). :class:`WithNovelty` wraps a registered strategy: its scores
are the inner strategy's scores z-scored per row over the candidates, plus ``weight * prior``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch

from ..config import require
from ..data.periods import Period
from ..errors import ConfigError
from .base import Strategy, StrategyContext

NEVER = -1   # first_seen of an item no update has shown


@dataclass(frozen=True)
class NoveltySettings:
    """The form of the prior. Defaults chosen on the validation periods of a news log
    (docs/new-items.md): every earlier row of the period, nothing carried from the last one."""

    max_age: int = 2        # items first seen at most this many periods before the scored one
    window: int = 0         # earlier rows of the scored period counted (0: all of them)
    carry: float = 0.0      # weight of the item's count in the last updated period

    def __post_init__(self) -> None:
        require(self.max_age >= 0, "max_age", ">= 0", self.max_age)
        require(self.window >= 0, "window", ">= 0", self.window)
        require(self.carry >= 0.0, "carry", ">= 0", self.carry)


class NoveltyTracker:
    """First-seen update and last-period counts of every item; the prior of candidates at rows."""

    def __init__(self, settings: NoveltySettings, n_items: int) -> None:
        self.settings = settings
        self.first_seen = np.full(n_items, NEVER, dtype=np.int64)
        self.last_counts = np.zeros(n_items, dtype=np.float64)
        self.clock = 0            # updates so far; the scored period is number ``clock``
        self._period_key: tuple | None = None
        self._occurrences: np.ndarray = np.zeros(0, dtype=np.int64)
        self._first_row: np.ndarray = np.zeros(0, dtype=np.int64)

    @property
    def n_items(self) -> int:
        return len(self.first_seen)

    def observe(self, items: np.ndarray) -> None:
        """An update with these rows: they become the last period; unseen items get this clock."""
        items = np.asarray(items, dtype=np.int64)
        new = np.unique(items)
        new = new[self.first_seen[new] == NEVER]
        self.first_seen[new] = self.clock
        self.last_counts = np.bincount(items, minlength=self.n_items).astype(np.float64)
        self.clock += 1
        self._period_key = None

    def grow(self, n_items: int) -> None:
        extra = n_items - self.n_items
        self.first_seen = np.concatenate([self.first_seen, np.full(extra, NEVER, dtype=np.int64)])
        self.last_counts = np.concatenate([self.last_counts, np.zeros(extra)])
        self._period_key = None

    def state(self) -> dict[str, Any]:
        return {"first_seen": self.first_seen.copy(), "last_counts": self.last_counts.copy(),
                "clock": self.clock}

    def load_state(self, state: dict[str, Any]) -> None:
        first_seen = np.asarray(state["first_seen"], dtype=np.int64)
        last_counts = np.asarray(state["last_counts"], dtype=np.float64)
        if first_seen.shape != (self.n_items,) or last_counts.shape != (self.n_items,):
            raise ValueError(f"novelty tables of shape {first_seen.shape} and {last_counts.shape}, "
                             f"expected ({self.n_items},)")
        self.first_seen, self.last_counts = first_seen.copy(), last_counts.copy()
        self.clock = int(state["clock"])
        self._period_key = None

    # -- the prior ---------------------------------------------------------------------------
    def _index(self, period: Period) -> None:
        """Sorted keys ``item * L + row`` of the period's recorded rows, and each item's first row."""
        # The period itself is held, so a later period can never pass for it (an id can be reused).
        if self._period_key is not None and self._period_key[0] is period:
            return
        n = len(period)
        items = np.asarray(period.items, dtype=np.int64)
        rows = np.arange(n, dtype=np.int64)
        recorded = period.seen.contains(np.asarray(period.users, np.int64), items, period.start + rows)
        items, rows = items[recorded], rows[recorded]
        self._occurrences = np.sort(items * max(n, 1) + rows)
        first_row = np.full(self.n_items, n, dtype=np.int64)
        np.minimum.at(first_row, items, rows)
        self._first_row = first_row
        self._period_key = (period,)

    def prior(self, period: Period, rows: slice, candidates: np.ndarray) -> np.ndarray:
        """``[len(rows), C]`` prior of ``candidates`` (item indices) at rows ``rows`` of the scored
        ``period``, reading its rows strictly before each row only."""
        self._index(period)
        cands = np.asarray(candidates, dtype=np.int64)
        n = max(len(period), 1)
        r = np.arange(rows.start, rows.stop, dtype=np.int64)[:, None]
        lo = np.zeros_like(r) if self.settings.window == 0 else np.maximum(r - self.settings.window, 0)
        base = cands * n
        counts = (np.searchsorted(self._occurrences, base + r, side="left")
                  - np.searchsorted(self._occurrences, base + lo, side="left"))
        first = self.first_seen[cands]
        in_period = self._first_row[cands] < r
        age = np.where(first != NEVER, self.clock - first, 0)
        known = (first != NEVER) | in_period
        eligible = known & (age <= self.settings.max_age)
        total = counts + self.settings.carry * self.last_counts[cands]
        return np.where(eligible, np.log1p(total), 0.0)

    def prior_without_rows(self, candidates: np.ndarray) -> np.ndarray:
        """The prior before any row of the scored period (a user with no row: production's cold rule)."""
        cands = np.asarray(candidates, dtype=np.int64)
        first = self.first_seen[cands]
        eligible = (first != NEVER) & (self.clock - first <= self.settings.max_age)
        return np.where(eligible, np.log1p(self.settings.carry * self.last_counts[cands]), 0.0)


def novelty_prior(tracker: NoveltyTracker, period: Period, rows: slice, candidates: torch.Tensor) -> torch.Tensor:
    """The prior as a float32 tensor on the candidates' device (for strategies that combine it)."""
    values = tracker.prior(period, rows, candidates.detach().cpu().numpy())
    return torch.from_numpy(values.astype(np.float32)).to(candidates.device)


def zscore_rows(scores: torch.Tensor) -> torch.Tensor:
    """Each row minus its mean over the candidates, over its standard deviation (a flat row: 0)."""
    scores = scores.float()
    mean = scores.mean(dim=1, keepdim=True)
    std = scores.std(dim=1, unbiased=False, keepdim=True)
    return torch.where(std > 0, (scores - mean) / torch.where(std > 0, std, torch.ones_like(std)),
                       torch.zeros_like(scores))


@dataclass(frozen=True)
class WithNoveltySettings:
    """A registered strategy plus ``weight`` times the novelty prior (its z-scored scores).

    The defaults were chosen on the validation periods of a news log, where 64 was the best weight
    for pop-recent, itemknn and SML on average: the prior decides and the inner strategy breaks its
    ties (a z-score over 1,000 candidates stays below 32 < 64 * log 2). On the bundled MovieLens
    data that costs most of the accuracy: these strategies are opt-in (docs/new-items.md)."""

    inner: str = "pop-recent"
    inner_settings: dict = field(default_factory=dict)   # overrides of the inner strategy's settings
    weight: float = 64.0
    max_age: int = 2
    window: int = 0
    carry: float = 0.0

    def __post_init__(self) -> None:
        require(self.weight >= 0.0, "weight", ">= 0", self.weight)
        NoveltySettings(self.max_age, self.window, self.carry)

    @property
    def novelty(self) -> NoveltySettings:
        return NoveltySettings(self.max_age, self.window, self.carry)


_REGISTRY: dict[str, Callable] = {}


def bind_registry(spec: Callable, settings: Callable, create: Callable) -> None:
    """The registry's lookups, handed over by strategies/__init__.py (which imports this module, so
    this module cannot import it): ``spec(name)``, ``settings(name, overrides)`` and
    ``create(name, context, overrides)``."""
    _REGISTRY.update(spec=spec, settings=settings, create=create)


def _inner_spec(settings: WithNoveltySettings, name: str):
    spec = _REGISTRY["spec"](settings.inner)
    if spec.cls is WithNovelty:
        raise ConfigError(f"strategy.{name}.inner: {settings.inner!r} already carries the novelty prior; "
                          "name a strategy without it (e.g. pop-recent, itemknn, sml)")
    return spec, _REGISTRY["settings"](settings.inner, settings.inner_settings)


class WithNovelty(Strategy):
    """The inner strategy's per-row z-scored scores plus ``weight`` times the novelty prior."""

    name = "with-novelty"
    calibrated_scores = False    # z-scores plus a prior, not logits
    period_counts = True

    @classmethod
    def check_context(cls, settings: WithNoveltySettings, context: StrategyContext, name: str) -> None:
        spec, inner_settings = _inner_spec(settings, name)
        spec.cls.check_context(inner_settings, replace(context, name=settings.inner), settings.inner)

    def __init__(self, settings: WithNoveltySettings, context: StrategyContext) -> None:
        super().__init__(settings, context)
        _inner_spec(settings, context.name or self.name)
        # The inner strategy draws its own random stream, as it would alone (same name, same seed).
        self.inner = _REGISTRY["create"](settings.inner, replace(context, name=settings.inner),
                                     settings.inner_settings)
        self.tracker = NoveltyTracker(settings.novelty, context.n_items)

    def _start(self, pretrain: Period, initial_state: dict[str, torch.Tensor]) -> None:
        self.inner.start(pretrain, initial_state)
        self.tracker = NoveltyTracker(self.settings.novelty, self.n_items)
        self.tracker.observe(pretrain.items)

    def _update(self, period: Period) -> None:
        self.inner.update(period)
        self.tracker.observe(period.items)

    def _grow(self, n_users: int, n_items: int) -> None:
        self.inner.grow(n_users, n_items)
        self.tracker.grow(n_items)

    def score(self, period: Period, rows: slice, candidates: torch.Tensor) -> torch.Tensor:
        base = zscore_rows(self.inner.score(period, rows, candidates))
        if self.settings.weight == 0.0:
            return base
        return base + self.settings.weight * novelty_prior(self.tracker, period, rows, candidates).to(base.device)

    def score_new_users(self, candidates: torch.Tensor) -> torch.Tensor:
        base = zscore_rows(self.inner.score_new_users(candidates))
        prior = self.tracker.prior_without_rows(candidates.detach().cpu().numpy())
        return base + self.settings.weight * torch.from_numpy(prior.astype(np.float32)).to(base.device)

    def _state(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "novelty": self.tracker.state()}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self.tracker.load_state(state["novelty"])

    def served_tables(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None   # the prior is not an inner product: production scores through ``score``


class NoveltyScores(Strategy):
    """The prior alone as a model: a component that sml-blend can weigh per row (a user with no
    row in the scored period gets :meth:`NoveltyTracker.prior_without_rows`)."""

    name = "novelty-prior"
    calibrated_scores = False
    period_counts = True

    def __init__(self, settings: NoveltySettings, context: StrategyContext) -> None:
        super().__init__(settings, context)
        self.tracker = NoveltyTracker(settings, context.n_items)

    def _start(self, pretrain: Period, initial_state: dict[str, torch.Tensor]) -> None:
        self.tracker = NoveltyTracker(self.settings, self.n_items)
        self.tracker.observe(pretrain.items)

    def _update(self, period: Period) -> None:
        self.tracker.observe(period.items)

    def _grow(self, n_users: int, n_items: int) -> None:
        self.tracker.grow(n_items)

    def score(self, period: Period, rows: slice, candidates: torch.Tensor) -> torch.Tensor:
        return novelty_prior(self.tracker, period, rows, candidates)

    def score_new_users(self, candidates: torch.Tensor) -> torch.Tensor:
        prior = self.tracker.prior_without_rows(candidates.detach().cpu().numpy())
        return torch.from_numpy(prior.astype(np.float32)).to(candidates.device)

    def _state(self) -> dict[str, Any]:
        return {"novelty": self.tracker.state()}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.tracker.load_state(state["novelty"])
