"""Replay results directories read back from disk, and several of them aligned on their periods.

Everything in :mod:`smlrec.report` reads the results-directory contract of
:mod:`smlrec.experiment.results` (``periods.csv``, ``summary.csv``, ``breakdown.csv``,
``config.json``) and never the strategies themselves, so a strategy added later appears in every
table and figure without a change here.

Several runs are combined when they replayed the same data cut into the same periods with the
same roles; a strategy name met in more than one run gets its run's name as a suffix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError
from ..evaluation.metrics import METRIC_NAMES
from ..experiment.results import (BASE_PERIOD_COLUMNS, PERIOD_COLUMNS, RANK_PREFIX, ROW_COLUMNS, ROWS_FILE,
                                  SIGNIFICANCE_COLUMNS, protocols_of, with_protocol)

BREAKDOWN_COLUMNS = ["strategy", "period", "role", "user_group", "item_group", "interactions",
                     *METRIC_NAMES]


# ----------------------------------------------------------------------------------------------
# Reading runs

@dataclass
class Run:
    """One results directory as read from disk."""

    name: str
    path: Path
    periods: pd.DataFrame
    breakdown: pd.DataFrame
    warm_cold: pd.DataFrame          # empty for runs written before the warm/cold split
    summary: pd.DataFrame
    config: dict
    shown_path: str = ""             # where to say the run is (its final place while being written)
    significance: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SIGNIFICANCE_COLUMNS))
    rows: pd.DataFrame | None = None  # test_rows.csv.gz; None for runs written before it

    @property
    def strategies(self) -> list[str]:
        return list(dict.fromkeys(self.periods["strategy"]))


def load_run(path: str | Path, name: str | None = None, shown_path: str | Path | None = None) -> Run:
    """Read a results directory; missing files or columns are errors naming the file."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: no such results directory")
    periods = with_protocol(_read_csv(path / "periods.csv", BASE_PERIOD_COLUMNS))
    for column in PERIOD_COLUMNS:     # runs written before the warm/cold split or protocols lack these
        if column not in periods:
            periods[column] = np.nan
    breakdown = with_protocol(_read_csv(path / "breakdown.csv", BREAKDOWN_COLUMNS))
    warm_cold = with_protocol(_read_csv(path / "warm_cold.csv", BREAKDOWN_COLUMNS)
                              if (path / "warm_cold.csv").exists() else pd.DataFrame(columns=BREAKDOWN_COLUMNS))
    summary = with_protocol(_read_csv(path / "summary.csv", ["strategy", *METRIC_NAMES]))
    significance = (_read_csv(path / "significance.csv", SIGNIFICANCE_COLUMNS)
                    if (path / "significance.csv").exists() else pd.DataFrame(columns=SIGNIFICANCE_COLUMNS))
    rows = _read_csv(path / ROWS_FILE, ROW_COLUMNS) if (path / ROWS_FILE).exists() else None
    config_path = path / "config.json"
    config: dict = {}
    if config_path.exists():
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"not valid JSON ({err.msg})", path=str(config_path), line=err.lineno) from None
    duplicated = periods.duplicated(["strategy", "protocol", "period"])
    if duplicated.any():
        row = periods[duplicated].iloc[0]
        raise DataError(f"strategy {row['strategy']!r} is listed twice for period {row['period']}",
                        path=str(path / "periods.csv"), line=int(np.flatnonzero(duplicated)[0]) + 2)
    periods["label"] = periods["label"].fillna("").astype(str)
    return Run(name=name or path.resolve().name, path=path, periods=periods, breakdown=breakdown,
               warm_cold=warm_cold, summary=summary, config=config, shown_path=str(shown_path or path),
               significance=significance, rows=rows)


def _read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    if not path.exists():
        raise ConfigError(f"{path.parent}: not a smlrec results directory (no {path.name})")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"cannot be read as CSV ({err})", path=str(path)) from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}", path=str(path))
    return frame


