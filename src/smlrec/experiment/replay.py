"""The replay: walk a timeline period by period, test-then-train, for each strategy.

For each strategy, starting from the shared pretrained model::

    for t in P .. N-1:
        if period t is scored (validation or test):
            for each protocol (sampled, full, auc): score D_t with the served model
        if t < N-1: strategy.update(D_t)     # timed; the model it serves is scored on D_{t+1}

The update is timed as ``update_seconds``; each protocol's scoring separately as
``scoring_seconds`` (never part of the update's cost). The strategies are trained once whatever
the number of protocols. The loop never branches on the strategy's type. Every block of scores is
checked for rows whose candidates all tie (evaluation/collapse.py): ``flat_share`` per record,
``collapsed`` when most rows are flat.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import ReplaySettings
from ..data.candidates import CandidateStore
from ..data.loading import load_timeline
from ..data.periods import SCORED_ROLES, Timeline
from ..errors import ConfigError
from ..evaluation.collapse import FlatWatch, is_collapsed
from ..evaluation.metrics import metrics_from_ranks, rank_candidates
from ..evaluation.protocols import (FULL_BLOCK_ELEMENTS, auc_negatives, full_blocks, full_ranks, outcome_metrics,
                                   pair_scores)
from ..evaluation.split import fixed_blocks, scored_by_ranks
from ..models.distributed import sum_over_ranks, world
from ..strategies import STRATEGIES, Strategy, default_strategies, load_entry_points
from ..strategies.factory import check_strategies, configure_threads, make_strategy
from ..strategies.pretrain import pretrain_model

GROUPS = (("old", "old"), ("old", "new"), ("new", "old"), ("new", "new"))
"""The paper's breakdown: "new" = first seen in a test period."""
WARM_COLD_GROUPS = (("warm", "warm"), ("warm", "cold"), ("cold", "warm"), ("cold", "cold"))
"""The cold-start breakdown: "warm" = the user (item) had an interaction in an earlier period."""
USER_SEGMENTS = ("warm", "cold")


@dataclass
class PeriodRecord:
    """The scores of one strategy on one scored period."""

    strategy: str
    period: int
    role: str
    label: str
    interactions: int
    metrics: dict[str, float]
    update_seconds: float
    breakdown: list[dict] = field(default_factory=list)
    warm_cold: list[dict] = field(default_factory=list)       # warm/cold user x item groups
    segments: dict[str, dict] = field(default_factory=dict)   # "warm"/"cold" users: interactions, metrics
    ranks: np.ndarray | None = field(default=None, repr=False)   # sampled / full: rank of each row
    protocol: str = "sampled"
    scoring_seconds: float = float("nan")
    pair_scores: np.ndarray | None = field(default=None, repr=False)  # auc: [n, 2] pos/neg scores
    calibrated: bool = True          # the strategy's scores are logits (LogLoss is defined)
    flat_share: float = float("nan")  # rows whose candidates' scores all tie (evaluation/collapse.py)

    @property
    def collapsed(self) -> bool:
        return is_collapsed(self.flat_share)

    @property
    def outcome(self) -> np.ndarray:
        """What the protocol's metrics are computed from: ranks, or ``[n, 2]`` pair scores."""
        return self.pair_scores if self.protocol == "auc" else self.ranks


def resolve_strategies(settings: ReplaySettings) -> list[str]:
    """The strategy names a replay runs: none given = the default set; ``all`` = every registered
    one; ``default`` inside a list stands for the default set (``default,ease``)."""
    names = list(settings.strategies) or default_strategies()
    if names == ["all"]:
        names = list(STRATEGIES)
    names = [n for name in names for n in (default_strategies() if name == "default" else [name])]
    names = list(dict.fromkeys(names))   # a name given twice runs once
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        load_entry_points()   # installed plug-ins are read only when a name is not built in
        unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        raise ConfigError(f"unknown strategy {unknown[0]!r} (known: {', '.join(STRATEGIES)})")
    return names


