"""The results directory: a stable contract other tools (and ``smlrec report``) read.

* ``periods.csv``: one row per (strategy, protocol, scored period): strategy, period, role,
  label, interactions, recall@5, recall@10, recall@20, ndcg@5, ndcg@10, ndcg@20, update_seconds,
  then warm_interactions, cold_interactions and the six metrics over the warm users' rows
  (``recall@20_warm`` ...) and over the cold users' rows (``recall@20_cold`` ...); then protocol,
  auc, logloss, scoring_seconds (that protocol's scoring of the period), auc_warm, logloss_warm,
  auc_cold, logloss_cold, then flat_share (the share of the period's rows whose candidates all
  scored the same, evaluation/collapse.py) and collapsed (flat_share > 0.5). A protocol fills its
  own metrics and leaves the others empty: Recall/NDCG under ``sampled`` and ``full``, AUC/LogLoss under ``auc``. A user is warm in a
  period when it had an interaction in an earlier period. (Columns added later come last, so
  older columns keep their positions.)
* ``summary.csv``: one row per (strategy, protocol), protocol by protocol: the metrics
  micro-averaged over ALL test periods, test_interactions, update_seconds (mean over test
  periods), the same for warm and cold users, protocol, auc, logloss, scoring_seconds (sum over
  test periods), then ``{metric}_lo`` / ``{metric}_hi``: the 95% bootstrap interval
  (evaluation/uncertainty.py; empty when ``bootstrap_resamples = 0``), then collapsed_periods
  (how many of those periods were flagged collapsed) and flat_share (its highest value).
* ``significance.csv``: per (protocol, metric), the best strategy against each other one: the
  difference and its paired bootstrap p-value.
* ``breakdown.csv``: per (strategy, protocol, scored period, user_group, item_group):
  interactions and the metrics; "new" = first seen in a test period (the paper's analysis).
* ``warm_cold.csv``: the same columns, groups warm/cold: "cold" = no interaction in an earlier
  period (the model has never trained on that user or item).
* ``test_rows.csv.gz``: one line per (ranking protocol, test row): protocol, period, position
  (in the log), user (index), cold_user (1 = no interaction in an earlier period), history (the
  user's rows strictly before this one) and ``rank:<strategy>``: each strategy's rank of the
  row's positive (0 = first). What the report's per-group results ("who wins where") are
  bootstrapped from; absent in runs written before it.
* ``config.json``: every effective setting, the data file's sha256, the package version, the
  seconds each protocol's scoring took in all (``scoring_seconds``) and the bootstrap's seconds.

Runs written before the protocols have no ``protocol`` column: their rows are ``sampled``.

The directory is written under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import __version__
from ..atomic import atomic_directory
from ..config import to_dict
from ..evaluation.collapse import is_collapsed
from ..evaluation.groups import history_lengths
from ..evaluation.metrics import METRIC_NAMES, micro_average
from ..evaluation.protocols import ALL_METRICS, AUC_METRICS, row_logloss
from ..evaluation.uncertainty import RowOutcomes, bootstrap, rank_values
from ..random import make_rng

DEFAULT_PROTOCOL = "sampled"
SEGMENTS = ("warm", "cold")
SEGMENT_METRICS = [f"{m}_{segment}" for segment in SEGMENTS for m in METRIC_NAMES]
SEGMENT_COUNTS = [f"{segment}_interactions" for segment in SEGMENTS]
AUC_SEGMENT_METRICS = [f"{m}_{segment}" for segment in SEGMENTS for m in AUC_METRICS]
BASE_PERIOD_COLUMNS = ["strategy", "period", "role", "label", "interactions", *METRIC_NAMES, "update_seconds"]
"""The columns every periods.csv has had (runs written before the protocols and warm/cold split)."""
# Columns added later go at the end, so every older column keeps its position.
PROTOCOL_COLUMNS = ["protocol", *AUC_METRICS, "scoring_seconds"]
COLLAPSE_COLUMNS = ["flat_share", "collapsed"]
PERIOD_COLUMNS = [*BASE_PERIOD_COLUMNS, *SEGMENT_COUNTS, *SEGMENT_METRICS, *PROTOCOL_COLUMNS,
                  *AUC_SEGMENT_METRICS, *COLLAPSE_COLUMNS]
INTERVAL_COLUMNS = [f"{m}_{end}" for m in ALL_METRICS for end in ("lo", "hi")]
SUMMARY_COLUMNS = ["strategy", *METRIC_NAMES, "test_interactions", "update_seconds", *SEGMENT_COUNTS,
                   *SEGMENT_METRICS, *PROTOCOL_COLUMNS, *AUC_SEGMENT_METRICS, *INTERVAL_COLUMNS,
                   "collapsed_periods", "flat_share"]
BREAKDOWN_COLUMNS = ["strategy", "period", "role", "user_group", "item_group", "interactions",
                     *METRIC_NAMES, "protocol", *AUC_METRICS]
SIGNIFICANCE_COLUMNS = ["protocol", "metric", "best", "strategy", "difference", "p_value"]
ROWS_FILE = "test_rows.csv.gz"
"""Per scored test row and ranking protocol: the row's user, groups and every strategy's rank."""
ROW_COLUMNS = ["protocol", "period", "position", "user", "cold_user", "history"]
RANK_PREFIX = "rank:"
"""The rank columns of ``test_rows.csv.gz`` are ``rank:<strategy>`` (a name never clashes with a
fixed column)."""


def periods_frame(records) -> pd.DataFrame:
    rows = []
    for r in records:
        row = {"strategy": r.strategy, "protocol": getattr(r, "protocol", DEFAULT_PROTOCOL),
               "period": r.period, "role": r.role, "label": r.label,
               "interactions": r.interactions, **r.metrics, "update_seconds": r.update_seconds,
               "scoring_seconds": getattr(r, "scoring_seconds", float("nan"))}
        flat = float(getattr(r, "flat_share", float("nan")))
        row.update(flat_share=flat, collapsed=is_collapsed(flat))
        for segment, values in r.segments.items():
            row[f"{segment}_interactions"] = values["interactions"]
            row.update({f"{m}_{segment}": values[m] for m in ALL_METRICS if m in values})
        rows.append(row)
    return pd.DataFrame(rows, columns=PERIOD_COLUMNS)


def with_protocol(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with a ``protocol`` column; rows of runs written before it are ``sampled``."""
    frame = frame.copy()
    if "protocol" not in frame:
        frame["protocol"] = DEFAULT_PROTOCOL
    frame["protocol"] = frame["protocol"].astype(object).where(frame["protocol"].notna(),
                                                               DEFAULT_PROTOCOL).astype(str)
    return frame