# ----------------------------------------------------------------------------------------------
# Combining runs

@dataclass
class Combined:
    """The strategies of one or more aligned runs, under unique display names."""

    runs: list[Run]
    periods: pd.DataFrame            # periods.csv rows of every run, ``strategy`` renamed
    breakdown: pd.DataFrame
    strategies: list[str]            # display names, in run order then strategy order
    warm_cold: pd.DataFrame = field(default_factory=pd.DataFrame)
    origin: dict[str, str] = field(default_factory=dict)  # display name -> run name
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)       # summary.csv rows, renamed
    significance: pd.DataFrame = field(default_factory=pd.DataFrame)  # significance.csv rows, renamed
    rows: pd.DataFrame | None = None   # test_rows.csv.gz of every run that has it, columns renamed

    @property
    def scored_periods(self) -> pd.DataFrame:
        """One row per scored period: period, role, label, interactions."""
        return period_signature(self.runs[0].periods)

    @property
    def protocols(self) -> list[str]:
        """The protocols scored, in order of first appearance (``sampled`` for old runs)."""
        return protocols_of(self.periods)

    def for_protocol(self, protocol: str) -> "Combined":
        """The same runs restricted to one protocol's rows (what every table of one protocol reads)."""
        def keep(frame: pd.DataFrame) -> pd.DataFrame:
            if frame.empty or "protocol" not in frame:
                return frame
            return frame[frame["protocol"] == protocol].reset_index(drop=True)

        return Combined(runs=self.runs, periods=keep(self.periods), breakdown=keep(self.breakdown),
                        strategies=[s for s in self.strategies
                                    if (self.periods[self.periods["protocol"] == protocol]["strategy"] == s).any()],
                        warm_cold=keep(self.warm_cold), origin=self.origin, summary=keep(self.summary),
                        significance=keep(self.significance),
                        rows=None if self.rows is None else keep(self.rows))


def period_signature(periods: pd.DataFrame) -> pd.DataFrame:
    """The scored periods (of one protocol: every protocol scores the same periods)."""
    return (periods[["period", "role", "label", "interactions"]].drop_duplicates()
            .sort_values("period").reset_index(drop=True))


