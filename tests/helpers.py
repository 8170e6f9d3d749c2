"""Tiny synthetic logs and timelines for the tests (seconds, not minutes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from smlrec.config import MFSettings
from smlrec.data.log import InteractionLog
from smlrec.data.periods import Plan, Timeline, build_timeline, split_equal_count

T0 = 1_600_000_000  # 2020-09-13 12:26:40 UTC


def random_rows(n_rows: int = 400, n_users: int = 20, n_items: int = 30, seed: int = 0,
                step: int = 600) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw (user, item, unix-second time) rows, time-sorted, users/items drawn with skew."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n_rows)
    items = np.minimum(rng.geometric(1.0 / (n_items / 3), n_rows) - 1, n_items - 1)
    times = T0 + np.arange(n_rows, dtype=np.int64) * step
    return users, items, times


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def write_generic_log(path: Path, n_rows: int = 400, n_users: int = 20, n_items: int = 30,
                      seed: int = 0) -> Path:
    users, items, times = random_rows(n_rows, n_users, n_items, seed)
    lines = [f"u{u},i{i},{t}" for u, i, t in zip(users, items, times)]
    return write_csv(path, "user,item,timestamp", lines)


def tiny_log(n_rows: int = 400, n_users: int = 20, n_items: int = 30, seed: int = 0) -> InteractionLog:
    users, items, times = random_rows(n_rows, n_users, n_items, seed)
    return InteractionLog.from_arrays(users, items, times)


def tiny_timeline(plan: Plan = Plan(2, 1, 1, 2), n_rows: int = 360, seed: int = 0) -> Timeline:
    log = tiny_log(n_rows=n_rows, seed=seed)
    return build_timeline(log, split_equal_count(len(log), plan.total), plan)


TINY_MF = MFSettings(dim=8, lr=0.05, batch_size=64)
