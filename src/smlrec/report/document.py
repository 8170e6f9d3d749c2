"""Reports a researcher would publish, built from one or more replay results directories.

Everything here reads the results-directory contract of :mod:`smlrec.experiment.results` (``periods.csv``,
``summary.csv``, ``breakdown.csv``, ``config.json``) and never the strategies themselves, so a
strategy added later appears in every table and figure without a change here.

What :func:`write_report` writes into the report directory:

* ``table1.md`` / ``table1.csv`` / ``table1.tex``: the paper's Table 1 layout: one row per
  strategy, Recall and NDCG at 5/10/20 micro-averaged over the test periods (the numbers of
  ``summary.csv``), the best of each column in bold, and ``RI``: the relative improvement of the
  reference strategy over each other one, ``(ref - m) / m`` averaged over the six metric columns
  (sml-method.md section 5);
* ``per_period.png``: Recall@20 and NDCG@20 per test period, one line per strategy;
* ``table2_update_seconds.md`` / ``.csv``: update seconds per test period and strategy with the
  mean and the ratio of each mean to the fastest one (the paper's Table 2);
* ``breakdown.md`` / ``breakdown.csv`` / ``breakdown.png``: metrics split by old/new user x
  old/new item, micro-averaged over the test periods;
* ``report.md``: one page tying these together with each run's settings and data hash, and
  ``report.html``: the same page with the images embedded, one self-contained file.

Several runs are combined when they replayed the same data cut into the same periods with the
same roles; a strategy name met in more than one run gets its run's name as a suffix.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from ..atomic import atomic_directory
from ..errors import ConfigError, DataError
from ..evaluation.metrics import METRIC_NAMES, micro_average
from ..experiment.results import PERIOD_COLUMNS, summary_frame

KEY_METRICS = ("recall@20", "ndcg@20")
GROUP_ORDER = (("old", "old"), ("old", "new"), ("new", "old"), ("new", "new"))
BREAKDOWN_COLUMNS = ["strategy", "period", "role", "user_group", "item_group", "interactions",
                     *METRIC_NAMES]

# Twelve colours, markers and four dash patterns: any two of the first twelve strategies differ in
# colour AND marker, and neighbours in the order also differ in dash pattern.
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf", "#000000", "#8b6d00")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")
LINESTYLES = ("-", "--", "-.", ":")
HATCHES = ("", "//", "..", "xx", "\\\\", "--", "++", "oo", "||", "**", "OO", "..")


def metric_label(metric: str) -> str:
    """``recall@20`` -> ``Recall@20``."""
    name, k = metric.split("@")
    return {"recall": "Recall", "ndcg": "NDCG"}.get(name, name) + f"@{k}"


# ----------------------------------------------------------------------------------------------
# Reading runs

@dataclass
class Run:
    """One results directory as read from disk."""

    name: str
    path: Path
    periods: pd.DataFrame
    breakdown: pd.DataFrame
    summary: pd.DataFrame
    config: dict
    shown_path: str = ""             # where to say the run is (its final place while being written)

    @property
    def strategies(self) -> list[str]:
        return list(dict.fromkeys(self.periods["strategy"]))


def load_run(path: str | Path, name: str | None = None, shown_path: str | Path | None = None) -> Run:
    """Read a results directory; missing files or columns are errors naming the file."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: no such results directory")
    periods = _read_csv(path / "periods.csv", PERIOD_COLUMNS)
    breakdown = _read_csv(path / "breakdown.csv", BREAKDOWN_COLUMNS)
    summary = _read_csv(path / "summary.csv", ["strategy", *METRIC_NAMES])
    config_path = path / "config.json"
    config: dict = {}
    if config_path.exists():
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"not valid JSON ({err.msg})", path=str(config_path), line=err.lineno) from None
    duplicated = periods.duplicated(["strategy", "period"])
    if duplicated.any():
        row = periods[duplicated].iloc[0]
        raise DataError(f"strategy {row['strategy']!r} is listed twice for period {row['period']}",
                        path=str(path / "periods.csv"), line=int(np.flatnonzero(duplicated)[0]) + 2)
    periods["label"] = periods["label"].fillna("").astype(str)
    return Run(name=name or path.resolve().name, path=path, periods=periods, breakdown=breakdown,
               summary=summary, config=config, shown_path=str(shown_path or path))


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
    origin: dict[str, str] = field(default_factory=dict)  # display name -> run name

    @property
    def scored_periods(self) -> pd.DataFrame:
        """One row per scored period: period, role, label, interactions."""
        return _period_signature(self.runs[0].periods)


