"""What a sweep writes: its tables and its sensitivity figure.

Written by :func:`write_sweep` (the grid itself is run by :mod:`smlrec.experiment.sweep`):

* ``sweep.csv``: one row per (grid point, strategy): the grid values, the six metrics
  micro-averaged over the validation periods, validation_interactions, update_seconds (mean);
* ``sweep_periods.csv``: the same per validation period;
* ``sweep.png``: the chosen metric over the grid: a line plot (one key) or a heat-map (two keys;
  none for three or more);
* ``sweep.json``: the grid, the metric, the best point per strategy and the base settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..atomic import atomic_directory
from ..config import to_dict
from ..errors import ConfigError
from ..experiment.sweep import SweepResult
from .figures import legend_columns, new_figure, strategy_styles
from .tables import metric_label


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
        figure = new_figure(max(6.5, 2.5 + 0.8 * len(values)), 4.6)
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
        figure.legend(loc="outside lower center", ncols=legend_columns(strategies, 6.5),
                      frameon=False, fontsize=9)
        figure.savefig(path)
        return path
    if len(keys) != 2:
        raise ConfigError(f"a sweep figure shows one or two grid keys, not {len(keys)}")
    row_key, column_key = keys
    row_values = _grid_values(table[row_key])
    column_values = _grid_values(table[column_key])
    panel_w = 1.6 + 0.9 * len(column_values)
    figure = new_figure(max(5.0, panel_w * len(strategies) + 1.0), 1.8 + 0.6 * len(row_values))
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


def write_sweep(result: SweepResult, out: str | Path) -> Path:
    """Write sweep.csv, sweep_periods.csv, sweep.png and sweep.json atomically into ``out``."""
    with atomic_directory(out) as tmp:
        result.table.to_csv(tmp / "sweep.csv", index=False)
        result.periods.to_csv(tmp / "sweep_periods.csv", index=False)
        if len(result.axes) <= 2:
            plot_sweep(result.table, result.keys, result.metric, tmp / "sweep.png")
        base = to_dict(result.settings[0])
        summary = {"grid": {axis.key: list(axis.values) for axis in result.axes},
                   "metric": result.metric, "scored_role": "validation",
                   "best": result.best().to_dict(orient="records"),
                   "settings_of_first_point": base, "wall_seconds": result.wall_seconds}
        (tmp / "sweep.json").write_text(json.dumps(summary, indent=2, default=str))
    return Path(out)
