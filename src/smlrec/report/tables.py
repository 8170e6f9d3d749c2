"""The report's tables: Table 1 (accuracy, RI), warm/cold users against the popularity floor,
Table 2 (update cost), the old/new and warm/cold breakdowns.

Each table is computed as numbers (a DataFrame, also written as CSV) and rendered as a
:class:`TextTable`: one cell grid written as Markdown, HTML and LaTeX, best cells in bold.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..evaluation.metrics import METRIC_NAMES, micro_average
from ..evaluation.protocols import LOWER_IS_BETTER, protocol_metric_names
from ..experiment.results import summary_frame, top_order
from .runs import Combined

KEY_METRICS = ("recall@20", "ndcg@20")
NOT_SIGNIFICANT = "≈"
"""Marks a value whose difference from the column's best is not significant at 5% (paired bootstrap)."""
SIGNIFICANCE_LEVEL = 0.05
COLLAPSED_MARK = "(!)"
"""Marks a strategy whose served scores tied across candidates for most rows in some test periods
(evaluation/collapse.py): its metrics say the model is broken, not that it is weak."""


def key_metrics(protocol: str) -> tuple[str, str]:
    """The two metrics figures and secondary tables show under a protocol."""
    return ("auc", "logloss") if protocol == "auc" else KEY_METRICS


def order_metric(protocol: str) -> str:
    """The metric that orders the strategies under a protocol."""
    return "auc" if protocol == "auc" else "recall@20"
GROUP_ORDER = (("old", "old"), ("old", "new"), ("new", "old"), ("new", "new"))
WARM_COLD_ORDER = (("warm", "warm"), ("warm", "cold"), ("cold", "warm"), ("cold", "cold"))
SEGMENT_SUFFIXES = (("all", ""), ("warm users", "_warm"), ("cold users", "_cold"))
POPULARITY_FLOOR = ("pop", "pop-recent")
BELOW_FLOOR = "▼"


def metric_label(metric: str) -> str:
    """``recall@20`` -> ``Recall@20``; ``auc`` -> ``AUC``."""
    if "@" not in metric:
        return {"auc": "AUC", "logloss": "LogLoss"}.get(metric, metric)
    name, k = metric.split("@")
    return {"recall": "Recall", "ndcg": "NDCG"}.get(name, name) + f"@{k}"


def short_label(metric: str) -> str:
    """``recall@20`` -> ``R@20``, ``ndcg@5`` -> ``N@5``, ``auc`` -> ``AUC``."""
    return metric_label(metric).replace("Recall", "R").replace("NDCG", "N")


def single_protocol(combined: Combined) -> tuple[Combined, str]:
    """``combined`` restricted to its first protocol (tables of one protocol), and that protocol."""
    protocols = combined.protocols or ["sampled"]
    return (combined.for_protocol(protocols[0]) if len(protocols) > 1 else combined), protocols[0]



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


def _best_rows(values: pd.Series, lower_is_better: bool = False) -> list[int]:
    """Positions of the best of a column, the maximum unless ``lower_is_better`` (all of them on
    ties); none when all are missing."""
    array = values.to_numpy(dtype=float) * (-1.0 if lower_is_better else 1.0)
    if not np.isfinite(array).any():
        return []
    return [int(i) for i in np.flatnonzero(array == np.nanmax(array))]


# ----------------------------------------------------------------------------------------------
# (a) Table 1: strategies x metrics over the test periods, with RI

def test_summary(combined: Combined) -> pd.DataFrame:
    """Metrics micro-averaged over all test periods, one row per strategy (as ``summary.csv``),
    under the first protocol of ``combined`` (restrict it with ``for_protocol`` for another)."""
    combined, _ = single_protocol(combined)
    summary = summary_frame(combined.periods, role="test").set_index("strategy")
    missing = [s for s in combined.strategies if s not in summary.index]
    if missing:
        raise ConfigError(f"strategy {missing[0]!r} has no test period scored; nothing to report "
                          "(Table 1 averages over test periods)")
    return summary.loc[combined.strategies]