def _period_signature(periods: pd.DataFrame) -> pd.DataFrame:
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
    periods, breakdowns, strategies, origin = [], [], [], {}
    for run in runs:
        rename = {s: (f"{s} ({run.name})" if counts[s] > 1 else s) for s in run.strategies}
        periods.append(run.periods.assign(strategy=run.periods["strategy"].map(rename)))
        breakdowns.append(run.breakdown.assign(strategy=run.breakdown["strategy"].map(rename)))
        for display in rename.values():
            strategies.append(display)
            origin[display] = run.name
    return Combined(runs=runs, periods=pd.concat(periods, ignore_index=True),
                    breakdown=pd.concat(breakdowns, ignore_index=True), strategies=strategies,
                    origin=origin)


def _check_aligned(first: Run, other: Run) -> None:
    where = f"cannot combine {other.name} ({other.shown_path}) with {first.name} ({first.shown_path})"
    hash_a = first.config.get("data", {}).get("sha256")
    hash_b = other.config.get("data", {}).get("sha256")
    if hash_a and hash_b and hash_a != hash_b:
        raise ConfigError(f"{where}: they replayed different data (sha256 {hash_b[:12]}... vs "
                          f"{hash_a[:12]}...)")
    plan_a = [(p["period"], p["role"], p.get("label", ""), p["interactions"])
              for p in first.config.get("periods", [])]
    plan_b = [(p["period"], p["role"], p.get("label", ""), p["interactions"])
              for p in other.config.get("periods", [])]
    if plan_a and plan_b and plan_a != plan_b:
        raise ConfigError(f"{where}: the periods differ "
                          f"({_first_difference(plan_b, plan_a, other.name, first.name)})")
    sig_a = [tuple(r) for r in _period_signature(first.periods).itertuples(index=False)]
    sig_b = [tuple(r) for r in _period_signature(other.periods).itertuples(index=False)]
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


# ----------------------------------------------------------------------------------------------
# Text tables: one cell grid rendered as Markdown, HTML and LaTeX

@dataclass
class TextTable:
    header: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = field(default_factory=set)   # (row, column) cells in bold
    align: str = ""                                            # "l"/"r" per column

    def _align(self) -> str:
        return self.align or ("l" + "r" * (len(self.header) - 1))

    def markdown(self) -> str:
        def cell(text: str, bold: bool) -> str:
            text = text.replace("|", "\\|")
            return f"**{text}**" if bold and text else text

        align = self._align()
        lines = ["| " + " | ".join(cell(h, False) for h in self.header) + " |",
                 "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
        for r, row in enumerate(self.rows):
            lines.append("| " + " | ".join(cell(t, (r, c) in self.bold) for c, t in enumerate(row)) + " |")
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        align = self._align()

        def cell(tag: str, text: str, c: int, bold: bool = False) -> str:
            style = ' class="num"' if align[c] == "r" else ""
            body = html.escape(text).replace("\n", "<br>")
            return f"<{tag}{style}>{'<b>' + body + '</b>' if bold else body}</{tag}>"

        head = "".join(cell("th", h, c) for c, h in enumerate(self.header))
        body = "".join("<tr>" + "".join(cell("td", t, c, (r, c) in self.bold) for c, t in enumerate(row))
                       + "</tr>\n" for r, row in enumerate(self.rows))
        return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n"

    def latex(self) -> str:
        def cell(text: str, bold: bool) -> str:
            text = latex_escape(text)
            return f"\\textbf{{{text}}}" if bold and text else text

        lines = [f"\\begin{{tabular}}{{{self._align()}}}", "\\hline",
                 " & ".join(cell(h, False) for h in self.header) + " \\\\", "\\hline"]
        for r, row in enumerate(self.rows):
            lines.append(" & ".join(cell(t, (r, c) in self.bold) for c, t in enumerate(row)) + " \\\\")
        lines += ["\\hline", "\\end{tabular}"]
        return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
                  "—": "---", "×": r"$\times$", "…": r"\dots{}"}


