"""Filters applied to a whole log before it is cut into periods."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError
from .log import InteractionLog


def filter_k_core(log: InteractionLog, min_user_interactions: int = 0,
                  min_item_interactions: int = 0) -> InteractionLog:
    """The k-core of ``log``: every user has >= ``min_user_interactions`` rows, every item >= ``min_item_interactions``.

    Dropping a user's rows can push an item under its threshold and the other way round, so the
    filter is applied iteratively until stable: each pass counts the rows of every user and item
    among the rows still kept (duplicates count, as they are separate interactions), drops every
    row whose user or item is under its threshold, and stops when a pass drops nothing. The result
    is the largest sub-log meeting both thresholds (it does not depend on the order of removal).
    Example with both thresholds 2: rows u1-a u1-b u2-a u2-b u5-b u5-e; pass 1 drops u5-e (item e
    has 1 row); pass 2 drops u5-b (u5 now has 1 row); pass 3 drops nothing.

    Indices are renumbered in first-appearance order over the kept rows (the log invariant);
    raw ids, the time order, ``source`` and ``sha256`` are kept. ``metadata["k_core"]`` records the
    thresholds, passes and rows removed. Thresholds <= 1 keep every row (the log is returned as is).
    """
    for name, value in (("min_user_interactions", min_user_interactions),
                        ("min_item_interactions", min_item_interactions)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ConfigError(f"data.{name} must be a whole number >= 0, got {value!r}")
    if min_user_interactions <= 1 and min_item_interactions <= 1:
        return log
    keep = np.ones(len(log), dtype=bool)
    passes = 0
    while True:
        passes += 1
        user_counts = np.bincount(log.user_idx[keep], minlength=log.n_users)
        item_counts = np.bincount(log.item_idx[keep], minlength=log.n_items)
        under = keep & ((user_counts[log.user_idx] < min_user_interactions)
                        | (item_counts[log.item_idx] < min_item_interactions))
        if not under.any():
            break
        keep &= ~under
    if not keep.any():
        raise DataError(f"no interaction is left after the k-core filter (users >= "
                        f"{min_user_interactions}, items >= {min_item_interactions} interactions)",
                        path=log.source)
    user_idx, user_old = pd.factorize(log.user_idx[keep], sort=False)
    item_idx, item_old = pd.factorize(log.item_idx[keep], sort=False)
    metadata = dict(log.metadata)
    metadata["k_core"] = {"min_user_interactions": int(min_user_interactions),
                          "min_item_interactions": int(min_item_interactions),
                          "passes": passes, "removed": int(len(log) - keep.sum())}
    return InteractionLog(user_idx.astype(np.int64), item_idx.astype(np.int64), log.time[keep],
                          log.user_ids[np.asarray(user_old)], log.item_ids[np.asarray(item_old)],
                          source=log.source, sha256=log.sha256, metadata=metadata)