def reference_strategy(summary: pd.DataFrame, columns: Sequence[str] = METRIC_NAMES) -> str:
    """The best strategy: most metric columns won; ties go to the higher mean column-relative score."""
    metrics = summary[list(columns)].astype(float)
    wins = pd.Series(0, index=metrics.index)
    for column in columns:
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
    """Table 1 as numbers, under the first protocol of ``combined``: the protocol's metrics with
    their 95% intervals (``_lo``/``_hi``, from summary.csv; NaN when not computed), test
    interactions, RI of the reference over each strategy, and ``{metric}_p``: the p-value of the
    difference from that column's best (NaN for the best itself or when not computed).

    RI averages the metrics where higher is better (all six under sampled/full; AUC under auc).
    """
    combined, protocol = single_protocol(combined)
    metrics = list(protocol_metric_names(protocol))
    ri_metrics = [m for m in metrics if m not in LOWER_IS_BETTER]
    summary = test_summary(combined)
    if reference is None:
        reference = reference_strategy(summary, ri_metrics)
    elif reference not in summary.index:
        raise ConfigError(f"reference strategy {reference!r} is not in the report "
                          f"(strategies: {', '.join(summary.index)})")
    table = summary[[*metrics, "test_interactions"]].copy()
    table["collapsed_periods"] = summary["collapsed_periods"].fillna(0).astype(int)
    table["ri"] = [float("nan") if name == reference else
                   relative_improvement(summary.loc[reference], summary.loc[name], ri_metrics)
                   for name in summary.index]
    saved = combined.summary.set_index("strategy") if not combined.summary.empty else pd.DataFrame()
    for metric in metrics:
        for end in ("lo", "hi"):
            column = f"{metric}_{end}"
            table[column] = (saved[column].reindex(table.index).to_numpy(dtype=float)
                             if column in saved else np.nan)
        table[f"{metric}_p"] = _p_values(combined.significance, metric, table[metric],
                                         metric in LOWER_IS_BETTER)
    table.attrs["reference"] = reference
    table.attrs["protocol"] = protocol
    table.attrs["metrics"] = metrics
    return table


def _p_values(tests: pd.DataFrame, metric: str, values: pd.Series, lower_is_better: bool) -> np.ndarray:
    """Per strategy, the p-value of its difference from the column's best, when that best is the
    one the test was run against (tests are within one run; combining runs can change the best)."""
    out = np.full(len(values), np.nan)
    best_rows = _best_rows(values, lower_is_better)
    if tests.empty or not best_rows:
        return out
    best = values.index[best_rows[0]]
    mine = tests[(tests["metric"] == metric) & (tests["best"] == best)].set_index("strategy")["p_value"]
    for i, name in enumerate(values.index):
        if name in mine.index:
            out[i] = float(mine.loc[name])
    return out


def table1_text(table: pd.DataFrame) -> TextTable:
    reference = table.attrs["reference"]
    metrics = table.attrs.get("metrics", list(METRIC_NAMES))
    header = ["Strategy", *[short_label(m) for m in metrics], f"RI of {reference}"]

    def cell(row: pd.Series, metric: str) -> str:
        text = _fmt(row[metric])
        lo, hi = row.get(f"{metric}_lo", np.nan), row.get(f"{metric}_hi", np.nan)
        if np.isfinite(lo) and np.isfinite(hi):
            text += f" ± {(hi - lo) / 2:.4f}"
        p = row.get(f"{metric}_p", np.nan)
        if np.isfinite(p) and p >= SIGNIFICANCE_LEVEL:
            text += f" {NOT_SIGNIFICANT}"
        return text

    def name_cell(name: str, row: pd.Series) -> str:
        count = int(row.get("collapsed_periods", 0) or 0)
        return f"{name} {COLLAPSED_MARK} collapsed in {count}" if count else name

    rows = [[name_cell(name, row), *[cell(row, m) for m in metrics],
             "—" if name == reference else _fmt_percent(row["ri"])]
            for name, row in table.iterrows()]
    bold = {(r, c + 1) for c, m in enumerate(metrics)
            for r in _best_rows(table[m], m in LOWER_IS_BETTER)}
    return TextTable(header, rows, bold)


