"""Who wins where: each strategy's test Recall@20 per user group, with 95% bootstrap intervals,
per log.

The groups of a test row (``test_rows.csv.gz``, experiment/results.py): its user warm or cold
(an interaction in an earlier period or not), and its user's history length at the row (rows of
that user strictly before it, evaluation/groups.py) in buckets, by default 0, 1-4, 5-19 and 20+.
Nothing is re-scored: inside a group, each strategy's R@20 is the mean of ``rank < 20`` over the
group's rows, and its interval the 2.5th-97.5th percentile over resamples of the group's users
(evaluation/uncertainty.py, the same bootstrap as summary.csv, seeded per log, protocol and
group; the run's ``bootstrap_resamples`` and ``bootstrap_unit``).

The winner of a group is the strategy with the highest R@20 (all of them on an exact tie); a
strategy *ties* the winner when its interval overlaps the winner's. Overlapping intervals are a
conservative reading (two strategies can differ significantly in a paired test although their
intervals overlap): "tied" means "not shown apart here", not "equal".

A log is one dataset cut into one set of periods: several runs of it are combined as the report
combines them (report/runs.py); runs of different logs become separate logs, side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..evaluation.groups import HISTORY_EDGES, bucket_labels, check_edges, history_buckets
from ..evaluation.uncertainty import RowOutcomes, bootstrap
from ..experiment.results import RANK_PREFIX
from ..random import make_rng
from .runs import Combined, Run, combine_runs
from .tables import TextTable

K = 20
METRIC = f"recall@{K}"
WINNER_MARK = "★"
TIED_MARK = "☆"
WINS_COLUMNS = ["log", "protocol", "group", "interactions", "users", "strategy", METRIC,
                f"{METRIC}_lo", f"{METRIC}_hi", "winner", "tied"]
DEFAULT_RESAMPLES = 1000


@dataclass
class Log:
    """One log's combined runs, under a display name."""

    name: str
    combined: Combined

    @property
    def settings(self) -> dict:
        return self.combined.runs[0].config.get("settings", {})


def group_masks(rows: pd.DataFrame, edges: Sequence[int] = HISTORY_EDGES) -> list[tuple[str, np.ndarray]]:
    """``(group name, row mask)``: warm users, cold users, then one per history bucket."""
    cold = rows["cold_user"].to_numpy(dtype=np.int64) == 1
    buckets = history_buckets(rows["history"].to_numpy(dtype=np.int64), edges)
    groups = [("warm users", ~cold), ("cold users", cold)]
    groups += [(f"history {label}", buckets == b) for b, label in enumerate(bucket_labels(edges))]
    return groups


def group_names(edges: Sequence[int] = HISTORY_EDGES) -> list[str]:
    return ["warm users", "cold users", *[f"history {label}" for label in bucket_labels(edges)]]


def ranked_strategies(rows: pd.DataFrame, strategies: Sequence[str]) -> list[str]:
    """The strategies with a rank on every row (a strategy missing from a period is left out)."""
    out = []
    for name in strategies:
        column = f"{RANK_PREFIX}{name}"
        if column in rows and rows[column].notna().all() and (rows[column] >= 0).all():
            out.append(name)
    return out


def group_table(rows: pd.DataFrame, strategies: Sequence[str], n_resamples: int, seed: int,
                unit: str = "user", edges: Sequence[int] = HISTORY_EDGES,
                stream: Sequence[str] = ()) -> pd.DataFrame:
    """R@20 per (group, strategy) over ``rows`` (one protocol of one log) with its 95% interval
    and the winner/tie marks (module docstring)."""
    strategies = ranked_strategies(rows, strategies)
    out = []
    for group, mask in group_masks(rows, edges):
        mine = rows[mask]
        n = len(mine)
        base = {"group": group, "interactions": n, "users": int(mine["user"].nunique())}
        if not strategies:
            continue
        if n == 0:
            out += [{**base, "strategy": s, METRIC: np.nan, f"{METRIC}_lo": np.nan, f"{METRIC}_hi": np.nan,
                     "winner": False, "tied": False} for s in strategies]
            continue
        hits = np.stack([(mine[f"{RANK_PREFIX}{s}"].to_numpy(dtype=np.int64) < K).astype(np.float64)
                         for s in strategies])
        outcomes = RowOutcomes(list(strategies), mine["user"].to_numpy(dtype=np.int64),
                               mine["period"].to_numpy(dtype=np.int64), {METRIC: hits})
        result = bootstrap(outcomes, n_resamples, make_rng(seed, "who-wins", *stream, group), unit)
        point = result.point[METRIC]
        intervals = result.intervals()
        lo = intervals[f"{METRIC}_lo"].to_numpy(dtype=float)
        hi = intervals[f"{METRIC}_hi"].to_numpy(dtype=float)
        winners = point == point.max()
        best_lo = lo[winners].min()
        tied = ~winners & np.isfinite(hi) & np.isfinite(best_lo) & (hi >= best_lo)
        out += [{**base, "strategy": s, METRIC: float(point[i]), f"{METRIC}_lo": float(lo[i]),
                 f"{METRIC}_hi": float(hi[i]), "winner": bool(winners[i]), "tied": bool(tied[i])}
                for i, s in enumerate(strategies)]
    return pd.DataFrame(out, columns=WINS_COLUMNS[2:])


