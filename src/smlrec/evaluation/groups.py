"""User groups of a scored row: warm/cold, and how much history the user had at that row.

A row's *history length* is the number of rows of its user strictly before it in log order (rows
of earlier periods and earlier rows of the same period; sml-method.md section 6): the row itself
and later rows never count, so grouping by it reads nothing a scorer could not have read. A user's
first row has history 0. Rows are counted, not distinct items: a repeat interaction is history too.

The buckets are half-open ranges of history length given by their lower edges, e.g.
``(0, 1, 5, 20)`` -> ``0``, ``1-4``, ``5-19``, ``20+``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import ConfigError

HISTORY_EDGES = (0, 1, 5, 20)
"""Default buckets of history length: 0, 1-4, 5-19, 20+ earlier rows of the user."""


def history_lengths(users: np.ndarray) -> np.ndarray:
    """For each row of a log (rows in log order), the number of earlier rows of the same user.

    A stable sort by user keeps each user's rows in log order, so a row's place inside its
    user's run of the sorted order is the count of that user's rows before it.
    """
    users = np.asarray(users)
    n = len(users)
    order = np.argsort(users, kind="stable")
    sorted_users = users[order]
    run_start = np.searchsorted(sorted_users, sorted_users, side="left")
    out = np.empty(n, dtype=np.int64)
    out[order] = np.arange(n, dtype=np.int64) - run_start
    return out


def history_lengths_reference(users: Sequence[int]) -> np.ndarray:
    """The slow twin of :func:`history_lengths`: walk the log once, counting per user."""
    seen: dict[int, int] = {}
    out = []
    for user in users:
        user = int(user)
        out.append(seen.get(user, 0))
        seen[user] = seen.get(user, 0) + 1
    return np.asarray(out, dtype=np.int64)


def check_edges(edges: Sequence[int]) -> tuple[int, ...]:
    """Validated bucket edges: whole numbers, strictly increasing, the first 0."""
    edges = tuple(int(e) for e in edges)
    if not edges or edges[0] != 0 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ConfigError(f"history buckets {list(edges)}: expected strictly increasing lower edges "
                          "starting at 0, e.g. 0,1,5,20")
    return edges


def parse_edges(text: str) -> tuple[int, ...]:
    """``"0,1,5,20"`` -> ``(0, 1, 5, 20)``."""
    try:
        return check_edges([int(p) for p in str(text).split(",") if p.strip()])
    except ValueError:
        raise ConfigError(f"history buckets {text!r}: expected whole numbers separated by commas, "
                          "e.g. 0,1,5,20") from None


def bucket_labels(edges: Sequence[int] = HISTORY_EDGES) -> list[str]:
    """``(0, 1, 5, 20)`` -> ``["0", "1-4", "5-19", "20+"]``."""
    edges = check_edges(edges)
    labels = []
    for lo, hi in zip(edges, [*edges[1:], None]):
        if hi is None:
            labels.append(f"{lo}+")
        elif hi == lo + 1:
            labels.append(str(lo))
        else:
            labels.append(f"{lo}-{hi - 1}")
    return labels


def history_buckets(lengths: np.ndarray, edges: Sequence[int] = HISTORY_EDGES) -> np.ndarray:
    """The bucket index of each history length (0 for the first bucket)."""
    edges = check_edges(edges)
    return np.searchsorted(np.asarray(edges), np.asarray(lengths, dtype=np.int64), side="right") - 1