# ----------------------------------------------------------------------------------------------
# (a') how the strategies' order changes between protocols

def order_table(combined: Combined) -> pd.DataFrame:
    """Per strategy, its place (1 = best) under each protocol, by R@20 (sampled, full) or AUC,
    with the metric's value; ``attrs["kendall"]``: Kendall's tau between each pair of protocols."""
    table = pd.DataFrame(index=pd.Index(combined.strategies, name="strategy"))
    for protocol in combined.protocols:
        summary = test_summary(combined.for_protocol(protocol))
        metric = order_metric(protocol)
        values = summary[metric].reindex(table.index)
        table[f"{protocol} {short_label(metric)}"] = values
        table[f"{protocol} place"] = values.rank(ascending=False, method="min")
    places = [c for c in table.columns if c.endswith(" place")]
    table.attrs["kendall"] = {(a.removesuffix(" place"), b.removesuffix(" place")):
                              kendall_tau(table[a].to_numpy(), table[b].to_numpy())
                              for i, a in enumerate(places) for b in places[i + 1:]}
    return table


def top_three_table(table: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    """From :func:`order_table`: per protocol (columns), its ``n`` best strategies (rows, best
    first) with the value that orders them, side by side."""
    values = [c for c in table.columns if not c.endswith(" place")]
    out = pd.DataFrame(index=pd.Index(range(1, n + 1), name="place"))
    for column in values:
        pairs = top_order(table.index, table[column].to_numpy(dtype=float), n)
        out[f"{column} strategy"] = [p[0] for p in pairs] + [""] * (n - len(pairs))
        out[column] = [p[1] for p in pairs] + [np.nan] * (n - len(pairs))
    return out


def top_three_text(top: pd.DataFrame) -> TextTable:
    values = [c for c in top.columns if not c.endswith(" strategy")]
    header = ["Place", *values]
    def cell(place: int, column: str) -> str:
        name, value = top.loc[place, f"{column} strategy"], top.loc[place, column]
        if not name:
            return "—"
        level = place > 1 and abs(value - top.loc[place - 1, column]) <= 1e-12
        return f"{name} ({_fmt(value)})" + (" = above" if level else "")

    rows = [[str(place), *[cell(place, c) for c in values]] for place in top.index]
    return TextTable(header, rows)


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-a between two orderings (pairs with a NaN skipped): 1 same order, -1 reversed."""
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = np.asarray(a)[keep], np.asarray(b)[keep]
    if len(a) < 2:
        return float("nan")
    upper = np.triu_indices(len(a), 1)
    sign = np.sign(a[:, None] - a[None, :])[upper] * np.sign(b[:, None] - b[None, :])[upper]
    return float(sign.sum() / len(sign))


def order_text(table: pd.DataFrame) -> TextTable:
    header = ["Strategy", *table.columns]
    rows = [[name, *[(_fmt(v, 0) if c.endswith(" place") else _fmt(v)) for c, v in row.items()]]
            for name, row in table.iterrows()]
    bold = {(r, c + 1) for c, column in enumerate(table.columns) if column.endswith(" place")
            for r in _best_rows(-table[column])}
    return TextTable(header, rows, bold)


# ----------------------------------------------------------------------------------------------
# (b) warm and cold users side by side, against the popularity floor

def segment_table(combined: Combined, metrics: Sequence[str] = KEY_METRICS) -> pd.DataFrame:
    """R@20 and N@20 (or ``metrics``) over all, warm-user and cold-user test rows, per strategy."""
    summary = test_summary(combined)
    columns = [f"{m}{suffix}" for _, suffix in SEGMENT_SUFFIXES for m in metrics]
    table = summary.reindex(columns=[*columns, "warm_interactions", "cold_interactions"])
    table.index.name = "strategy"
    return table


def popularity_floor(table: pd.DataFrame) -> pd.Series | None:
    """Per column, the better of ``pop`` and ``pop-recent`` (None when neither ran)."""
    floors = [name for name in table.index if name in POPULARITY_FLOOR]
    return table.loc[floors].max(axis=0) if floors else None


def segment_text(table: pd.DataFrame, metrics: Sequence[str] = KEY_METRICS) -> TextTable:
    first = table.iloc[0]
    counts = {"all": "", "warm users": f" (n={_fmt_count(first['warm_interactions'])})",
              "cold users": f" (n={_fmt_count(first['cold_interactions'])})"}
    header = ["Strategy"]
    for name, _ in SEGMENT_SUFFIXES:
        header += [f"{short_label(metrics[0])} {name}{counts[name]}", f"{short_label(metrics[1])} {name}"]
    columns = [f"{m}{suffix}" for _, suffix in SEGMENT_SUFFIXES for m in metrics]
    floor = popularity_floor(table)
    rows = []
    for strategy, row in table.iterrows():
        cells = [strategy]
        for column in columns:
            below = (floor is not None and strategy not in POPULARITY_FLOOR
                     and np.isfinite(row[column]) and row[column] < floor[column])
            cells.append(_fmt(row[column]) + (f" {BELOW_FLOOR}" if below else ""))
        rows.append(cells)
    bold = {(r, c + 1) for c, column in enumerate(columns) for r in _best_rows(table[column])}
    return TextTable(header, rows, bold)


def _fmt_count(value: float) -> str:
    return f"{int(value):,}" if np.isfinite(value) else "?"


# ----------------------------------------------------------------------------------------------
# (c) Table 2: update seconds per test period

def cost_table(combined: Combined) -> pd.DataFrame:
    """Update seconds per strategy (rows) and test period (columns), the mean and ratio to the fastest."""
    combined, _ = single_protocol(combined)
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

def breakdown_table(combined: Combined,
                    groups: tuple[tuple[str, str], ...] = GROUP_ORDER,
                    metrics: Sequence[str] = METRIC_NAMES) -> pd.DataFrame:
    """Per strategy and group: test interactions, their share, and micro-averaged metrics
    (old/new groups from ``breakdown.csv``, warm/cold groups from ``warm_cold.csv``)."""
    combined, _ = single_protocol(combined)
    frame = combined.breakdown if groups == GROUP_ORDER else combined.warm_cold
    totals = frame[frame["role"] == "test"]
    test = totals[totals["interactions"] > 0]
    rows = []
    for strategy in combined.strategies:
        mine = test[test["strategy"] == strategy]
        total = int(totals.loc[totals["strategy"] == strategy, "interactions"].sum())
        for user_group, item_group in groups:
            group = mine[(mine["user_group"] == user_group) & (mine["item_group"] == item_group)]
            weights = group["interactions"].to_numpy()
            n = int(weights.sum())
            rows.append({"strategy": strategy, "user_group": user_group, "item_group": item_group,
                         "interactions": n, "share": n / total if total else float("nan"),
                         **{m: micro_average(group[m].to_numpy(), weights) if n else float("nan")
                            for m in dict.fromkeys([*METRIC_NAMES, *metrics]) if m in group}})
    return pd.DataFrame(rows, columns=["strategy", "user_group", "item_group", "interactions",
                                       "share", *dict.fromkeys([*METRIC_NAMES, *metrics])])


def _group_title(user_group: str, item_group: str) -> str:
    return f"{user_group} user, {item_group} item"


def breakdown_text(table: pd.DataFrame, metric: str,
                   groups: tuple[tuple[str, str], ...] = GROUP_ORDER) -> TextTable:
    first = table[table["strategy"] == table["strategy"].iloc[0]]
    header = ["Strategy"]
    for (user_group, item_group), (_, row) in zip(groups, first.iterrows()):
        share = "" if not np.isfinite(row["share"]) else f", {row['share'] * 100:.1f}%"
        header.append(f"{_group_title(user_group, item_group)} (n={row['interactions']}{share})")
    wide = table.pivot(index="strategy", columns=["user_group", "item_group"], values=metric)
    wide = wide.reindex(list(dict.fromkeys(table["strategy"])))
    wide = wide[[g for g in groups]]
    rows = [[name, *[_fmt(v) for v in values]] for name, values in zip(wide.index, wide.to_numpy())]
    bold = {(r, c + 1) for c, g in enumerate(groups) for r in _best_rows(wide[g])}
    return TextTable(header, rows, bold)