def _unique(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        candidate, n = name, 2
        while candidate in out:
            candidate, n = f"{name}-{n}", n + 1
        out.append(candidate)
    return out


def combine_runs(runs: Sequence[Run]) -> Combined:
    """Align runs on their periods; refuse (ConfigError) when data, periods or roles differ."""
    if not runs:
        raise ConfigError("no results directory given")
    runs = list(runs)
    for run, name in zip(runs, _unique([r.name for r in runs])):
        run.name = name
    first = runs[0]
    for other in runs[1:]:
        _check_aligned(first, other)
    counts: dict[str, int] = {}
    for run in runs:
        for strategy in run.strategies:
            counts[strategy] = counts.get(strategy, 0) + 1
    periods, breakdowns, warm_colds, summaries, tests, strategies, origin = [], [], [], [], [], [], {}
    rows: pd.DataFrame | None = None
    for run in runs:
        rename = {s: (f"{s} ({run.name})" if counts[s] > 1 else s) for s in run.strategies}
        periods.append(run.periods.assign(strategy=run.periods["strategy"].map(rename)))
        breakdowns.append(run.breakdown.assign(strategy=run.breakdown["strategy"].map(rename)))
        warm_colds.append(run.warm_cold.assign(strategy=run.warm_cold["strategy"].map(rename)))
        summaries.append(run.summary.assign(strategy=run.summary["strategy"].map(rename)))
        # p-values compare strategies of one run (paired on its resamples): renamed with it.
        tests.append(run.significance.assign(best=run.significance["best"].map(rename),
                                             strategy=run.significance["strategy"].map(rename)))
        for display in rename.values():
            strategies.append(display)
            origin[display] = run.name
        if run.rows is not None:
            mine = run.rows.rename(columns={f"{RANK_PREFIX}{s}": f"{RANK_PREFIX}{d}" for s, d in rename.items()})
            # Aligned runs score the same rows; a protocol one run lacks leaves its ranks empty.
            rows = mine if rows is None else rows.merge(mine, on=ROW_COLUMNS, how="outer", sort=False)
    if rows is not None:   # an outer merge may reorder: protocols in the runs' order, rows in log order
        order = {p: i for i, p in enumerate(dict.fromkeys(pd.concat(periods)["protocol"]))}
        rows = (rows.assign(_order=rows["protocol"].map(order).fillna(len(order)))
                .sort_values(["_order", "position"], kind="stable").drop(columns="_order").reset_index(drop=True))
    return Combined(runs=runs, periods=pd.concat(periods, ignore_index=True),
                    breakdown=pd.concat(breakdowns, ignore_index=True), strategies=strategies,
                    origin=origin, warm_cold=pd.concat(warm_colds, ignore_index=True),
                    summary=pd.concat(summaries, ignore_index=True),
                    significance=pd.concat(tests, ignore_index=True), rows=rows)


def _check_aligned(first: Run, other: Run) -> None:
    where = f"cannot combine {other.name} ({other.shown_path}) with {first.name} ({first.shown_path})"
    hash_a = first.config.get("data", {}).get("sha256")
    hash_b = other.config.get("data", {}).get("sha256")
    if hash_a and hash_b and hash_a != hash_b:
        raise ConfigError(f"{where}: they replayed different data (sha256 {hash_b[:12]}... vs "
                          f"{hash_a[:12]}...); `smlrec wins` compares strategies across logs")
    plan_a = [(p["period"], p["role"], p.get("label", ""), p["interactions"])
              for p in first.config.get("periods", [])]
    plan_b = [(p["period"], p["role"], p.get("label", ""), p["interactions"])
              for p in other.config.get("periods", [])]
    if plan_a and plan_b and plan_a != plan_b:
        raise ConfigError(f"{where}: the periods differ "
                          f"({_first_difference(plan_b, plan_a, other.name, first.name)})")
    sig_a = [tuple(r) for r in period_signature(first.periods).itertuples(index=False)]
    sig_b = [tuple(r) for r in period_signature(other.periods).itertuples(index=False)]
    if sig_a != sig_b:
        raise ConfigError(f"{where}: the scored periods differ "
                          f"({_first_difference(sig_b, sig_a, other.name, first.name, 'scored periods')})")


def _first_difference(mine: list[tuple], theirs: list[tuple], me: str, them: str,
                      what: str = "periods") -> str:
    """Where two period lists part, e.g. "period 16 test ... with 299 interactions in b, ... in a"."""
    def describe(row: tuple | None) -> str:
        if row is None:
            return "absent"
        period, role, label, interactions = row
        label = f" {label}" if str(label) else ""
        return f"period {period} {role}{label} with {interactions} interactions"

    prefix = f"{me} has {len(mine)} {what}, {them} {len(theirs)}; " if len(mine) != len(theirs) else ""
    for index in range(max(len(mine), len(theirs))):
        a = mine[index] if index < len(mine) else None
        b = theirs[index] if index < len(theirs) else None
        if a != b:
            return f"{prefix}first difference: {describe(a)} in {me}, {describe(b)} in {them}"
    return prefix.rstrip("; ")


def load_runs(paths: Iterable[str | Path], names: Iterable[str | None] | None = None,
              shown_paths: Iterable[str | Path | None] | None = None) -> Combined:
    paths = list(paths)
    names = list(names) if names is not None else [None] * len(paths)
    shown_paths = list(shown_paths) if shown_paths is not None else [None] * len(paths)
    return combine_runs([load_run(p, n, s) for p, n, s in zip(paths, names, shown_paths)])
