"""Cutting a log into periods, and the roles periods play in a replay.

Rows of the log (time-sorted) are cut into consecutive periods; every row falls in exactly one::

    time  ──────────────────────────────────────────────────────────────▶
    rows  |  D_0  |  D_1  | ... | D_P-1 | D_P | ... | D_V | ... | D_T | ... | D_N-1 |
    role  |<---- pretrain ----->|<- offline ->|<- validation ->|<-------- test ------->|

A strategy updated with D_t is scored on D_{t+1}. Three ways to cut:

* equal count (``split_equal_count``): N periods with the same number of rows (±1);
* calendar windows (``split_every``): fixed-length windows such as ``1D`` or ``8h``;
* day cuts (``split_day_cuts``): fixed hours inside each day, e.g. ``10,17`` gives
  00-10h, 10-17h, 17-24h in the given timezone (the paper's Adressa split).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError
from .log import InteractionLog
from .pairs import PairIndex

ROLES = ("pretrain", "offline", "validation", "test")
SCORED_ROLES = ("validation", "test")


@dataclass(frozen=True)
class Plan:
    """How many periods play each role, in time order."""

    pretrain: int = 5
    offline: int = 8
    validation: int = 2
    test: int = 5

    def __post_init__(self) -> None:
        for name in ROLES:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"plan: {name} must be a whole number >= 0, got {value!r}")
        if self.pretrain < 1:
            raise ConfigError("plan: at least one pretrain period is needed")
        if self.validation + self.test < 1:
            raise ConfigError("plan: at least one validation or test period is needed")

    @property
    def total(self) -> int:
        return self.pretrain + self.offline + self.validation + self.test

    def role(self, index: int) -> str:
        bounds = np.cumsum([self.pretrain, self.offline, self.validation, self.test])
        return ROLES[int(np.searchsorted(bounds, index, side="right"))]

    @classmethod
    def parse(cls, text: str) -> "Plan":
        parts = [p.strip() for p in str(text).split(",")]
        if len(parts) != 4 or not all(p.isdigit() for p in parts):
            raise ConfigError(f"plan {text!r}: expected four whole numbers P,O,V,T "
                              "(pretrain, offline, validation, test periods)")
        return cls(*map(int, parts))


@dataclass(frozen=True, eq=False)
class Period:
    """One period's interactions, in time order.

    ``start`` is the position of the period's first row in the whole log; ``items_seen[k]`` is
    the number of items seen in the log up to and including row ``k`` of this period.
    ``seen`` indexes every (user, item) pair of the log with the position it was first seen, so
    samplers can exclude a user's history "up to and including" a row.
    """

    index: int
    role: str
    start: int
    users: np.ndarray
    items: np.ndarray
    times: np.ndarray
    items_seen: np.ndarray
    seen: PairIndex = field(repr=False)
    label: str = ""

    def __len__(self) -> int:
        return int(self.users.shape[0])

    @property
    def positions(self) -> np.ndarray:
        return np.arange(self.start, self.start + len(self), dtype=np.int64)

    @property
    def n_items_seen(self) -> int:
        return int(self.items_seen[-1]) if len(self) else 0


def concat_periods(periods: list[Period], role: str = "pretrain") -> Period:
    """The rows of consecutive periods as one period (used for pretraining data)."""
    if not periods:
        raise ConfigError("no periods to concatenate")
    first = periods[0]
    return Period(index=first.index, role=role, start=first.start,
                  users=np.concatenate([p.users for p in periods]),
                  items=np.concatenate([p.items for p in periods]),
                  times=np.concatenate([p.times for p in periods]),
                  items_seen=np.concatenate([p.items_seen for p in periods]),
                  seen=first.seen, label=f"{first.label} .. {periods[-1].label}")


# ----------------------------------------------------------------------------------------------
# Splitting: each scheme returns the row offsets of period starts plus the end, shape (N+1,).

def split_equal_count(n_rows: int, n_periods: int) -> np.ndarray:
    """Boundaries of ``n_periods`` periods of (as nearly as possible) equal row counts."""
    if n_periods < 1:
        raise ConfigError(f"--periods must be >= 1, got {n_periods}")
    if n_rows < n_periods:
        raise DataError(f"the log has {n_rows} interactions, fewer than the {n_periods} periods asked for")
    return np.floor(np.linspace(0, n_rows, n_periods + 1)).astype(np.int64)


_UNIT_SECONDS = {"s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """Seconds in a window length such as ``1D``, ``8h``, ``30min`` or ``2W``."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]+)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNIT_SECONDS or int(match.group(1)) <= 0:
        raise ConfigError(f"window length {text!r}: expected a positive number and a unit "
                          "(s, min, h, D, W), e.g. 1D or 8h")
    return int(match.group(1)) * _UNIT_SECONDS[unit]


def _local_seconds(times: np.ndarray, timezone: str) -> np.ndarray:
    """Unix seconds shifted so that local midnight falls on multiples of 86400."""
    if timezone.upper() == "UTC":
        return times
    try:
        stamps = pd.to_datetime(times, unit="s", utc=True).tz_convert(timezone)
    except Exception as err:
        raise ConfigError(f"unknown timezone {timezone!r} ({err})") from None
    offsets = stamps.tz_localize(None).as_unit("s").asi8 - times  # pandas 3 defaults to us
    return times + offsets