def latex_escape(text: str) -> str:
    """Text safe inside a LaTeX tabular cell (strategy names may hold ``_``, ``&``, ``%`` ...)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _fmt(value: float, digits: int = 4) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _fmt_percent(value: float) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value * 100:+.1f}%"


def _best_rows(values: pd.Series) -> list[int]:
    """Positions of the maximum of a column (all of them on ties); none when all are missing."""
    array = values.to_numpy(dtype=float)
    if not np.isfinite(array).any():
        return []
    return [int(i) for i in np.flatnonzero(array == np.nanmax(array))]


# ----------------------------------------------------------------------------------------------
# (a) Table 1: strategies x metrics over the test periods, with RI

def test_summary(combined: Combined) -> pd.DataFrame:
    """Metrics micro-averaged over all test periods, one row per strategy (as ``summary.csv``)."""
    summary = summary_frame(combined.periods, role="test").set_index("strategy")
    missing = [s for s in combined.strategies if s not in summary.index]
    if missing:
        raise ConfigError(f"strategy {missing[0]!r} has no test period scored; nothing to report "
                          "(Table 1 averages over test periods)")
    return summary.loc[combined.strategies]


def reference_strategy(summary: pd.DataFrame) -> str:
    """The best strategy: most metric columns won; ties go to the higher mean column-relative score."""
    metrics = summary[list(METRIC_NAMES)].astype(float)
    wins = pd.Series(0, index=metrics.index)
    for column in METRIC_NAMES:
        for position in _best_rows(metrics[column]):
            wins.iloc[position] += 1
    maxima = metrics.max(axis=0).replace(0.0, np.nan)
    closeness = (metrics / maxima).mean(axis=1).fillna(0.0)
    order = sorted(range(len(metrics)), key=lambda i: (-wins.iloc[i], -closeness.iloc[i]))
    return str(metrics.index[order[0]])


def relative_improvement(reference: pd.Series, other: pd.Series,
                         metrics: Sequence[str] = METRIC_NAMES) -> float:
    """RI of ``reference`` over ``other``: mean over the metrics of (ref - m) / m (NaN if m = 0)."""
    ref = reference[list(metrics)].to_numpy(dtype=float)
    m = other[list(metrics)].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = (ref - m) / m
    return float(np.mean(ratios)) if np.isfinite(ratios).all() else float("nan")


def table1(combined: Combined, reference: str | None = None) -> pd.DataFrame:
    """Table 1 as numbers: metrics, test interactions, RI of the reference over each strategy."""
    summary = test_summary(combined)
    if reference is None:
        reference = reference_strategy(summary)
    elif reference not in summary.index:
        raise ConfigError(f"reference strategy {reference!r} is not in the report "
                          f"(strategies: {', '.join(summary.index)})")
    table = summary[[*METRIC_NAMES, "test_interactions"]].copy()
    table["ri"] = [float("nan") if name == reference else
                   relative_improvement(summary.loc[reference], summary.loc[name])
                   for name in summary.index]
    table.attrs["reference"] = reference
    return table


def table1_text(table: pd.DataFrame) -> TextTable:
    reference = table.attrs["reference"]
    header = ["Strategy", *[metric_label(m).replace("Recall", "R").replace("NDCG", "N")
                            for m in METRIC_NAMES], f"RI of {reference}"]
    rows = [[name, *[_fmt(row[m]) for m in METRIC_NAMES],
             "—" if name == reference else _fmt_percent(row["ri"])]
            for name, row in table.iterrows()]
    bold = {(r, c + 1) for c, m in enumerate(METRIC_NAMES) for r in _best_rows(table[m])}
    return TextTable(header, rows, bold)


# ----------------------------------------------------------------------------------------------
# (c) Table 2: update seconds per test period

def cost_table(combined: Combined) -> pd.DataFrame:
    """Update seconds per strategy (rows) and test period (columns), the mean and ratio to the fastest."""
    test = combined.periods[combined.periods["role"] == "test"]
    wide = test.pivot(index="strategy", columns="period", values="update_seconds")
    wide = wide.reindex(combined.strategies)
    wide.columns = [f"period {p}" for p in wide.columns]
    wide["mean"] = wide.mean(axis=1)
    fastest = wide["mean"].min()
    wide["ratio_to_fastest"] = wide["mean"] / fastest if fastest and fastest > 0 else float("nan")
    wide.index.name = "strategy"
    return wide


def cost_text(table: pd.DataFrame) -> TextTable:
    period_columns = [c for c in table.columns if c.startswith("period ")]
    header = ["Strategy", *[c.replace("period ", "P") for c in period_columns], "Mean", "× fastest"]
    rows = [[name, *[_fmt(row[c], 2) for c in period_columns], _fmt(row["mean"], 2),
             _fmt(row["ratio_to_fastest"], 1)] for name, row in table.iterrows()]
    bold = {(r, len(header) - 2) for r in _best_rows(-table["mean"])}
    return TextTable(header, rows, bold)


# ----------------------------------------------------------------------------------------------
# (d) old/new user x old/new item breakdown

def breakdown_table(combined: Combined) -> pd.DataFrame:
    """Per strategy and group: test interactions, their share, and micro-averaged metrics."""
    test = combined.breakdown[(combined.breakdown["role"] == "test")
                              & (combined.breakdown["interactions"] > 0)]
    totals = combined.breakdown[combined.breakdown["role"] == "test"]
    rows = []
    for strategy in combined.strategies:
        mine = test[test["strategy"] == strategy]
        total = int(totals.loc[totals["strategy"] == strategy, "interactions"].sum())
        for user_group, item_group in GROUP_ORDER:
            group = mine[(mine["user_group"] == user_group) & (mine["item_group"] == item_group)]
            weights = group["interactions"].to_numpy()
            n = int(weights.sum())
            rows.append({"strategy": strategy, "user_group": user_group, "item_group": item_group,
                         "interactions": n, "share": n / total if total else float("nan"),
                         **{m: micro_average(group[m].to_numpy(), weights) if n else float("nan")
                            for m in METRIC_NAMES}})
    return pd.DataFrame(rows, columns=["strategy", "user_group", "item_group", "interactions",
                                       "share", *METRIC_NAMES])


def _group_title(user_group: str, item_group: str) -> str:
    return f"{user_group} user, {item_group} item"


def breakdown_text(table: pd.DataFrame, metric: str) -> TextTable:
    first = table[table["strategy"] == table["strategy"].iloc[0]]
    header = ["Strategy"]
    for (user_group, item_group), (_, row) in zip(GROUP_ORDER, first.iterrows()):
        share = "" if not np.isfinite(row["share"]) else f", {row['share'] * 100:.1f}%"
        header.append(f"{_group_title(user_group, item_group)} (n={row['interactions']}{share})")
    wide = table.pivot(index="strategy", columns=["user_group", "item_group"], values=metric)
    wide = wide.reindex(list(dict.fromkeys(table["strategy"])))
    wide = wide[[g for g in GROUP_ORDER]]
    rows = [[name, *[_fmt(v) for v in values]] for name, values in zip(wide.index, wide.to_numpy())]
    bold = {(r, c + 1) for c, g in enumerate(GROUP_ORDER) for r in _best_rows(wide[g])}
    return TextTable(header, rows, bold)


# ----------------------------------------------------------------------------------------------
# Figures (matplotlib's object API with the Agg canvas: no pyplot, no global backend switch)

def strategy_styles(strategies: Sequence[str]) -> dict[str, dict[str, Any]]:
    """A colour, marker, dash pattern and hatch per strategy, stable in the given order."""
    return {name: {"color": COLORS[i % len(COLORS)], "marker": MARKERS[i % len(MARKERS)],
                   "linestyle": LINESTYLES[i % len(LINESTYLES)], "hatch": HATCHES[i % len(HATCHES)]}
            for i, name in enumerate(strategies)}


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def short_period_label(period: int, label: str) -> str:
    """``"15\\n2017-03-02"`` from a label ``"2017-03-02 10:00..2017-04-01 09:00"`` (first date)."""
    text = str(label or "").strip()
    if ".." in text:
        text = text.split("..")[0].strip()
    if len(text) >= 10 and text[4:5] == "-" and text[7:8] == "-":
        text = text[:10]
    elif len(text) > 16:
        text = text[:15] + "…"
    return f"{period}\n{text}" if text else str(period)


def _legend_columns(strategies: Sequence[str], width_inches: float) -> int:
    longest = max((len(s) for s in strategies), default=8)
    per_entry = 0.9 + 0.085 * longest  # inches: handle + text at the legend's font size
    return max(1, min(len(strategies), int(width_inches // per_entry)))


def plot_per_period(periods: pd.DataFrame, strategies: Sequence[str], path: Path,
                    metrics: Sequence[str] = KEY_METRICS, role: str = "test",
                    title: str | None = None) -> Path:
    """One panel per metric: the metric per scored period of ``role``, one line per strategy."""
    scored = periods[periods["role"] == role]
    signature = _period_signature(scored)
    x_positions = {p: i for i, p in enumerate(signature["period"])}
    n = len(signature)
    width = max(9.0, min(20.0, 2.2 + len(metrics) * (1.5 + 0.55 * n)))
    figure = _new_figure(width, 4.6)
    axes = figure.subplots(1, len(metrics), sharex=True, squeeze=False)[0]
    styles = strategy_styles(strategies)
    ticks = [short_period_label(p, l) for p, l in zip(signature["period"], signature["label"])]
    step = max(1, int(np.ceil(n / max(1.0, (width / len(metrics)) / 0.75))))
    # Each strategy is shifted a little sideways, so equal values do not hide one another.
    dodge = min(0.03, 0.3 / max(1, len(strategies) - 1))
    for ax, metric in zip(axes, metrics):
        for s, strategy in enumerate(strategies):
            rows = scored[scored["strategy"] == strategy].sort_values("period")
            style = styles[strategy]
            shift = (s - (len(strategies) - 1) / 2) * dodge
            ax.plot([x_positions[p] + shift for p in rows["period"]], rows[metric], label=strategy,
                    color=style["color"], marker=style["marker"], linestyle=style["linestyle"],
                    linewidth=1.6, markersize=6, markerfacecolor="white", markeredgewidth=1.4)
        ax.set_xticks(range(0, n, step), ticks[::step], fontsize=8)
        ax.set_xlabel(f"{role} period (index, first day)")
        ax.set_ylabel(metric_label(metric))
        ax.set_title(f"{metric_label(metric)} per {role} period")
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.04)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center",
                  ncols=_legend_columns(strategies, width), frameon=False, fontsize=9)
    if title:
        figure.suptitle(title)
    figure.savefig(path)
    return path


def plot_breakdown(table: pd.DataFrame, path: Path, metrics: Sequence[str] = KEY_METRICS) -> Path:
    """Grouped bars: the four old/new groups on x, one bar per strategy, one panel per metric."""
    strategies = list(dict.fromkeys(table["strategy"]))
    styles = strategy_styles(strategies)
    width = max(9.0, min(20.0, 2.0 + len(metrics) * (2.0 + 0.45 * len(strategies))))
    figure = _new_figure(width, 4.8)
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    first = table[table["strategy"] == strategies[0]]
    ticks = [f"{u} user\n{i} item\nn={n}" for (u, i), n in zip(GROUP_ORDER, first["interactions"])]
    bar = 0.8 / len(strategies)
    for ax, metric in zip(axes, metrics):
        for s, strategy in enumerate(strategies):
            values = table[table["strategy"] == strategy][metric].to_numpy(dtype=float)
            offsets = np.arange(len(GROUP_ORDER)) - 0.4 + bar * (s + 0.5)
            ax.bar(offsets, np.nan_to_num(values), width=bar, label=strategy,
                   color=styles[strategy]["color"], hatch=styles[strategy]["hatch"],
                   edgecolor="white", linewidth=0.5)
        for position, n in enumerate(first["interactions"]):
            if n == 0:
                ax.text(position, 0.5, "no test\ninteractions", transform=ax.get_xaxis_transform(),
                        ha="center", va="center", fontsize=8, color="#777777")
        ax.set_xticks(range(len(GROUP_ORDER)), ticks, fontsize=8)
        ax.set_ylabel(metric_label(metric))
        ax.set_title(f"{metric_label(metric)} by old/new user and item (test)")
        ax.grid(True, axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center",
                  ncols=_legend_columns(strategies, width), frameon=False, fontsize=9)
    figure.savefig(path)
    return path


def _grid_values(column: pd.Series) -> list:
    """The distinct values of a grid key: sorted when all are numbers, else in grid order."""
    values = list(dict.fromkeys(column))
    if all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values):
        values = sorted(values)
    return values


def plot_sweep(table: pd.DataFrame, keys: Sequence[str], metric: str, path: Path) -> Path:
    """Sensitivity figure: a line plot over one key, or a heat-map over two (a panel per strategy)."""
    strategies = list(dict.fromkeys(table["strategy"]))
    if len(keys) == 1:
        # Grid values sit at equal spacing (a grid like 0.001, 0.005, 0.01, 0.1 would crowd on a
        # linear axis), sorted when they are numbers.
        key = keys[0]
        values = _grid_values(table[key])
        figure = _new_figure(max(6.5, 2.5 + 0.8 * len(values)), 4.6)
        ax = figure.subplots()
        styles = strategy_styles(strategies)
        for strategy in strategies:
            rows = table[table["strategy"] == strategy]
            order = np.argsort([values.index(v) for v in rows[key]], kind="stable")
            style = styles[strategy]
            ax.plot([values.index(v) for v in rows[key].iloc[order]], rows[metric].iloc[order],
                    label=strategy, color=style["color"], marker=style["marker"],
                    linestyle=style["linestyle"], markerfacecolor="white", markeredgewidth=1.4)
        ax.set_xticks(range(len(values)), [str(v) for v in values],
                      rotation=45 if len(values) > 8 else 0)
        ax.set_xlabel(key)
        ax.set_ylabel(f"validation {metric_label(metric)}")
        ax.set_title(f"Sensitivity of validation {metric_label(metric)} to {key}")
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.08)
        figure.legend(loc="outside lower center", ncols=_legend_columns(strategies, 6.5),
                      frameon=False, fontsize=9)
        figure.savefig(path)
        return path
    if len(keys) != 2:
        raise ConfigError(f"a sweep figure shows one or two grid keys, not {len(keys)}")
    row_key, column_key = keys
    row_values = _grid_values(table[row_key])
    column_values = _grid_values(table[column_key])
    panel_w = 1.6 + 0.9 * len(column_values)
    figure = _new_figure(max(5.0, panel_w * len(strategies) + 1.0), 1.8 + 0.6 * len(row_values))
    axes = figure.subplots(1, len(strategies), squeeze=False)[0]
    finite = table[metric].to_numpy(dtype=float)
    vmin, vmax = np.nanmin(finite), np.nanmax(finite)
    image = None
    for ax, strategy in zip(axes, strategies):
        rows = table[table["strategy"] == strategy]
        grid = np.full((len(row_values), len(column_values)), np.nan)
        for _, row in rows.iterrows():
            grid[row_values.index(row[row_key]), column_values.index(row[column_key])] = row[metric]
        image = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto", origin="lower")
        best = np.nanmax(grid) if np.isfinite(grid).any() else np.nan
        for (i, j), value in np.ndenumerate(grid):
            if np.isfinite(value):
                dark = (value - vmin) / ((vmax - vmin) or 1.0) < 0.6
                ax.text(j, i, f"{value:.4f}", ha="center", va="center", fontsize=8,
                        color="white" if dark else "black",
                        fontweight="bold" if value == best else "normal")
        ax.set_xticks(range(len(column_values)), [str(v) for v in column_values])
        ax.set_yticks(range(len(row_values)), [str(v) for v in row_values])
        ax.set_xlabel(column_key)
        ax.set_ylabel(row_key)
        ax.set_title(strategy)
    figure.colorbar(image, ax=list(axes), label=f"validation {metric_label(metric)}", shrink=0.9)
    figure.savefig(path)
    return path


# ----------------------------------------------------------------------------------------------
# (e) report.md / report.html

def _run_facts(run: Run) -> list[tuple[str, str]]:
    config = run.config
    settings = config.get("settings", {})
    data = config.get("data", {})
    plan = settings.get("plan", {})
    mf = settings.get("mf", {})
    facts = [("directory", run.shown_path),
             ("data", f"{data.get('source', '?')} ({data.get('interactions', '?')} interactions, "
                      f"{data.get('users', '?')} users, {data.get('items', '?')} items)"),
             ("data sha256", str(data.get("sha256", "?"))),
             ("periods", f"{len(config.get('periods', [])) or '?'}; plan pretrain/offline/"
                         f"validation/test = {plan.get('pretrain', '?')}/{plan.get('offline', '?')}/"
                         f"{plan.get('validation', '?')}/{plan.get('test', '?')}"),
             ("strategies", ", ".join(config.get("strategies", run.strategies))),
             ("seed", str(settings.get("seed", "?"))),
             ("MF", f"dim {mf.get('dim', '?')}, lr {mf.get('lr', '?')}, batch {mf.get('batch_size', '?')}"
                    f", pretrain epochs {settings.get('pretrain', {}).get('epochs', '?')}")]
    if settings.get("strategy"):
        facts.append(("strategy settings", json.dumps(settings["strategy"], sort_keys=True)))
    if "wall_seconds" in config:
        facts.append(("wall time", f"{config['wall_seconds']:.1f} s on {settings.get('device', '?')}"))
    facts.append(("smlrec version", str(config.get("smlrec_version", "?"))))
    return facts


@dataclass
class _Page:
    """A report page as blocks, rendered to Markdown and HTML from the same content."""

    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def table(self, table: TextTable) -> None:
        self.blocks.append(("table", table))

    def image(self, path: Path, alt: str) -> None:
        self.blocks.append(("image", (path, alt)))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    def markdown(self) -> str:
        out = []
        for kind, value in self.blocks:
            if kind == "heading":
                out.append("#" * value[0] + " " + value[1] + "\n")
            elif kind == "text":
                out.append(value + "\n")
            elif kind == "table":
                out.append(value.markdown())
            elif kind == "image":
                out.append(f"![{value[1]}]({value[0].name})\n")
            elif kind == "code":
                out.append("```\n" + value.rstrip() + "\n```\n")
        return "\n".join(out)

    def html(self, title: str) -> str:
        out = [f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
               "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
               "color:#222}table{border-collapse:collapse;margin:0.5em 0 1em}th,td{border:1px solid "
               "#ccc;padding:3px 8px}th{background:#f3f3f3}td.num,th.num{text-align:right;"
               "font-variant-numeric:tabular-nums}img{max-width:100%}pre{background:#f6f6f6;"
               "padding:0.6em;overflow-x:auto}code{background:#f6f6f6}</style></head><body>"]
        for kind, value in self.blocks:
            if kind == "heading":
                out.append(f"<h{value[0]}>{html.escape(value[1])}</h{value[0]}>")
            elif kind == "text":
                out.append(f"<p>{_inline_html(value)}</p>")
            elif kind == "table":
                out.append(value.html())
            elif kind == "image":
                data = base64.b64encode(value[0].read_bytes()).decode("ascii")
                out.append(f'<p><img alt="{html.escape(value[1])}" src="data:image/png;base64,{data}"></p>')
            elif kind == "code":
                out.append(f"<pre>{html.escape(value)}</pre>")
        out.append("</body></html>\n")
        return "\n".join(out)


def _inline_html(text: str) -> str:
    """Escape, then render the two inline marks this page uses: `code` and - list items."""
    escaped = html.escape(text)
    parts = escaped.split("`")
    escaped = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    lines = escaped.split("\n")
    if all(line.startswith("- ") for line in lines):
        return "<ul>" + "".join(f"<li>{line[2:]}</li>" for line in lines) + "</ul>"
    return "<br>".join(lines)


@dataclass
class Report:
    """What :func:`build_report` computed (the numbers behind every file)."""

    combined: Combined
    table1: pd.DataFrame
    costs: pd.DataFrame
    breakdown: pd.DataFrame
    files: list[str]


def build_report(combined: Combined, out: Path, reference: str | None = None) -> Report:
    """Write every report file into the existing directory ``out`` (see the module docstring)."""
    out = Path(out)
    t1 = table1(combined, reference)
    t1_text = table1_text(t1)
    t1.to_csv(out / "table1.csv", index_label="strategy")
    (out / "table1.md").write_text(t1_text.markdown())
    (out / "table1.tex").write_text(t1_text.latex())

    plot_per_period(combined.periods, combined.strategies, out / "per_period.png")

    costs = cost_table(combined)
    costs_text = cost_text(costs)
    costs.to_csv(out / "table2_update_seconds.csv")
    (out / "table2_update_seconds.md").write_text(costs_text.markdown())

    groups = breakdown_table(combined)
    groups.to_csv(out / "breakdown.csv", index=False)
    group_texts = {m: breakdown_text(groups, m) for m in KEY_METRICS}
    (out / "breakdown.md").write_text("\n".join(f"{metric_label(m)}\n\n{t.markdown()}"
                                                for m, t in group_texts.items()))
    plot_breakdown(groups, out / "breakdown.png")

    title = "smlrec replay report: " + ", ".join(run.name for run in combined.runs)
    page = _Page()
    page.heading(title, 1)
    scored = combined.scored_periods
    test = scored[scored["role"] == "test"]
    reference_name = t1.attrs["reference"]
    page.text(f"{len(combined.strategies)} strategies, {len(test)} test periods "
              f"({int(test['interactions'].sum())} test interactions). Each test interaction is ranked "
              "among 1 positive + 999 sampled negatives; metrics are micro-averaged over the test "
              "periods (weighted by interactions).")
    page.heading("Table 1: accuracy over the test periods")
    page.text(f"Best of each column in bold. RI = relative improvement of {reference_name} (the "
              "strategy best on most columns) over each row, (ref - m) / m averaged over the six "
              "columns. Also as `table1.csv` and `table1.tex`.")
    page.table(t1_text)
    page.heading("Per test period")
    page.image(out / "per_period.png", "Recall@20 and NDCG@20 per test period")
    page.heading("Table 2: update cost")
    page.text("Seconds of the update whose model is scored on each test period (the update on the "
              "period before it); the fastest mean in bold; × fastest = mean / fastest mean.")
    page.table(costs_text)
    page.heading("Where the accuracy comes from: old/new users and items")
    page.text("\"new\" = first seen in a test period. Metrics micro-averaged over the test periods "
              "inside each group; n = test interactions of the group (share of all).")
    for metric, text in group_texts.items():
        page.text(metric_label(metric))
        page.table(text)
    page.image(out / "breakdown.png", "Recall@20 and NDCG@20 by old/new user and item")
    page.heading("Periods scored")
    page.table(TextTable(["Period", "Role", "Dates", "Interactions"],
                         [[str(r.period), r.role, r.label, str(r.interactions)]
                          for r in scored.itertuples(index=False)], align="rllr"))
    page.heading("Runs")
    for run in combined.runs:
        page.heading(run.name, 3)
        page.text("\n".join(f"- {key}: {value}" for key, value in _run_facts(run)))
        if combined.origin and len(combined.runs) > 1:
            page.text("strategies shown from this run: "
                      + ", ".join(s for s, r in combined.origin.items() if r == run.name))
    page.heading("Settings")
    for run in combined.runs:
        page.text(f"{run.name} (`config.json` settings):")
        page.code(json.dumps(run.config.get("settings", {}), indent=1, sort_keys=True))
    (out / "report.md").write_text(page.markdown())
    (out / "report.html").write_text(page.html(title))
    files = sorted(p.name for p in out.iterdir())
    return Report(combined, t1, costs, groups, files)


def write_report(run_dirs: Sequence[str | Path], out: str | Path, reference: str | None = None,
                 names: Sequence[str | None] | None = None,
                 shown_paths: Sequence[str | Path | None] | None = None) -> Report:
    """Read and align ``run_dirs``, and write the report directory ``out`` atomically.

    ``out`` must not exist or be empty; it is built under a temporary name beside it and renamed
    into place when complete, so a failed report leaves nothing behind.
    """
    combined = load_runs(run_dirs, names, shown_paths)
    with atomic_directory(out) as tmp:
        report = build_report(combined, tmp, reference)
    return report
