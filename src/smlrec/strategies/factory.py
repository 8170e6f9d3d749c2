"""From replay settings to a strategy ready to start (shared by the replay and the production loop)."""

from __future__ import annotations

import os

import torch

from ..config import ReplaySettings
from ..data.periods import Timeline
from . import create_strategy
from .base import Strategy, StrategyContext


def configure_threads(settings: ReplaySettings) -> None:
    """The number of torch threads the strategies train with (default: all cores)."""
    threads = settings.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)


def make_strategy(name: str, timeline: Timeline, settings: ReplaySettings) -> Strategy:
    context = StrategyContext(n_users=timeline.log.n_users, n_items=timeline.log.n_items,
                              mf=settings.mf, seed=settings.seed, device=settings.device, name=name,
                              pretrain_periods=timeline.plan.pretrain, base=settings.base_settings)
    return create_strategy(name, context, settings.strategy.get(name, {}))
