"""Tiny synthetic logs for the production tests: equal-size daily periods with new ids over time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

DAY = 86400
T0 = 1_600_000_000 - 1_600_000_000 % DAY  # a midnight


def synthetic_log(n_periods: int = 6, rows: int = 120, seed: int = 0) -> pd.DataFrame:
    """``n_periods`` days of ``rows`` interactions each; period t uses users < 20+6t, items < 30+8t."""
    rng = np.random.default_rng(seed)
    frames = []
    for t in range(n_periods):
        users = rng.integers(0, 20 + 6 * t, rows) + 1000
        items = rng.integers(0, 30 + 8 * t, rows) + 5000
        times = T0 + t * DAY + np.sort(rng.integers(0, DAY, rows))
        frames.append(pd.DataFrame({"user": users, "item": items, "time": times}))
    return pd.concat(frames, ignore_index=True)


def write_periods(frame: pd.DataFrame, folder: Path, history_periods: int, rows: int = 120) -> tuple[Path, list[Path]]:
    """The first ``history_periods`` periods as history.csv, each later period as its own file."""
    folder.mkdir(parents=True, exist_ok=True)
    history = folder / "history.csv"
    frame.iloc[: history_periods * rows].to_csv(history, index=False)
    batches = []
    for t in range(history_periods, len(frame) // rows):
        path = folder / f"period-{t:02d}.csv"
        frame.iloc[t * rows: (t + 1) * rows].to_csv(path, index=False)
        batches.append(path)
    return history, batches


# Per-strategy overrides that keep the tests fast (a strategy missing here runs its defaults).
FAST_STRATEGY_SETTINGS = {"full-retrain": {"epochs": 2}, "fine-tune": {"epochs": 2},
                          "no-update": {"epochs": 2}, "sml": {"rounds": 2, "hidden": 32},
                          "sml-blend": {"rounds": 2, "hidden": 32}, "sml-h": {"rounds": 2, "hidden": 32, "residual": True, "keep_scale": True},
                          "fine-tune-h": {"epochs": 2}}
# sml-h in the residual, scale-keeping form: the plain transfer squeezes this tiny log's item rows
# to one point (spread 5e-5), so a fold-in could not change a score and a check that recent items
# matter could not fail.


def tiny_settings(strategy: str, history_periods: int, pretrain: int = 2, sparse: bool = True) -> dict:
    """Replay settings for a history of ``history_periods`` equal periods (fast: dim 8, 1-2 epochs)."""
    return {"data": {"periods": history_periods},
            "plan": {"pretrain": pretrain, "offline": history_periods - pretrain - 1, "validation": 0, "test": 1},
            "mf": {"dim": 8, "batch_size": 64, "sparse": sparse},
            "pretrain": {"epochs": 2}, "seed": 7, "threads": 1,
            "strategy": {strategy: dict(FAST_STRATEGY_SETTINGS.get(strategy, {}))}}
