"""The report's figures: metrics per test period, the old/new user x item breakdown as bars, and
cost against accuracy per protocol.

Drawn with matplotlib's object API on the Agg canvas: no pyplot, no global backend switch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .runs import period_signature
from .tables import GROUP_ORDER, KEY_METRICS, metric_label

# Twelve colours, markers and four dash patterns: any two of the first twelve strategies differ in
# colour AND marker, and neighbours in the order also differ in dash pattern.
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf", "#000000", "#8b6d00")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")
LINESTYLES = ("-", "--", "-.", ":")
HATCHES = ("", "//", "..", "xx", "\\\\", "--", "++", "oo", "||", "**", "OO", "..")


def strategy_styles(strategies: Sequence[str]) -> dict[str, dict[str, Any]]:
    """A colour, marker, dash pattern and hatch per strategy, stable in the given order."""
    return {name: {"color": COLORS[i % len(COLORS)], "marker": MARKERS[i % len(MARKERS)],
                   "linestyle": LINESTYLES[i % len(LINESTYLES)], "hatch": HATCHES[i % len(HATCHES)]}
            for i, name in enumerate(strategies)}


def new_figure(width: float, height: float):
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


def legend_columns(strategies: Sequence[str], width_inches: float) -> int:
    longest = max((len(s) for s in strategies), default=8)
    per_entry = 0.9 + 0.085 * longest  # inches: handle + text at the legend's font size
    return max(1, min(len(strategies), int(width_inches // per_entry)))


def plot_per_period(periods: pd.DataFrame, strategies: Sequence[str], path: Path,
                    metrics: Sequence[str] = KEY_METRICS, role: str = "test",
                    title: str | None = None) -> Path:
    """One panel per metric: the metric per scored period of ``role``, one line per strategy."""
    scored = periods[periods["role"] == role]
    signature = period_signature(scored)
    x_positions = {p: i for i, p in enumerate(signature["period"])}
    n = len(signature)
    width = max(9.0, min(20.0, 2.2 + len(metrics) * (1.5 + 0.55 * n)))
    figure = new_figure(width, 4.6)
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
                  ncols=legend_columns(strategies, width), frameon=False, fontsize=9)
    if title:
        figure.suptitle(title)
    figure.savefig(path)
    return path


def plot_breakdown(table: pd.DataFrame, path: Path, metrics: Sequence[str] = KEY_METRICS) -> Path:
    """Grouped bars: the four old/new groups on x, one bar per strategy, one panel per metric."""
    strategies = list(dict.fromkeys(table["strategy"]))
    styles = strategy_styles(strategies)
    width = max(9.0, min(20.0, 2.0 + len(metrics) * (2.0 + 0.45 * len(strategies))))
    figure = new_figure(width, 4.8)
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
                  ncols=legend_columns(strategies, width), frameon=False, fontsize=9)
    figure.savefig(path)
    return path


def plot_cost_accuracy(table: pd.DataFrame, seconds: pd.Series, metric: str, path: Path,
                       title: str | None = None) -> Path:
    """One point per strategy: mean update seconds (log x) against ``metric`` with its 95%
    interval as a vertical bar (``table`` is a Table 1 with ``{metric}_lo``/``_hi`` columns)."""
    strategies = list(table.index)
    styles = strategy_styles(strategies)
    figure = new_figure(7.5, 5.0)
    ax = figure.subplots()
    # A popularity count updates in microseconds; keep it on a log axis instead of at 0.
    x = np.maximum(seconds.reindex(strategies).to_numpy(dtype=float), 1e-4)
    y = table[metric].to_numpy(dtype=float)
    lo = table.get(f"{metric}_lo", pd.Series(np.nan, index=table.index)).to_numpy(dtype=float)
    hi = table.get(f"{metric}_hi", pd.Series(np.nan, index=table.index)).to_numpy(dtype=float)
    for i, strategy in enumerate(strategies):
        if not (np.isfinite(x[i]) and np.isfinite(y[i])):
            continue
        style = styles[strategy]
        error = ([[y[i] - lo[i]], [hi[i] - y[i]]] if np.isfinite(lo[i]) and np.isfinite(hi[i]) else None)
        ax.errorbar([x[i]], [y[i]], yerr=error, fmt=style["marker"], color=style["color"],
                    markersize=7, markerfacecolor="white", markeredgewidth=1.5, capsize=3, label=strategy)
        ax.annotate(strategy, (x[i], y[i]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("mean update seconds per test period (log scale; floored at 1e-4 s)")
    ax.set_ylabel(f"{metric_label(metric)} (test, 95% interval)")
    ax.set_title(title or f"Cost and accuracy: {metric_label(metric)}")
    ax.grid(True, which="both", alpha=0.3)
    figure.savefig(path)
    return path
