"""The strategy interface: how a model is retrained when a new period of data arrives.

A strategy is started once from the pretrained MF model, then receives periods in time order
through :meth:`Strategy.update`. Between updates, :meth:`Strategy.score` serves the model for the
*next* period. The replay loop only ever calls ``start``, ``score`` and ``update``; it never asks
what kind of strategy it holds.

Subclasses write ``_start``, ``_update`` and ``score``; the public ``update`` validates the
period and times the hook.
"""

from __future__ import annotations

import copy
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import torch

from ..config import BaseSettings, MFSettings
from ..data.periods import Period
from ..errors import CheckpointError, ConfigError, DataError
from ..random import make_rng, rng_state, set_rng_state


@dataclass(frozen=True)
class StrategyContext:
    """What every strategy is built with: table sizes, the base model settings, seed, device."""

    n_users: int
    n_items: int
    mf: MFSettings
    seed: int
    device: str = "cpu"
    name: str = ""
    pretrain_periods: int = 1         # how many periods the pretrain data spans (mean period size)
    base: BaseSettings = field(default_factory=BaseSettings)   # the base model (models/bases.py)
    precision: str = "fp32"           # fp32 | bf16 for dense networks that support it (models/precision.py)
    offline_periods: int | None = None  # the plan's offline periods (None: built without a plan)


class Strategy(ABC):
    """Base class of retraining strategies.

    Lifecycle: ``start(pretrain, initial_state)`` once, then for every new period
    ``score(...)`` (served model) and ``update(period)``.
    """

    name: ClassVar[str] = "strategy"
    calibrated_scores: ClassVar[bool] = True
    """Whether ``score`` returns logits (sigma(score) is a probability: trained with BCE), so the
    ``auc`` protocol's LogLoss means something; False reports AUC only (LogLoss NaN)."""
    period_counts: ClassVar[bool] = False
    """Whether ``score`` counts every user's earlier rows of the scored period (the new-item
    priors, strategies/novelty.py). A production registry learns a period's rows only at
    ``update``, so between updates such a count sees none of them: the replay measures a serving
    layer that streams every event, production serves less (docs/new-items.md)."""

    @classmethod
    def check_context(cls, settings: Any, context: StrategyContext, name: str) -> None:
        """Refuse (ConfigError) a combination of settings and context that is known not to work,
        before anything is trained; the replay calls it for every chosen strategy up front."""

    def __init__(self, settings: Any, context: StrategyContext) -> None:
        self.settings = settings
        self.context = context
        self.device = torch.device(context.device)
        self.rng = make_rng(context.seed, "strategy", context.name or self.name)
        self.periods_seen = 0

    # -- public API ------------------------------------------------------------------------
    def start(self, pretrain: Period, initial_state: dict[str, torch.Tensor]) -> None:
        """Begin from the shared pretrained base weights (``user``, ``item``, any dense weights by
        name: models/bases.py ``base_state``) and its data."""
        self._start(pretrain, initial_state)

    def update(self, period: Period) -> float:
        """Incorporate a new period; returns the wall seconds the update took."""
        if len(period) == 0:
            raise DataError(f"period {period.index} has no interactions; cannot update on it")
        if period.users.max(initial=0) >= self.n_users or period.items.max(initial=0) >= self.n_items:
            raise DataError(f"period {period.index} has user or item indices beyond the model's "
                            f"tables ({self.n_users} users, {self.n_items} items); grow the model first")
        began = time.perf_counter()
        self._update(period)
        self.periods_seen += 1
        return time.perf_counter() - began

    def grow(self, n_users: int, n_items: int) -> None:
        """Enlarge the user and item tables to ``n_users`` x ``n_items`` rows (production: new ids).

        Existing rows are kept; how new rows start is up to the strategy (documented in its
        ``_grow``). Growing to the current size is a no-op; shrinking is refused.
        """
        if n_users < self.n_users or n_items < self.n_items:
            raise ConfigError(f"{self.name}: cannot shrink tables from {self.n_users} users x "
                              f"{self.n_items} items to {n_users} x {n_items}")
        if (n_users, n_items) == (self.n_users, self.n_items):
            return
        self._grow(int(n_users), int(n_items))
        self.context = replace(self.context, n_users=int(n_users), n_items=int(n_items))

    @abstractmethod
    def score(self, period: Period, rows: slice, candidates: torch.Tensor) -> torch.Tensor:
        """Scores ``[len(rows), C]`` of ``candidates`` for rows ``rows`` of ``period``.

        The period is the one being scored (not yet given to ``update``); a sequential model may
        use the period's earlier rows as the user's context, never the row's own item.
        """

    def score_new_users(self, candidates: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, C]`` of ``candidates`` for users the strategy has never seen (no row, no
        history): its declared cold-user rule, the same scores ``score`` gives an untrained user.
        Production serves unknown users with it."""
        raise ConfigError(f"strategy {self.name!r} declares no rule for users it has never seen")

    # -- hooks -----------------------------------------------------------------------------
    @abstractmethod
    def _start(self, pretrain: Period, initial_state: dict[str, torch.Tensor]) -> None: ...

    @abstractmethod
    def _update(self, period: Period) -> None: ...

    def _grow(self, n_users: int, n_items: int) -> None:
        """Append rows for new users/items; ``self.context`` still holds the old sizes."""
        raise ConfigError(f"strategy {self.name!r} cannot grow its tables for new users or items "
                          "(it implements no _grow), so it cannot run production updates")

    # -- state -----------------------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return self.context.n_users

    @property
    def n_items(self) -> int:
        return self.context.n_items

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: tensors, arrays and JSON-able values."""
        return {"rng": rng_state(self.rng), "periods_seen": self.periods_seen, **self._state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = copy.deepcopy(state)  # never share tensors (e.g. Adam moments) with the source
        try:
            set_rng_state(self.rng, state["rng"])
            self.periods_seen = int(state["periods_seen"])
            self._load_state(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{self.name}: state does not fit this strategy ({err})") from None

    @abstractmethod
    def _state(self) -> dict[str, Any]: ...

    @abstractmethod
    def _load_state(self, state: dict[str, Any]) -> None: ...

    def reads_history(self) -> bool | None:
        """Whether a scored row's history (the user's earlier rows) changes its scores, when the
        instance's settings decide it (e.g. ``history = "fold-in"``); None: the registered rule
        (``register(..., history=...)``) says. Production uses it to honour recent items."""
        return None

    def served_tables(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """User and item tables of the served model, for strategies that serve an inner product."""
        return None


def to_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64)).to(device)