def wins_table(logs: Sequence[Log], edges: Sequence[int] = HISTORY_EDGES) -> pd.DataFrame:
    """:func:`group_table` of every log and ranking protocol with saved rows, stacked (the CSV)."""
    edges = check_edges(edges)
    frames = []
    for log in logs:
        rows = log.combined.rows
        if rows is None or rows.empty:
            continue
        settings = log.settings
        resamples = int(settings.get("bootstrap_resamples", DEFAULT_RESAMPLES))
        seed = int(settings.get("seed", 0))
        unit = str(settings.get("bootstrap_unit", "user"))
        for protocol in dict.fromkeys(rows["protocol"]):
            mine = rows[rows["protocol"] == protocol].reset_index(drop=True)
            table = group_table(mine, log.combined.strategies, resamples, seed, unit, edges,
                                stream=(protocol,))
            frames.append(table.assign(log=log.name, protocol=protocol))
    if not frames:
        return pd.DataFrame(columns=WINS_COLUMNS)
    return pd.concat(frames, ignore_index=True)[WINS_COLUMNS]


def _cell(row: pd.Series) -> str:
    value = row[METRIC]
    if not np.isfinite(value):
        return "—"
    text = f"{value:.4f}"
    lo, hi = row[f"{METRIC}_lo"], row[f"{METRIC}_hi"]
    if np.isfinite(lo) and np.isfinite(hi):
        text += f" [{lo:.4f}, {hi:.4f}]"
    if row["winner"]:
        text += f" {WINNER_MARK}"
    elif row["tied"]:
        text += f" {TIED_MARK}"
    return text


def wins_text(table: pd.DataFrame, log: str, protocol: str) -> TextTable:
    """One log and protocol: a row per strategy, a column per group; the winner bold and ★,
    ☆ on an interval overlapping the winner's."""
    mine = table[(table["log"] == log) & (table["protocol"] == protocol)]
    groups = list(dict.fromkeys(mine["group"]))
    strategies = list(dict.fromkeys(mine["strategy"]))
    header = ["Strategy"]
    for group in groups:
        n = mine.loc[mine["group"] == group, "interactions"].iloc[0]
        header.append(f"{group} (n={int(n):,})")
    indexed = mine.set_index(["strategy", "group"])
    rows, bold = [], set()
    for r, strategy in enumerate(strategies):
        cells = [strategy]
        for c, group in enumerate(groups):
            row = indexed.loc[(strategy, group)]
            cells.append(_cell(row))
            if row["winner"]:
                bold.add((r, c + 1))
        rows.append(cells)
    return TextTable(header, rows, bold)


def winners_line(table: pd.DataFrame, log: str, protocol: str) -> str:
    """``warm users: ease (ties: itemknn); cold users: pop-recent; ...``"""
    mine = table[(table["log"] == log) & (table["protocol"] == protocol)]
    parts = []
    for group, rows in mine.groupby("group", sort=False):
        winners = rows.loc[rows["winner"], "strategy"].tolist()
        if not winners:
            parts.append(f"{group}: no rows")
            continue
        tied = rows.loc[rows["tied"], "strategy"].tolist()
        parts.append(f"{group}: {' = '.join(winners)}" + (f" (ties: {', '.join(tied)})" if tied else ""))
    return "; ".join(parts)


