"""The results directory: a stable contract other tools (and ``smlrec report``) read.

* ``periods.csv``: one row per (strategy, scored period): strategy, period, role, label,
  interactions, recall@5, recall@10, recall@20, ndcg@5, ndcg@10, ndcg@20, update_seconds, then
  warm_interactions, cold_interactions and the six metrics over the warm users' rows
  (``recall@20_warm`` ...) and over the cold users' rows (``recall@20_cold`` ...). A user is warm
  in a period when it had an interaction in an earlier period.
* ``summary.csv``: one row per strategy: the six metrics micro-averaged over ALL test periods,
  test_interactions, update_seconds (mean over test periods), then the same for warm and cold
  users (micro-averaged over their rows).
* ``breakdown.csv``: per (strategy, scored period, user_group, item_group): interactions and the
  six metrics; "new" = first seen in a test period (the paper's analysis).
* ``warm_cold.csv``: the same columns, groups warm/cold: "cold" = no interaction in an earlier
  period (the model has never trained on that user or item).
* ``config.json``: every effective setting, the data file's sha256, the package version.

The directory is written under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import __version__
from ..atomic import atomic_directory
from ..config import to_dict
from ..evaluation.metrics import METRIC_NAMES, micro_average

SEGMENTS = ("warm", "cold")
SEGMENT_METRICS = [f"{m}_{segment}" for segment in SEGMENTS for m in METRIC_NAMES]
SEGMENT_COUNTS = [f"{segment}_interactions" for segment in SEGMENTS]
BASE_PERIOD_COLUMNS = ["strategy", "period", "role", "label", "interactions", *METRIC_NAMES, "update_seconds"]
PERIOD_COLUMNS = [*BASE_PERIOD_COLUMNS, *SEGMENT_COUNTS, *SEGMENT_METRICS]
SUMMARY_COLUMNS = ["strategy", *METRIC_NAMES, "test_interactions", "update_seconds", *SEGMENT_COUNTS,
                   *SEGMENT_METRICS]


def periods_frame(records) -> pd.DataFrame:
    rows = []
    for r in records:
        row = {"strategy": r.strategy, "period": r.period, "role": r.role, "label": r.label,
               "interactions": r.interactions, **r.metrics, "update_seconds": r.update_seconds}
        for segment, values in r.segments.items():
            row[f"{segment}_interactions"] = values["interactions"]
            row.update({f"{m}_{segment}": values[m] for m in METRIC_NAMES})
        rows.append(row)
    return pd.DataFrame(rows, columns=PERIOD_COLUMNS)


def _segment_average(scored: pd.DataFrame, segment: str, metric: str) -> float:
    """Micro-average of a warm/cold column over periods (weights: that segment's rows)."""
    weights = scored[f"{segment}_interactions"].to_numpy(dtype=float)
    values = scored[f"{metric}_{segment}"].to_numpy(dtype=float)
    keep = weights > 0
    return micro_average(values[keep], weights[keep]) if keep.any() else float("nan")


def summary_frame(periods: pd.DataFrame, role: str = "test") -> pd.DataFrame:
    """Micro-averaged metrics over every period of ``role``, one row per strategy."""
    rows = []
    for strategy, group in periods.groupby("strategy", sort=False):
        scored = group[group["role"] == role]
        if scored.empty:
            continue
        weights = scored["interactions"].to_numpy()
        row = {"strategy": strategy,
               **{m: micro_average(scored[m].to_numpy(), weights) for m in METRIC_NAMES},
               "test_interactions": int(weights.sum()),
               "update_seconds": float(scored["update_seconds"].mean())}
        if scored[SEGMENT_COUNTS].notna().all().all():    # absent in runs written before the split
            for segment in SEGMENTS:
                row[f"{segment}_interactions"] = int(scored[f"{segment}_interactions"].sum())
                row.update({f"{m}_{segment}": _segment_average(scored, segment, m) for m in METRIC_NAMES})
        rows.append(row)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def breakdown_frame(records, field: str = "breakdown") -> pd.DataFrame:
    rows = [{"strategy": r.strategy, "period": r.period, "role": r.role, **group}
            for r in records for group in getattr(r, field)]
    return pd.DataFrame(rows, columns=["strategy", "period", "role", "user_group", "item_group",
                                       "interactions", *METRIC_NAMES])


def default_out_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def write_results(out: Path, result, extra_config: dict[str, Any] | None = None,
                  extra_files: dict[str, Any] | None = None) -> Path:
    """Write the results directory atomically (temporary directory, then rename)."""
    with atomic_directory(out) as tmp:
        periods = periods_frame(result.records)
        periods.to_csv(tmp / "periods.csv", index=False)
        summary = summary_frame(periods)
        summary.to_csv(tmp / "summary.csv", index=False)
        breakdown_frame(result.records).to_csv(tmp / "breakdown.csv", index=False)
        breakdown_frame(result.records, "warm_cold").to_csv(tmp / "warm_cold.csv", index=False)
        timeline = result.timeline
        config = {
            "smlrec_version": __version__,
            "settings": to_dict(result.settings),
            "strategies": result.strategies,
            "data": {"source": timeline.log.source, "sha256": timeline.log.sha256,
                     "interactions": len(timeline.log), "users": timeline.log.n_users,
                     "items": timeline.log.n_items},
            "periods": [{"period": p.index, "role": p.role, "label": p.label,
                         "interactions": len(p)} for p in timeline.periods],
            "pretrain": {"epochs": result.settings.pretrain.epochs,
                         "losses": result.pretrain_losses, "seconds": result.pretrain_seconds},
            "wall_seconds": result.wall_seconds,
            **(extra_config or {}),
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=_json_default))
        for name, writer in (extra_files or {}).items():
            writer(tmp / name)
    return Path(out)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def format_summary(summary: pd.DataFrame) -> str:
    """A plain-text table of the summary, for the terminal."""
    if summary.empty:
        return "(no test periods scored)"
    columns = ["strategy", *METRIC_NAMES, *[c for c in ("recall@20_warm", "recall@20_cold") if c in summary],
               "test_interactions", "update_seconds"]
    shown = summary[columns].copy()
    for column in columns[1:-2]:
        shown[column] = shown[column].map(lambda v: f"{v:.4f}")
    shown["update_seconds"] = shown["update_seconds"].map(lambda v: f"{v:.2f}")
    return shown.rename(columns={"recall@20_warm": "R@20 warm", "recall@20_cold": "R@20 cold"}).to_string(index=False)