def protocols_of(frame: pd.DataFrame) -> list[str]:
    """The protocols of a frame in order of first appearance (``sampled`` for old runs)."""
    return list(dict.fromkeys(with_protocol(frame)["protocol"]))


def _segment_average(scored: pd.DataFrame, segment: str, metric: str) -> float:
    """Micro-average of a warm/cold column over periods (weights: that segment's rows)."""
    weights = scored[f"{segment}_interactions"].to_numpy(dtype=float)
    values = scored[f"{metric}_{segment}"].to_numpy(dtype=float)
    keep = weights > 0
    return micro_average(values[keep], weights[keep]) if keep.any() else float("nan")


def collapse_counts(scored: pd.DataFrame) -> dict[str, float]:
    """Periods flagged collapsed and the highest flat share (NaN/0 for runs written before the
    collapse guard, which have no flat_share column)."""
    if "flat_share" not in scored:
        return {"collapsed_periods": 0, "flat_share": float("nan")}
    flat = scored["flat_share"].to_numpy(dtype=float)
    return {"collapsed_periods": int(sum(is_collapsed(v) for v in flat)),
            "flat_share": float(np.nanmax(flat)) if np.isfinite(flat).any() else float("nan")}


def collapse_warnings(summary: pd.DataFrame, role: str = "test") -> list[str]:
    """One line per (strategy, protocol) with collapsed periods: its metrics rank tied scores last."""
    if "collapsed_periods" not in summary:
        return []
    lines = []
    for _, row in with_protocol(summary).iterrows():
        count = row["collapsed_periods"]
        if pd.notna(count) and count > 0:
            lines.append(f"WARNING: {row['strategy']} ({row['protocol']}) collapsed in {int(count)} {role} "
                         f"period(s): up to {row['flat_share']:.0%} of rows scored every candidate the "
                         "same, so its metrics are below chance (evaluation/collapse.py)")
    return lines