def plot_wins(table: pd.DataFrame, path: Path, protocol: str) -> Path:
    """Dot and 95% interval per strategy; one panel per group (columns), one row per log. The
    winner is drawn filled with a star, a strategy tied with it as a hollow dot."""
    from .figures import new_figure, strategy_styles

    mine = table[table["protocol"] == protocol]
    logs = list(dict.fromkeys(mine["log"]))
    groups = list(dict.fromkeys(mine["group"]))
    strategies = list(dict.fromkeys(mine["strategy"]))
    if not logs or not groups:
        raise ConfigError(f"no per-row results under protocol {protocol!r} to draw")
    styles = strategy_styles(strategies)
    width = max(8.0, min(24.0, 1.5 + 2.3 * len(groups)))
    height = max(2.6, 0.6 + len(logs) * (0.9 + 0.28 * len(strategies)))
    figure = new_figure(width, height)
    axes = figure.subplots(len(logs), len(groups), squeeze=False, sharey=True)
    positions = {s: i for i, s in enumerate(strategies)}
    for r, log in enumerate(logs):
        for c, group in enumerate(groups):
            ax = axes[r][c]
            cell = mine[(mine["log"] == log) & (mine["group"] == group)]
            for row in cell.to_dict("records"):
                value, lo, hi = row[METRIC], row[f"{METRIC}_lo"], row[f"{METRIC}_hi"]
                y = positions[row["strategy"]]
                if not np.isfinite(value):
                    continue
                color = styles[row["strategy"]]["color"]
                if np.isfinite(lo) and np.isfinite(hi):
                    ax.plot([lo, hi], [y, y], color=color, linewidth=2.0, solid_capstyle="butt")
                if row["winner"]:
                    ax.plot([value], [y], marker="*", markersize=13, color=color, markeredgecolor="black",
                            markeredgewidth=0.6, linestyle="none")
                elif row["tied"]:
                    ax.plot([value], [y], marker="o", markersize=6.5, markerfacecolor="white",
                            markeredgecolor=color, markeredgewidth=1.6, linestyle="none")
                else:
                    ax.plot([value], [y], marker="o", markersize=5, color=color, linestyle="none")
            n = int(cell["interactions"].iloc[0]) if len(cell) else 0
            if n == 0:
                ax.text(0.5, 0.5, "no rows", transform=ax.transAxes, ha="center", va="center", color="#777")
            title = f"{group} (n={n:,})"
            ax.set_title(title if len(logs) == 1 else f"{log}\n{title}", fontsize=9)
            ax.grid(axis="x", alpha=0.3)
            ax.tick_params(labelsize=8)
            ax.set_yticks(range(len(strategies)))
            ax.set_yticklabels(strategies)
            ax.set_ylim(len(strategies) - 0.5, -0.5)
            if r == len(logs) - 1:
                ax.set_xlabel("Recall@20 (95% interval)", fontsize=8)
    figure.suptitle(f"Who wins where: test Recall@20 per user group, protocol {protocol} "
                    f"({WINNER_MARK} best, hollow = interval overlaps the best's)", fontsize=10)
    figure.savefig(path)
    return path


def write_wins(logs: Sequence[Log], out: Path, edges: Sequence[int] = HISTORY_EDGES,
               suffix_primary: bool = False) -> tuple[pd.DataFrame, dict[str, Path]]:
    """Write ``who_wins.csv`` and, per ranking protocol, ``who_wins[_<protocol>].md`` and
    ``.png`` into the existing directory ``out``; the table and the figures written. The first
    protocol's files carry no suffix unless ``suffix_primary``."""
    table = wins_table(logs, edges)
    figures: dict[str, Path] = {}
    if table.empty:
        return table, figures
    table.to_csv(out / "who_wins.csv", index=False)
    for i, protocol in enumerate(dict.fromkeys(table["protocol"])):
        stem = "who_wins" if i == 0 and not suffix_primary else f"who_wins_{protocol}"
        figures[protocol] = plot_wins(table, out / f"{stem}.png", protocol)
        text = []
        for log in dict.fromkeys(table["log"]):
            text.append(f"{log}, protocol {protocol}\n\n{wins_text(table, log, protocol).markdown()}")
        (out / f"{stem}.md").write_text("\n".join(text))
    return table, figures


def logs_of(runs: Sequence[Run]) -> list[Log]:
    """Group runs by the log they replayed (data sha256 and periods) and combine each group;
    a log is named after its data file (run names when the file names clash)."""
    keys: dict[tuple, list[Run]] = {}
    for run in runs:
        data = run.config.get("data", {})
        periods = tuple((p["period"], p["role"], p["interactions"]) for p in run.config.get("periods", []))
        key = (data.get("sha256") or data.get("source") or run.name, periods)
        keys.setdefault(key, []).append(run)
    logs, names = [], []
    for group in keys.values():
        source = str(group[0].config.get("data", {}).get("source", "") or group[0].name)
        name = Path(source).name or group[0].name
        candidate, n = name, 2
        while candidate in names:
            candidate, n = f"{name}-{n}", n + 1
        names.append(candidate)
        logs.append(Log(candidate, combine_runs(group)))
    return logs