def iter_replay(timeline: Timeline, settings: ReplaySettings, strategies: list[str],
                initial_state: dict[str, torch.Tensor], candidates: CandidateStore,
                progress: bool = True,
                factory: Callable[[str], Strategy] | None = None) -> Iterator[PeriodRecord]:
    """Yield one record per (strategy, scored period), strategy by strategy."""
    plan = timeline.plan
    periods = timeline.periods[plan.pretrain:]
    pretrain = timeline.pretrain_data
    first_test = plan.pretrain + plan.offline + plan.validation
    user_first, item_first = timeline.first_seen_period()
    factory = factory or (lambda name: make_strategy(name, timeline, settings))
    negatives: dict[int, np.ndarray] = {}     # auc: drawn once per period, shared by all strategies
    for name in strategies:
        strategy = factory(name)
        strategy.start(pretrain, {k: v.clone() for k, v in initial_state.items()})
        last_update = float("nan")
        bar = tqdm(periods, desc=f"{name:>14}", unit="period", disable=not progress, leave=True,
                   dynamic_ncols=True)
        for period in bar:
            bar.set_postfix_str(f"period {period.index} ({period.role})")
            if period.role in SCORED_ROLES:
                new_user = user_first[period.users] >= first_test
                new_item = item_first[period.items] >= first_test
                cold_user = user_first[period.users] >= period.index
                cold_item = item_first[period.items] >= period.index
                calibrated = bool(strategy.calibrated_scores)
                # Drawn or read from the cache before the clock starts: not the first strategy's cost.
                if "sampled" in settings.protocols:
                    candidates.load(period)
                if "auc" in settings.protocols and period.index not in negatives:
                    negatives[period.index] = auc_negatives(period, settings.seed)
                for protocol in settings.protocols:
                    began = time.perf_counter()
                    watch = FlatWatch()
                    outcome = score_period(protocol, strategy, period, candidates, negatives, settings, watch)
                    seconds = time.perf_counter() - began

                    def metrics_of(subset: np.ndarray, protocol: str = protocol) -> dict[str, float]:
                        return outcome_metrics(protocol, subset, calibrated)

                    yield PeriodRecord(
                        strategy=name, period=period.index, role=period.role, label=period.label,
                        interactions=len(period), metrics=metrics_of(outcome), update_seconds=last_update,
                        breakdown=breakdown(outcome, new_user, new_item, metrics_of=metrics_of),
                        warm_cold=breakdown(outcome, cold_user, cold_item, WARM_COLD_GROUPS, metrics_of),
                        segments=user_segments(outcome, cold_user, metrics_of),
                        ranks=None if protocol == "auc" else outcome, protocol=protocol,
                        scoring_seconds=seconds, calibrated=calibrated,
                        pair_scores=outcome if protocol == "auc" else None, flat_share=watch.share)
            if period.index < timeline.periods[-1].index:
                last_update = strategy.update(period)
        bar.close()
        # Dropped before the next strategy is built, so two strategies' tables never coexist.
        del strategy


def score_period(protocol: str, strategy: Strategy, period, candidates: CandidateStore,
                 negatives: dict[int, np.ndarray], settings: ReplaySettings,
                 watch: FlatWatch | None = None) -> np.ndarray:
    """One period scored under ``protocol``: ranks (sampled, full) or ``[n, 2]`` scores (auc).

    Under torch.distributed with several ranks, each rank scores a contiguous run of the blocks of
    rows the single process scores, and the outcomes are gathered (evaluation/split.py): the same
    calls to ``strategy.score``, so the same outcomes. ``watch`` counts the flat rows of the period
    (under several ranks: summed over the ranks)."""
    if protocol == "auc" and period.index not in negatives:
        negatives[period.index] = auc_negatives(period, settings.seed)
    if world()[1] > 1:
        bounds = (full_blocks(period, FULL_BLOCK_ELEMENTS) if protocol == "full"
                  else fixed_blocks(len(period), settings.eval_batch_size))
        outcome = scored_by_ranks(lambda rows: score_rows(protocol, strategy, period, candidates, negatives,
                                                          settings, rows, watch),
                                  bounds, settings.device)
        if watch is not None:   # every rank holds the whole period's counts (a rank may score no rows)
            watch.rows = round(sum_over_ranks(watch.rows, settings.device))
            watch.flat = round(sum_over_ranks(watch.flat, settings.device))
        return outcome
    return score_rows(protocol, strategy, period, candidates, negatives, settings, watch=watch)