def summary_frame(periods: pd.DataFrame, role: str = "test") -> pd.DataFrame:
    """Micro-averaged metrics over every period of ``role``, one row per (strategy, protocol),
    protocol by protocol. Interval columns stay empty (see :func:`interval_frames`)."""
    periods = with_protocol(periods)
    rows = []
    for protocol in protocols_of(periods):
        mine = periods[periods["protocol"] == protocol]
        for strategy, group in mine.groupby("strategy", sort=False):
            scored = group[group["role"] == role]
            if scored.empty:
                continue
            weights = scored["interactions"].to_numpy()
            row = {"strategy": strategy, "protocol": protocol,
                   **{m: micro_average(scored[m].to_numpy(), weights) for m in ALL_METRICS if m in scored},
                   "test_interactions": int(weights.sum()),
                   "update_seconds": float(scored["update_seconds"].mean()),
                   "scoring_seconds": (float(scored["scoring_seconds"].sum(min_count=1))
                                       if "scoring_seconds" in scored else float("nan")),
                   **collapse_counts(scored)}
            if all(c in scored for c in SEGMENT_COUNTS) and scored[SEGMENT_COUNTS].notna().all().all():
                for segment in SEGMENTS:   # absent in runs written before the warm/cold split
                    row[f"{segment}_interactions"] = int(scored[f"{segment}_interactions"].sum())
                    row.update({f"{m}_{segment}": _segment_average(scored, segment, m)
                                for m in ALL_METRICS if f"{m}_{segment}" in scored})
            rows.append(row)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def row_outcomes(records, timeline, protocol: str, role: str = "test") -> RowOutcomes | None:
    """The per-row outcomes of ``protocol`` over the periods of ``role``, strategies aligned
    (the bootstrap's input); the unit of a row is its user. None when nothing was scored."""
    chosen = [r for r in records if r.protocol == protocol and r.role == role and r.outcome is not None]
    if not chosen:
        return None
    strategies = list(dict.fromkeys(r.strategy for r in chosen))
    periods = sorted({r.period for r in chosen})
    by_key = {(r.strategy, r.period): r for r in chosen}
    strategies = [s for s in strategies if all((s, p) in by_key for p in periods)]
    by_index = {p.index: p for p in timeline.periods}
    units = np.concatenate([by_index[p].users for p in periods])
    period_ids = np.concatenate([np.full(len(by_index[p]), p) for p in periods])

    def stacked(strategy: str):
        return np.concatenate([by_key[(strategy, p)].outcome for p in periods])

    if protocol == "auc":
        pairs = np.stack([stacked(s) for s in strategies])
        calibrated = [by_key[(s, periods[0])].calibrated for s in strategies]
        logloss = np.stack([row_logloss(pairs[i]) if calibrated[i] else np.full(len(units), np.nan)
                            for i in range(len(strategies))])
        return RowOutcomes(strategies, units, period_ids, {"logloss": logloss}, pairs)
    per_strategy = [rank_values(stacked(s)) for s in strategies]
    values = {m: np.stack([v[m] for v in per_strategy]) for m in METRIC_NAMES}
    return RowOutcomes(strategies, units, period_ids, values)


def interval_frames(records, timeline, protocols: list[str], n_resamples: int, seed: int,
                    unit: str = "user") -> tuple[pd.DataFrame, pd.DataFrame]:
    """95% intervals (strategy, protocol, ``_lo``/``_hi`` columns) and the best-vs-other p-values
    over the test periods, one seeded bootstrap per protocol (never re-scoring)."""
    intervals, significance = [], []
    for protocol in protocols:
        outcomes = row_outcomes(records, timeline, protocol)
        if outcomes is None or n_resamples <= 0:
            continue
        result = bootstrap(outcomes, n_resamples, make_rng(seed, "bootstrap", protocol), unit)
        intervals.append(result.intervals().assign(protocol=protocol))
        significance.append(result.significance().assign(protocol=protocol))
    interval = (pd.concat(intervals, ignore_index=True) if intervals
                else pd.DataFrame(columns=["strategy", "protocol"]))
    tests = (pd.concat(significance, ignore_index=True)[SIGNIFICANCE_COLUMNS] if significance
             else pd.DataFrame(columns=SIGNIFICANCE_COLUMNS))
    return interval, tests


