"""How sure a difference is: bootstrap intervals and paired p-values over the test interactions.

Nothing is re-scored: the per-interaction outcomes already computed (ranks, or AUC pair scores)
are reweighted. A resample draws the *units* with replacement (users by default: a user's rows are
correlated, so treating them as independent would make intervals too narrow; or single
interactions) and gives every row the number of times its unit was drawn as a weight, so every
metric of a resample is a weighted mean (or a weighted AUC) computed for all resamples at once::

    counts[r, g] = #{draws of resample r equal to unit g}       (bincount, no Python loop)
    w[r, i]      = counts[r, unit(i)]
    metric_r     = sum_i w[r, i] x_i / sum_i w[r, i]                 (Recall, NDCG, LogLoss)
    AUC_r        = sum_p W_p[r] AUC_p(w[r]) / sum_p W_p[r]           (per period, micro-averaged)

The same weights are used for every strategy of a protocol, so differences are *paired*. The
95% interval is the 2.5th-97.5th percentile of ``metric_r``. The p-value of "best vs another"
is the two-sided bootstrap test of a zero difference (the bootstrap distribution of the
difference, shifted to the null; Efron and Tibshirani 1993, section 16.4)::

    d = best - other (point),  d_r = the same on resample r
    p = (1 + #{r : |d_r - d| >= |d|}) / (R + 1)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd

from ..errors import ConfigError
from .metrics import DEFAULT_KS
from .protocols import LOWER_IS_BETTER, weighted_auc

BOOTSTRAP_UNITS = ("user", "interaction")
MAX_WEIGHT_ELEMENTS = 1 << 22   # resample weights held at once (32 MiB of float64)


def rank_values(ranks: np.ndarray, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """Per-row Recall@K and NDCG@K, whose means are :func:`metrics_from_ranks`."""
    ranks = np.asarray(ranks, dtype=np.float64)
    gains = 1.0 / np.log2(ranks + 2.0)
    out = {f"recall@{k}": (ranks < k).astype(np.float64) for k in ks}
    out.update({f"ndcg@{k}": np.where(ranks < k, gains, 0.0) for k in ks})
    return out


@dataclass
class RowOutcomes:
    """One protocol's scored rows, the same rows in the same order for every strategy."""

    strategies: list[str]
    units: np.ndarray                      # [n] the resampled unit of each row (user index, or row)
    periods: np.ndarray                    # [n] the row's period (AUC is per period)
    values: dict[str, np.ndarray]          # metric -> [S, n]: the metric is the rows' mean
    pairs: np.ndarray | None = None        # [S, n, 2] positive/negative scores (protocol auc)

    @property
    def metrics(self) -> list[str]:
        return [*self.values, *(["auc"] if self.pairs is not None else [])]


