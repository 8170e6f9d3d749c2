"""What a researcher checks first about a log: its size, span, and how new each period is.

The per-period table is the paper's dataset table: for each period its interactions, distinct
users and items, and how many of those appear in the log for the first time in that period.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .log import InteractionLog
from .periods import Plan


def log_summary(log: InteractionLog) -> dict:
    """Interactions, users, items, first and last time (unix seconds) and span in days."""
    first, last = int(log.time[0]), int(log.time[-1])
    return {"interactions": len(log), "users": log.n_users, "items": log.n_items,
            "first_time": first, "last_time": last, "span_days": (last - first) / 86400}


def period_stats(log: InteractionLog, boundaries: np.ndarray, plan: Plan | None = None,
                 timezone: str = "UTC") -> pd.DataFrame:
    """One row per period (cut at ``boundaries``, row offsets of the starts plus the end).

    Columns: ``period``; ``role`` (only when ``plan`` covers exactly these periods); ``start`` and
    ``end``, the first and last interaction time in ``timezone``; ``interactions``; ``users`` and
    ``items``, the distinct ones in the period; ``new_users`` / ``new_items``, how many of those
    first appear in the log in this period; ``new_user_share`` = new_users / users and
    ``new_item_share`` = new_items / items (period 0 is all new, by definition).
    """
    boundaries = np.asarray(boundaries, dtype=np.int64)
    sizes = np.diff(boundaries)
    n_periods = len(sizes)
    period_of_row = np.repeat(np.arange(n_periods), sizes)
    columns: dict[str, object] = {"period": np.arange(n_periods)}
    if plan is not None and plan.total == n_periods:
        columns["role"] = [plan.role(p) for p in range(n_periods)]
    nonempty = sizes > 0
    start_rows = np.where(nonempty, boundaries[:-1], 0)
    end_rows = np.where(nonempty, boundaries[1:] - 1, 0)
    columns["start"] = _local(log.time[start_rows], timezone).where(nonempty)
    columns["end"] = _local(log.time[end_rows], timezone).where(nonempty)
    columns["interactions"] = sizes
    for name, idx, n in (("user", log.user_idx, log.n_users), ("item", log.item_idx, log.n_items)):
        distinct_keys = np.unique(period_of_row * np.int64(n) + idx)
        distinct = np.bincount(distinct_keys // n, minlength=n_periods)
        # Indices are in first-appearance order: index k first occurs at its smallest row.
        _, first_rows = np.unique(idx, return_index=True)
        new = np.bincount(period_of_row[first_rows], minlength=n_periods)
        columns[f"{name}s"] = distinct
        columns[f"new_{name}s"] = new
        columns[f"new_{name}_share"] = np.divide(new, distinct, out=np.zeros(n_periods),
                                                 where=distinct > 0)
    order = [c for c in ("period", "role", "start", "end", "interactions", "users", "items",
                         "new_users", "new_items", "new_user_share", "new_item_share") if c in columns]
    return pd.DataFrame(columns)[order]


def _local(seconds: np.ndarray, timezone: str) -> pd.Series:
    return pd.Series(pd.to_datetime(seconds, unit="s", utc=True).tz_convert(timezone))
