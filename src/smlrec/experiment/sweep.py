"""Hyper-parameter sensitivity: one replay per grid point, scored on VALIDATION periods only.

A grid is one or more axes ``KEY=v1,v2,...`` where KEY is any setting path ``--set`` accepts
(``mf.lr``, ``strategy.fine-tune.epochs``, ``pretrain.epochs`` ...); every combination of values is
one point, laid over the same base settings (config file < flags < --set) as ``smlrec replay``.

Test periods are never replayed: each point runs on the timeline cut after its last validation
period, so a choice made from ``sweep.csv`` cannot have seen the test data (sml-method.md 1.3).
The validation candidates are the very lists a full replay ranks (they depend only on the period).

The sweep's files (``sweep.csv``, ``sweep_periods.csv``, ``sweep.png``, ``sweep.json``) are
written by :func:`smlrec.report.sweep.write_sweep`.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import pandas as pd

from ..config import ReplaySettings, parse_assignment, replay_settings
from ..data.loading import load_timeline
from ..data.periods import Plan, Timeline
from ..errors import ConfigError
from ..evaluation.metrics import METRIC_NAMES
from ..strategies import strategy_settings
from .parallel import run_in_pool, worker_threads
from .replay import replay, resolve_strategies
from .results import periods_frame, summary_frame


@dataclass(frozen=True)
class GridAxis:
    """One swept setting and its values (read as TOML: numbers, booleans, else text)."""

    key: str
    values: tuple[Any, ...]


def parse_grid(text: str) -> GridAxis:
    """``"mf.lr=0.005,0.01"`` -> GridAxis("mf.lr", (0.005, 0.01))."""
    if "=" not in text:
        raise ConfigError(f"--grid {text!r}: expected KEY=v1,v2,..., e.g. mf.lr=0.005,0.01")
    key, raw = (part.strip() for part in text.split("=", 1))
    if not key or not all(key.split(".")):
        raise ConfigError(f"--grid {text!r}: empty setting name")
    values = []
    for item in raw.split(","):
        if not item.strip():
            raise ConfigError(f"--grid {text!r}: empty value in the list")
        node: Any = parse_assignment(f"{key}={item.strip()}")
        for part in key.split("."):
            node = node[part]
        values.append(node)
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"--grid {text!r}: a value is listed twice")
    return GridAxis(key, tuple(values))


def grid_points(axes: Sequence[GridAxis]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, the last axis varying fastest."""
    keys = [axis.key for axis in axes]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--grid: setting {next(k for k in keys if keys.count(k) > 1)!r} is swept twice")
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axis.values for axis in axes))]


def point_layer(point: dict[str, Any]) -> dict:
    """A grid point as a nested settings mapping (one more layer over the base layers)."""
    layer: dict = {}
    for key, value in point.items():
        node = layer
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return layer


def validation_timeline(timeline: Timeline) -> Timeline:
    """The timeline without its test periods: replaying it can never score (or train on) test data.

    The boundaries are kept whole so the candidate cache and "first seen" periods are those of the
    full timeline; only the periods a replay walks through end after the last validation period.
    """
    plan = timeline.plan
    if plan.validation < 1:
        raise ConfigError("a sweep scores validation periods only, and the plan has none; "
                          "give --plan P,O,V,T with V >= 1")
    end = plan.pretrain + plan.offline + plan.validation
    return Timeline(log=timeline.log, periods=timeline.periods[:end],
                    plan=Plan(plan.pretrain, plan.offline, plan.validation, 0),
                    boundaries=timeline.boundaries)


@dataclass
class SweepResult:
    axes: list[GridAxis]
    metric: str
    table: pd.DataFrame      # one row per (point, strategy)
    periods: pd.DataFrame    # one row per (point, strategy, validation period)
    settings: list[ReplaySettings]
    wall_seconds: float

    @property
    def keys(self) -> list[str]:
        return [axis.key for axis in self.axes]

    def best(self) -> pd.DataFrame:
        """The best grid point of each strategy by the chosen validation metric."""
        index = self.table.groupby("strategy", sort=False)[self.metric].idxmax()
        return self.table.loc[index.dropna().astype(int)]


def run_sweep(base_layers: Sequence[dict], axes: Sequence[GridAxis], metric: str = "ndcg@20",
              progress: bool = False,
              on_point: Callable[[int, int, dict[str, Any]], None] | None = None,
              jobs: int = 1) -> SweepResult:
    """Replay every grid point on the validation periods; settings are checked before any work.

    ``jobs`` > 1: the points run in that many worker processes (experiment/parallel.py), each with
    ``--threads`` or cores // jobs torch threads; ``on_point`` is then called as each finishes."""
    if metric not in METRIC_NAMES:
        raise ConfigError(f"unknown metric {metric!r} (known: {', '.join(METRIC_NAMES)})")
    axes = list(axes)
    if not axes:
        raise ConfigError("give at least one --grid KEY=v1,v2,...")
    points = grid_points(axes)
    settings = [replay_settings(*base_layers, point_layer(point)) for point in points]
    for point_settings in settings:  # unknown strategy keys fail now, not after hours of replay
        for name in resolve_strategies(point_settings):
            strategy_settings(name, point_settings.strategy.get(name, {}))
    began = time.perf_counter()
    timelines: dict[tuple, Timeline] = {}
    jobs_list = []
    for point_settings in settings:
        cut = (point_settings.data, point_settings.plan)
        if cut not in timelines:
            timelines[cut] = validation_timeline(load_timeline(point_settings))
        jobs_list.append((point_settings, timelines[cut]))
    if jobs > 1 and len(points) > 1:
        threads = worker_threads(settings[0], jobs)
        work = [(replace(point_settings, threads=point_settings.threads or threads), timeline)
                for point_settings, timeline in jobs_list]
        done = (lambda number, _records: on_point(number, len(points), points[number])) if on_point else None
        all_records = run_in_pool(_replay_point, work, jobs, threads, done)
    else:
        all_records = []
        for number, job in enumerate(jobs_list):
            if on_point is not None:
                on_point(number, len(points), points[number])
            all_records.append(_replay_point(job, progress))
    tables, period_tables = [], []
    for number, (point, records) in enumerate(zip(points, all_records)):
        periods = periods_frame(records)
        periods = periods[periods["role"] == "validation"]
        summary = summary_frame(periods, role="validation").rename(
            columns={"test_interactions": "validation_interactions"})
        for frame, into in ((summary, tables), (periods, period_tables)):
            into.append(frame.assign(point=number, **{k: [v] * len(frame) for k, v in point.items()}))
    keys = [axis.key for axis in axes]
    table = pd.concat(tables, ignore_index=True)
    table = table[["point", *keys, "strategy", *METRIC_NAMES, "validation_interactions", "update_seconds"]]
    period_table = pd.concat(period_tables, ignore_index=True)
    period_table = period_table[["point", *keys, *[c for c in period_table.columns
                                                   if c not in ("point", *keys)]]]
    return SweepResult(axes, metric, table, period_table, settings, time.perf_counter() - began)


def _replay_point(job: tuple[ReplaySettings, Timeline], progress: bool = False) -> list:
    """The records of one grid point's replay (run in a worker when the sweep has ``jobs``)."""
    point_settings, timeline = job
    return replay(point_settings, progress=progress, timeline=timeline).records