def resample_weights(units: np.ndarray, n_resamples: int, rng: np.random.Generator,
                     max_elements: int = MAX_WEIGHT_ELEMENTS) -> Iterator[np.ndarray]:
    """Row weights ``[r, n]``, a chunk of resamples at a time: each resample draws as many units
    as there are, with replacement; a row's weight is the number of draws of its unit."""
    _, inverse = np.unique(np.asarray(units), return_inverse=True)
    groups = int(inverse.max()) + 1 if len(inverse) else 0
    step = max(1, max_elements // max(1, len(inverse), groups))
    for lo in range(0, n_resamples, step):
        r = min(step, n_resamples - lo)
        draws = rng.integers(0, max(groups, 1), size=(r, groups)) + groups * np.arange(r)[:, None]
        counts = np.bincount(draws.ravel(), minlength=r * groups).reshape(r, groups)
        yield counts[:, inverse].astype(np.float64)


def statistics(outcomes: RowOutcomes, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of every strategy under row weights ``[r, n]``: metric -> ``[S, r]``."""
    weights = np.atleast_2d(weights)
    total = weights.sum(axis=1)
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for metric, values in outcomes.values.items():
            # NaN rows (an uncalibrated LogLoss) must make the metric NaN, not vanish in 0 x NaN.
            out[metric] = (np.nan_to_num(values) @ weights.T) / total
            out[metric][np.isnan(values).any(axis=1)] = np.nan
        if outcomes.pairs is not None:
            auc = np.zeros((len(outcomes.strategies), weights.shape[0]))
            for period in np.unique(outcomes.periods):
                mask = outcomes.periods == period
                period_weights = weights[:, mask]
                share = period_weights.sum(axis=1)
                for s in range(len(outcomes.strategies)):
                    value = weighted_auc(outcomes.pairs[s, mask], period_weights)
                    auc[s] += np.where(share > 0, share * value, 0.0)
            out["auc"] = auc / total
    return out


@dataclass
class Bootstrap:
    """Point estimates and R resampled values of every metric of every strategy."""

    strategies: list[str]
    point: dict[str, np.ndarray]           # metric -> [S]
    samples: dict[str, np.ndarray]         # metric -> [S, R]
    unit: str

    def intervals(self, level: float = 0.95) -> pd.DataFrame:
        """One row per strategy: ``{metric}_lo`` and ``{metric}_hi`` (percentile interval)."""
        tail = 100.0 * (1.0 - level) / 2.0
        frame = pd.DataFrame({"strategy": self.strategies})
        for metric, samples in self.samples.items():
            finite = np.isfinite(self.point[metric])
            lo = np.full(len(self.strategies), np.nan)
            hi = np.full(len(self.strategies), np.nan)
            if finite.any() and samples.shape[1]:
                lo[finite], hi[finite] = np.percentile(samples[finite], [tail, 100.0 - tail], axis=1)
            frame[f"{metric}_lo"] = lo
            frame[f"{metric}_hi"] = hi
        return frame

    def significance(self) -> pd.DataFrame:
        """For each metric, the best strategy against every other: difference and p-value."""
        rows = []
        for metric, point in self.point.items():
            if not np.isfinite(point).any():
                continue
            sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
            best = int(np.nanargmax(sign * point))
            for s, name in enumerate(self.strategies):
                if s == best or not np.isfinite(point[s]):   # e.g. no LogLoss: nothing to compare
                    continue
                difference = point[best] - point[s]
                samples = self.samples[metric][best] - self.samples[metric][s]
                rows.append({"metric": metric, "best": self.strategies[best], "strategy": name,
                             "difference": difference,
                             "p_value": paired_p_value(difference, samples)})
        return pd.DataFrame(rows, columns=["metric", "best", "strategy", "difference", "p_value"])


def paired_p_value(difference: float, samples: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "no difference" (module docstring); NaN if undefined."""
    samples = np.asarray(samples, dtype=np.float64)
    if not np.isfinite(difference) or samples.size == 0 or not np.isfinite(samples).all():
        return float("nan")
    extreme = np.abs(samples - difference) >= abs(difference)
    return float((1 + extreme.sum()) / (len(samples) + 1))


def bootstrap(outcomes: RowOutcomes, n_resamples: int, rng: np.random.Generator,
              unit: str = "user") -> Bootstrap:
    """Resample ``outcomes`` ``n_resamples`` times (vectorised in chunks; see the module docstring).

    ``outcomes.units`` are the units for ``unit = "user"``; ``"interaction"`` resamples rows.
    """
    if unit not in BOOTSTRAP_UNITS:
        raise ConfigError(f"bootstrap unit {unit!r}: expected one of {', '.join(BOOTSTRAP_UNITS)}")
    n = len(outcomes.units)
    point = statistics(outcomes, np.ones((1, n)))
    point = {m: v[:, 0] for m, v in point.items()}
    units = outcomes.units if unit == "user" else np.arange(n)
    chunks: dict[str, list[np.ndarray]] = {m: [] for m in point}
    if n:
        for weights in resample_weights(units, n_resamples, rng):
            for metric, values in statistics(outcomes, weights).items():
                chunks[metric].append(values)
    samples = {m: (np.concatenate(v, axis=1) if v else np.zeros((len(outcomes.strategies), 0)))
               for m, v in chunks.items()}
    return Bootstrap(list(outcomes.strategies), point, samples, unit)