def _boundaries_from_keys(keys: np.ndarray, drop_empty: bool, describe) -> np.ndarray:
    """Period boundaries from non-decreasing window keys; gaps are empty periods."""
    change = np.flatnonzero(np.diff(keys)) + 1
    starts = np.concatenate([[0], change])
    present = keys[starts]
    if not drop_empty:
        gaps = np.flatnonzero(np.diff(present) > 1)
        if gaps.size:
            missing = int(present[gaps[0]] + 1)
            raise DataError(f"period {describe(missing)} has no interactions "
                            f"({int(np.sum(np.diff(present) - 1))} empty windows in all); "
                            "choose longer windows or pass --drop-empty to skip empty windows")
    return np.concatenate([starts, [len(keys)]]).astype(np.int64)


def split_every(times: np.ndarray, every: str, timezone: str = "UTC", drop_empty: bool = False) -> np.ndarray:
    """Boundaries of fixed-length calendar windows, aligned to local midnight of the first day."""
    length = parse_duration(every)
    local = _local_seconds(times, timezone)
    origin = (local[0] // 86400) * 86400
    keys = (local - origin) // length

    def describe(key: int) -> str:
        start = pd.Timestamp(int(origin + key * length), unit="s")
        return f"starting {start:%Y-%m-%d %H:%M} ({timezone})"

    return _boundaries_from_keys(keys, drop_empty, describe)


def split_day_cuts(times: np.ndarray, cuts: list[float], timezone: str = "UTC",
                   drop_empty: bool = False) -> np.ndarray:
    """Boundaries of windows cut at fixed hours inside each day (``cuts`` in hours, 0 < h < 24)."""
    cuts = sorted(float(c) for c in cuts)
    if not cuts or any(not 0 < c < 24 for c in cuts) or len(set(cuts)) != len(cuts):
        raise ConfigError(f"day cuts {cuts}: expected distinct hours strictly between 0 and 24")
    local = _local_seconds(times, timezone)
    day = local // 86400
    hour = (local - day * 86400) / 3600.0
    slot = np.searchsorted(np.asarray(cuts), hour, side="right")
    per_day = len(cuts) + 1
    keys = day * per_day + slot
    edges = [0.0, *cuts, 24.0]

    def describe(key: int) -> str:
        day_start = pd.Timestamp(int(key // per_day) * 86400, unit="s")
        s = int(key % per_day)
        return f"{day_start:%Y-%m-%d} {edges[s]:g}h-{edges[s + 1]:g}h ({timezone})"

    return _boundaries_from_keys(keys, drop_empty, describe)


# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Timeline:
    """A log cut into periods with their roles: what a replay walks through."""

    log: InteractionLog
    periods: list[Period]
    plan: Plan
    boundaries: np.ndarray

    @property
    def pretrain_data(self) -> Period:
        return concat_periods(self.periods[: self.plan.pretrain])

    def first_seen_period(self) -> tuple[np.ndarray, np.ndarray]:
        """For each user and item, the index of the period it first appears in."""
        period_of_row = np.searchsorted(self.boundaries, np.arange(len(self.log)), side="right") - 1
        user_first = np.full(self.log.n_users, -1, dtype=np.int64)
        item_first = np.full(self.log.n_items, -1, dtype=np.int64)
        # Indices are in first-appearance order, so the first row of index k is where k first occurs.
        _, first_user_rows = np.unique(self.log.user_idx, return_index=True)
        _, first_item_rows = np.unique(self.log.item_idx, return_index=True)
        user_first[:] = period_of_row[first_user_rows]
        item_first[:] = period_of_row[first_item_rows]
        return user_first, item_first


def build_timeline(log: InteractionLog, boundaries: np.ndarray, plan: Plan) -> Timeline:
    """Cut ``log`` at ``boundaries`` and give each period its role from ``plan``."""
    n_periods = len(boundaries) - 1
    source = log.source
    if n_periods < plan.total:
        raise DataError(f"the log splits into {n_periods} periods, fewer than the plan needs "
                        f"({plan.pretrain}+{plan.offline}+{plan.validation}+{plan.test}={plan.total})",
                        path=source)
    if n_periods > plan.total:
        raise ConfigError(f"the log splits into {n_periods} periods but the plan covers {plan.total} "
                          f"({plan.pretrain}+{plan.offline}+{plan.validation}+{plan.test}); "
                          "make the plan add up to the number of periods")
    sizes = np.diff(boundaries)
    if (sizes <= 0).any():
        raise DataError(f"period {int(np.argmax(sizes <= 0))} is empty", path=source)
    seen = PairIndex.from_log(log.user_idx, log.item_idx)
    items_seen = log.items_seen
    periods = []
    for index in range(n_periods):
        lo, hi = int(boundaries[index]), int(boundaries[index + 1])
        label = _period_label(log.time[lo], log.time[hi - 1])
        periods.append(Period(index=index, role=plan.role(index), start=lo,
                              users=log.user_idx[lo:hi], items=log.item_idx[lo:hi],
                              times=log.time[lo:hi], items_seen=items_seen[lo:hi], seen=seen,
                              label=label))
    return Timeline(log=log, periods=periods, plan=plan, boundaries=np.asarray(boundaries))


def _period_label(first: int, last: int) -> str:
    a = pd.Timestamp(int(first), unit="s")
    b = pd.Timestamp(int(last), unit="s")
    return f"{a:%Y-%m-%d %H:%M}..{b:%Y-%m-%d %H:%M}"