def with_intervals(summary: pd.DataFrame, intervals: pd.DataFrame) -> pd.DataFrame:
    """``summary`` with its ``_lo``/``_hi`` columns filled from ``intervals``."""
    if intervals.empty:
        return summary
    merged = summary.drop(columns=[c for c in INTERVAL_COLUMNS if c in intervals]).merge(
        intervals, on=["strategy", "protocol"], how="left")
    return merged.reindex(columns=SUMMARY_COLUMNS)


def breakdown_frame(records, field: str = "breakdown") -> pd.DataFrame:
    rows = [{"strategy": r.strategy, "protocol": getattr(r, "protocol", DEFAULT_PROTOCOL),
             "period": r.period, "role": r.role, **group}
            for r in records for group in getattr(r, field)]
    return pd.DataFrame(rows, columns=BREAKDOWN_COLUMNS)


def rows_frame(records, timeline, role: str = "test") -> pd.DataFrame:
    """One line per (ranking protocol, scored row of ``role``): protocol, period, the row's log
    position, its user index, ``cold_user`` (1 when the user had no row in an earlier period),
    ``history`` (the user's rows strictly before this one: evaluation/groups.py) and one
    ``rank:<strategy>`` column per strategy (0 = first). The auc protocol has no ranks: not listed.

    What per-group results are computed from afterwards, without re-scoring (report/wins.py)."""
    chosen = [r for r in records if r.role == role and r.protocol != "auc" and r.ranks is not None]
    if not chosen:
        return pd.DataFrame(columns=ROW_COLUMNS)
    history = history_lengths(timeline.log.user_idx)
    user_first, _ = timeline.first_seen_period()
    by_index = {p.index: p for p in timeline.periods}
    blocks = []
    for protocol in dict.fromkeys(r.protocol for r in chosen):
        mine = [r for r in chosen if r.protocol == protocol]
        strategies = list(dict.fromkeys(r.strategy for r in mine))
        by_key = {(r.strategy, r.period): r for r in mine}
        for index in sorted({r.period for r in mine}):
            period = by_index[index]
            positions = period.positions
            block = pd.DataFrame({"protocol": protocol, "period": index, "position": positions,
                                  "user": period.users.astype(np.int64),
                                  "cold_user": (user_first[period.users] >= index).astype(np.int8),
                                  "history": history[positions]})
            for strategy in strategies:
                record = by_key.get((strategy, index))
                block[f"{RANK_PREFIX}{strategy}"] = (np.asarray(record.ranks, dtype=np.int64)
                                                     if record is not None else -1)
            blocks.append(block)
    return pd.concat(blocks, ignore_index=True)


def default_out_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


@dataclass(frozen=True)
class ResultTables:
    """The tables of a results directory, computed once (the bootstrap is the costly part)."""

    periods: pd.DataFrame
    summary: pd.DataFrame          # with the bootstrap's 95% intervals
    significance: pd.DataFrame
    breakdown: pd.DataFrame
    warm_cold: pd.DataFrame
    bootstrap_seconds: float
    rows: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ROW_COLUMNS))


def result_tables(result) -> ResultTables:
    """The tables ``write_results`` writes, from a replay's records."""
    periods = periods_frame(result.records)
    settings = result.settings
    protocols = list(getattr(settings, "protocols", (DEFAULT_PROTOCOL,)))
    began = time.perf_counter()
    intervals, significance = interval_frames(
        result.records, result.timeline, protocols, getattr(settings, "bootstrap_resamples", 0),
        settings.seed, getattr(settings, "bootstrap_unit", "user"))
    bootstrap_seconds = time.perf_counter() - began
    return ResultTables(periods, with_intervals(summary_frame(periods), intervals), significance,
                        breakdown_frame(result.records), breakdown_frame(result.records, "warm_cold"),
                        bootstrap_seconds, rows_frame(result.records, result.timeline))