def score_rows(protocol: str, strategy: Strategy, period, candidates: CandidateStore,
               negatives: dict[int, np.ndarray], settings: ReplaySettings,
               rows: slice | None = None, watch: FlatWatch | None = None) -> np.ndarray:
    """The outcome of the period's ``rows`` (default all; a subset must start at a block bound,
    see ``score_period``), scored in blocks counted from the period's first row."""
    lo, hi = (0, len(period)) if rows is None else (rows.start, rows.stop)
    served = strategy.score if watch is None else watch.wrap(strategy.score)

    def score(block, cands):   # block: rows of the subset -> rows of the period
        return served(period, slice(lo + block.start, lo + block.stop), cands)

    if protocol == "sampled":
        return rank_candidates(score, candidates.get(period)[lo:hi], settings.eval_batch_size,
                               settings.device)
    if protocol == "full":
        return full_ranks(lambda block, cands: served(period, block, cands), period,
                          FULL_BLOCK_ELEMENTS, settings.device, rows=rows)
    return pair_scores(score, period.items[lo:hi], negatives[period.index][lo:hi],
                       settings.eval_batch_size, settings.device)


Metrics = Callable[[np.ndarray], dict]


def user_segments(outcome: np.ndarray, cold_user: np.ndarray,
                  metrics_of: Metrics = metrics_from_ranks) -> dict[str, dict]:
    """Interactions and metrics of the warm users' rows and of the cold users' rows."""
    return {segment: {"interactions": int(mask.sum()), **metrics_of(outcome[mask])}
            for segment, mask in (("warm", ~cold_user), ("cold", cold_user))}


def breakdown(outcome: np.ndarray, new_user: np.ndarray, new_item: np.ndarray,
              groups: tuple[tuple[str, str], ...] = GROUPS,
              metrics_of: Metrics = metrics_from_ranks) -> list[dict]:
    """Metrics per (user group, item group); the second name of each pair ("new" or "cold") is
    the one whose mask is true. Empty groups are listed with 0 rows. ``outcome`` holds one entry
    per row (ranks, or pair scores under the auc protocol)."""
    rows = []
    user_names, item_names = groups[-1]
    for user_group, item_group in groups:
        mask = (new_user == (user_group == user_names)) & (new_item == (item_group == item_names))
        rows.append({"user_group": user_group, "item_group": item_group,
                     "interactions": int(mask.sum()), **metrics_of(outcome[mask])})
    return rows


@dataclass
class ReplayResult:
    records: list[PeriodRecord]
    timeline: Timeline
    settings: ReplaySettings
    strategies: list[str]
    pretrain_losses: list[float]
    pretrain_seconds: float
    wall_seconds: float
    leader: bool = True      # False on ranks other than 0 of a torchrun job (they write nothing)


def replay(settings: ReplaySettings, progress: bool = True, timeline: Timeline | None = None,
           runner: Callable[..., Iterable[PeriodRecord]] | None = None) -> ReplayResult:
    """Run every chosen strategy over the timeline and collect the records.

    ``runner(timeline, settings, names, initial_state, candidates, progress)`` yields the records in
    strategy order (default ``iter_replay``; ``experiment.parallel.pool_runner`` spreads the
    strategies over worker processes)."""
    began = time.perf_counter()
    configure_threads(settings)
    timeline = timeline or load_timeline(settings)
    names = resolve_strategies(settings)
    check_strategies(names, timeline, settings)
    t0 = time.perf_counter()
    initial, losses = pretrain_model(timeline.pretrain_data, timeline.log.n_users, timeline.log.n_items,
                                     settings)
    pretrain_seconds = time.perf_counter() - t0
    candidates = CandidateStore(timeline, settings.seed, settings.n_negatives, settings.cache_dir)
    records = list((runner or iter_replay)(timeline, settings, names, initial, candidates, progress))
    return ReplayResult(records, timeline, settings, names, losses, pretrain_seconds,
                        time.perf_counter() - began, leader=world()[0] == 0)
