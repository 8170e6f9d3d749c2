"""``no-update``: the MF model after the offline periods, never updated again (the staleness reference).

It trains exactly like Fine-tune (warm-started MF on each new period only) through the plan's
offline periods, then stops: every scored period is served the model as it stood after the last
offline period (Lee et al. SIGIR 2023 and Shi et al. CIKM 2024 use such a model as the reference
for what retraining buys). The replay loop is not told about it: the strategy learns the number
of offline periods from its context (``StrategyContext.offline_periods``, set from the plan) and
keeps it in its state, so a production registry started from a history of ``P,O,V,T`` periods
freezes after the same ``O`` periods and its later updates change nothing. A strategy built
without a plan (``offline_periods = None``) freezes at its first call of ``score``, i.e. once the
first scored period is served.

Cold start: the MF rules (strategies/cold.py): the rows trained before the freeze are the trained
rows; a user or item first seen later is served its cold row (``cold_users = "recent"``: the mean
user row trained in the last offline period).
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.periods import Period
from .base import StrategyContext
from .mf_retrain import FineTune, RetrainSettings


class NoUpdate(FineTune):
    """Fine-tune through the offline periods, then frozen."""

    name = "no-update"

    def __init__(self, settings: RetrainSettings, context: StrategyContext) -> None:
        super().__init__(settings, context)
        self.freeze_after = context.offline_periods     # updates it trains on (None: until scored)
        self.frozen = False

    def _update(self, period: Period) -> None:
        if self.freeze_after is not None and self.periods_seen >= self.freeze_after:
            self.frozen = True
        if not self.frozen:
            super()._update(period)

    def score(self, period: Period, rows: slice, candidates: torch.Tensor) -> torch.Tensor:
        if self.freeze_after is None:
            self.frozen = True
        return super().score(period, rows, candidates)

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "freeze_after": self.freeze_after, "frozen": self.frozen}

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        self.freeze_after = None if state["freeze_after"] is None else int(state["freeze_after"])
        self.frozen = bool(state["frozen"])