def write_results(out: Path, result, extra_config: dict[str, Any] | None = None,
                  extra_files: dict[str, Any] | None = None, tables: ResultTables | None = None) -> Path:
    """Write the results directory atomically (temporary directory, then rename); ``tables``:
    already computed by ``result_tables`` (else computed here)."""
    tables = tables or result_tables(result)
    with atomic_directory(out) as tmp:
        periods = tables.periods
        periods.to_csv(tmp / "periods.csv", index=False)
        protocols = list(getattr(result.settings, "protocols", (DEFAULT_PROTOCOL,)))
        bootstrap_seconds = tables.bootstrap_seconds
        tables.summary.to_csv(tmp / "summary.csv", index=False)
        tables.significance.to_csv(tmp / "significance.csv", index=False)
        tables.breakdown.to_csv(tmp / "breakdown.csv", index=False)
        tables.warm_cold.to_csv(tmp / "warm_cold.csv", index=False)
        # mtime 0 in the gzip header: the same results give the same bytes
        tables.rows.to_csv(tmp / ROWS_FILE, index=False, compression={"method": "gzip", "mtime": 0})
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
            "scoring_seconds": {p: float(periods.loc[periods["protocol"] == p, "scoring_seconds"].sum())
                                for p in protocols},
            "bootstrap_seconds": bootstrap_seconds,
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


def top_order(names, values, n: int = 3) -> list[tuple[str, float]]:
    """The ``n`` best (name, value) pairs, highest value first; equal values keep the given order,
    missing values never count."""
    pairs = [(str(a), float(v)) for a, v in zip(names, values) if v is not None and np.isfinite(v)]
    return sorted(pairs, key=lambda pair: -pair[1])[:n]


def order_line(pairs: list[tuple[str, float]]) -> str:
    """``ease (.3501) > itemknn (.3457) = sknn (.3457)``: ``=`` between equal values."""
    text = ""
    for i, (name, value) in enumerate(pairs):
        if i:
            # equal up to float summation order (the same hits averaged over the same rows)
            text += " = " if abs(value - pairs[i - 1][1]) <= 1e-12 else " > "
        text += f"{name} ({value:.4f})"
    return text or "(none)"


def top_three(summary: pd.DataFrame, n: int = 3) -> dict[str, list[tuple[str, float]]]:
    """Per protocol of ``summary`` (summary.csv rows), its ``n`` best strategies by the protocol's
    main metric: Recall@20 under sampled and full, AUC under auc."""
    summary = with_protocol(summary)
    out = {}
    for protocol in protocols_of(summary):
        mine = summary[summary["protocol"] == protocol]
        metric = "auc" if protocol == "auc" else "recall@20"
        out[protocol] = top_order(mine["strategy"], mine[metric].to_numpy(dtype=float), n)
    return out


def format_summary(summary: pd.DataFrame) -> str:
    """A plain-text table of the summary for the terminal, one block per protocol."""
    if summary.empty:
        return "(no test periods scored)"
    summary = with_protocol(summary)
    protocols = protocols_of(summary)
    blocks = []
    for protocol in protocols:
        mine = summary[summary["protocol"] == protocol]
        metrics = ["auc", "logloss"] if protocol == "auc" else list(METRIC_NAMES)
        segments = [f"{metrics[0] if protocol == 'auc' else 'recall@20'}_{s}" for s in SEGMENTS]
        columns = ["strategy", *metrics, *[c for c in segments if c in mine and mine[c].notna().any()],
                   "test_interactions", "update_seconds"]
        shown = mine[columns].copy()
        for column in columns[1:-2]:
            shown[column] = shown[column].map(lambda v: f"{v:.4f}")
        shown["update_seconds"] = shown["update_seconds"].map(lambda v: f"{v:.2f}")
        names = {c: c.replace("recall@20", "R@20").replace("auc", "AUC").replace("_", " ")
                 for c in segments}
        text = shown.rename(columns=names).to_string(index=False)
        blocks.append(text if len(protocols) == 1 else f"protocol {protocol}:\n{text}")
    if len(protocols) > 1:   # does the order survive a change of protocol?
        blocks.append("top three per protocol (R@20; AUC under auc):\n" + "\n".join(
            f"  {protocol}: {order_line(pairs)}" for protocol, pairs in top_three(summary).items()))
    warnings = collapse_warnings(summary)
    return "\n\n".join(blocks + (["\n".join(warnings)] if warnings else []))
