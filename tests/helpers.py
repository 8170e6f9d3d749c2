"""Tiny synthetic logs and timelines for the tests (seconds, not minutes)."""

from __future__ import annotations

from pathlib import Path

from smlrec.testing import T0, TINY_MF, random_rows, tiny_log, tiny_timeline  # noqa: F401  shared with plug-in authors


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def write_generic_log(path: Path, n_rows: int = 400, n_users: int = 20, n_items: int = 30,
                      seed: int = 0) -> Path:
    users, items, times = random_rows(n_rows, n_users, n_items, seed)
    lines = [f"u{u},i{i},{t}" for u, i, t in zip(users, items, times)]
    return write_csv(path, "user,item,timestamp", lines)

