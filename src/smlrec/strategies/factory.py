"""From replay settings to a strategy ready to start (shared by the replay and the production loop)."""

from __future__ import annotations

import os
import warnings

import torch

import smlrec

from ..config import ReplaySettings
from ..data.periods import Timeline
from ..models.distributed import local_ranks
from . import check_strategy, create_strategy
from .base import Strategy, StrategyContext


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's or taskset's
    share), not every core of the machine as ``os.cpu_count()`` reports."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        return os.cpu_count() or 1


def pick_threads(requested: int | None, spinning: bool, cores: int, load: float) -> tuple[int, str | None]:
    """Torch threads to use, and a warning to show (or None).

    ``requested`` (``--threads``) always wins. Otherwise every available core, unless torch's
    OpenMP threads spin without bound while they wait (torch imported before smlrec, so smlrec's
    bounded spin, GOMP_SPINCOUNT, came too late) and the machine is busy (1-minute load average
    above ``cores - 0.5``): then spinning threads steal each other's cores (an SML replay
    measured >6x slower), so one thread.
    """
    if requested:
        return requested, None
    if not spinning:
        return cores, None
    fix = ("torch was imported before smlrec, so smlrec could not bound how long torch's threads "
           "spin while they wait (GOMP_SPINCOUNT); import smlrec first, or set GOMP_SPINCOUNT=1000 "
           "(or OMP_WAIT_POLICY=PASSIVE) in the environment")
    if cores > 1 and load > cores - 0.5:
        return 1, f"{fix}. The machine is busy (load {load:.1f} on {cores} cores): using 1 thread."
    return cores, f"{fix}. On a busy machine this is several times slower."


_warned = False


def configure_threads(settings: ReplaySettings) -> None:
    """The number of torch threads the strategies train with (default: the available cores,
    shared among the ranks torchrun started on this machine)."""
    global _warned
    cores = max(1, available_cores() // local_ranks())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    threads, warning = pick_threads(settings.threads, smlrec.SPINNING_OPENMP, cores, load)
    if warning and not _warned:
        warnings.warn(warning, RuntimeWarning, stacklevel=2)
        _warned = True
    torch.set_num_threads(threads)


def strategy_context(name: str, timeline: Timeline, settings: ReplaySettings) -> StrategyContext:
    return StrategyContext(n_users=timeline.log.n_users, n_items=timeline.log.n_items,
                           mf=settings.mf, seed=settings.seed, device=settings.device, name=name,
                           pretrain_periods=timeline.plan.pretrain, base=settings.base_settings,
                           precision=settings.precision, offline_periods=timeline.plan.offline)


def make_strategy(name: str, timeline: Timeline, settings: ReplaySettings) -> Strategy:
    return create_strategy(name, strategy_context(name, timeline, settings), settings.strategy.get(name, {}))


def check_strategies(names: list[str], timeline: Timeline, settings: ReplaySettings) -> None:
    """Every chosen strategy's :meth:`Strategy.check_context`, before anything is trained."""
    for name in names:
        check_strategy(name, strategy_context(name, timeline, settings), settings.strategy.get(name, {}))
