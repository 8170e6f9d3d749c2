"""The production loop: ``init_registry`` once, ``update_once`` per new period (``recommend``
answers queries from the result; see recommender.py).

One production update is exactly one replay step. ``init_registry`` cuts the history log into
periods, pretrains MF and runs the strategy over the history's periods after pretraining, as the
replay does (the replay skips the update on its last period only because nothing is scored after
it; in production the model must be ready for the future, so every history period is applied).
``update_once`` then builds the next :class:`Period` from a new batch file exactly as the replay
would have cut it from one long log:

* raw ids are mapped through the stored vocabularies; ids never seen before are appended in order
  of first appearance in the batch (the replay's indices are first-appearance over the whole log,
  so the indices agree), and the strategy's tables grow for them (``Strategy.grow``);
* ``start`` is the number of rows applied so far, ``items_seen`` continues the running count,
  and ``seen`` holds every (user, item) pair applied so far with its first position;
* the strategy's ``update`` runs once, and the result is written as the next version.

The period's role is ``test`` (the model keeps learning after every period, as in the replay's
test periods).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import ReplaySettings, replay_settings, to_dict
from ..data.loading import load_timeline
from ..data.log import InteractionLog, ReadOptions, read_log
from ..data.periods import Period, Plan
from ..data.pairs import PairIndex
from ..errors import CheckpointError, ConfigError, DataError
from ..strategies import Strategy, StrategyContext, create_strategy
from ..strategies.factory import configure_threads, make_strategy
from ..strategies.pretrain import pretrain_model
from .registry import Checkpoint, Cumulative, ModelRegistry, PreviousPeriod

PRODUCTION_ROLE = "test"


@dataclasses.dataclass
class UpdateReport:
    version: int
    period: int
    rows: int
    new_users: int
    new_items: int
    seconds: float
    warnings: list[str]


def init_registry(history: str | Path, registry: str | Path | ModelRegistry, strategy: str,
                  settings: ReplaySettings | dict | None = None, plan: Plan | str | None = None,
                  progress: bool = False) -> int:
    """Pretrain on the history's first periods, run ``strategy`` over the rest; write version 1.

    ``settings`` are the replay settings (data columns and period options, MF, pretraining,
    strategy overrides, seed); ``plan`` (``"P,O,V,T"``) overrides ``settings.plan`` and must add
    up to the number of periods the history splits into.
    """
    registry = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry)
    if not isinstance(settings, ReplaySettings):
        settings = replay_settings(settings or {})
    plan = Plan.parse(plan) if isinstance(plan, str) else plan
    data = dataclasses.replace(settings.data, path=str(history))
    settings = dataclasses.replace(settings, data=data, plan=plan or settings.plan, strategies=(strategy,))
    with registry.lock():
        if registry.latest_version() is not None:
            raise ConfigError(f"{registry.root}: already holds a registry (version "
                              f"{registry.latest_version()}); use `smlrec update`, or a new folder")
        configure_threads(settings)
        timeline = load_timeline(settings)
        log = timeline.log
        initial, _ = pretrain_model(timeline.pretrain_data, log.n_users, log.n_items, settings)
        model = make_strategy(strategy, timeline, settings)
        model.start(timeline.pretrain_data, initial)
        for period in timeline.periods[settings.plan.pretrain:]:
            model.update(period)
        last = timeline.periods[-1]
        seen = PairIndex.from_log(log.user_idx, log.item_idx)
        cumulative = Cumulative(rows=len(log), items_seen=log.n_items, pair_keys=seen.keys,
                                pair_first=seen.first_position, last_time=int(log.time[-1]),
                                next_period=len(timeline.periods))
        cumulative.previous = _previous(last)
        entry = {"sha256": log.sha256, "source": str(history), "rows": len(log),
                 "period": last.index, "periods": [0, last.index], "kind": "history"}
        checkpoint = Checkpoint(strategy=strategy, settings=to_dict(settings),
                                strategy_state=model.state_dict(), user_ids=np.asarray(log.user_ids),
                                item_ids=np.asarray(log.item_ids), cumulative=cumulative, data=[entry])
        return registry.write(checkpoint)


def _previous(period: Period) -> PreviousPeriod:
    return PreviousPeriod(period.index, period.start, np.asarray(period.users, np.int64),
                          np.asarray(period.items, np.int64), np.asarray(period.times, np.int64),
                          np.asarray(period.items_seen, np.int64))


def settings_of(checkpoint: Checkpoint) -> ReplaySettings:
    try:
        return replay_settings(checkpoint.settings)
    except ConfigError as err:
        raise CheckpointError(f"version {checkpoint.version}: stored settings do not load ({err})") from None


def strategy_from(checkpoint: Checkpoint, device: str | None = None) -> Strategy:
    """The strategy of a checkpoint, with its state loaded and tables sized to its vocabularies."""
    settings = settings_of(checkpoint)
    context = StrategyContext(n_users=checkpoint.n_users, n_items=checkpoint.n_items, mf=settings.mf,
                              seed=settings.seed, device=device or settings.device, name=checkpoint.strategy,
                              base=settings.base_settings)
    strategy = create_strategy(checkpoint.strategy, context, settings.strategy.get(checkpoint.strategy, {}))
    strategy.load_state_dict(checkpoint.strategy_state)
    return strategy


def read_options(settings: ReplaySettings) -> ReadOptions:
    data = settings.data
    return ReadOptions(format=data.format, user_col=data.user_col, item_col=data.item_col,
                       time_col=data.time_col, rating_col=data.rating_col, sep=data.sep,
                       min_rating=data.min_rating)


def extend_vocabulary(known: np.ndarray, batch_ids: np.ndarray, batch_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a batch's rows in the known vocabulary, appending unseen ids in first-appearance order.

    ``batch_ids`` are the batch's own ids in first-appearance order and ``batch_idx`` its rows'
    indices into them (an InteractionLog's vocabulary), so the new ids come out in the order the
    batch first shows them.
    """
    found = pd.Index(_comparable(known, batch_ids)).get_indexer(batch_ids)
    new = found < 0
    mapping = found.astype(np.int64)
    mapping[new] = len(known) + np.arange(int(new.sum()), dtype=np.int64)
    added = np.asarray(batch_ids)[new]
    vocabulary = np.concatenate([known, added]) if len(known) else added
    return mapping[batch_idx], vocabulary


def _comparable(known: np.ndarray, batch_ids: np.ndarray) -> np.ndarray:
    """``known``, after checking the batch's ids are of the same kind (numbers vs text)."""
    batch_ids = np.asarray(batch_ids)
    if len(known) and len(batch_ids) and (known.dtype.kind in "iuf") != (batch_ids.dtype.kind in "iuf"):
        kinds = ("numbers", "text") if known.dtype.kind in "iuf" else ("text", "numbers")
        raise DataError(f"the registry's ids are {kinds[0]} but this batch's are {kinds[1]} "
                        f"(e.g. {batch_ids[0]!r}); the batch must have the history's format and columns")
    return known


def update_once(registry: str | Path | ModelRegistry, batch: str | Path, force: bool = False) -> UpdateReport:
    """Apply one new period from file ``batch`` to the latest version; write the next version.

    Refuses (DataError) a batch that is empty or malformed, one whose times precede the last applied
    period, or one already applied (same sha256); ``force`` overrides the last two only.
    """
    registry = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry)
    with registry.lock():
        checkpoint = registry.load()
        settings = settings_of(checkpoint)
        configure_threads(settings)
        log = read_log(batch, read_options(settings))  # DataError on empty or malformed files
        warnings = _check_batch(checkpoint, log, force)
        strategy = strategy_from(checkpoint)
        users, user_ids = extend_vocabulary(checkpoint.user_ids, log.user_ids, log.user_idx)
        items, item_ids = extend_vocabulary(checkpoint.item_ids, log.item_ids, log.item_idx)
        strategy.grow(len(user_ids), len(item_ids))
        cumulative = checkpoint.cumulative
        items_seen = np.maximum(cumulative.items_seen, np.maximum.accumulate(items) + 1).astype(np.int64)
        grown = cumulative.extended(users, items, log.time, items_seen)
        period = Period(index=cumulative.next_period, role=PRODUCTION_ROLE, start=cumulative.rows,
                        users=users, items=items, times=log.time, items_seen=items_seen, seen=grown.seen,
                        label=_label(log.time))
        seconds = strategy.update(period)
        entry = {"sha256": log.sha256, "source": str(batch), "rows": len(log), "period": period.index,
                 "kind": "update", "forced": bool(warnings)}
        version = registry.write(Checkpoint(
            strategy=checkpoint.strategy, settings=checkpoint.settings, strategy_state=strategy.state_dict(),
            user_ids=user_ids, item_ids=item_ids, cumulative=grown, data=[*checkpoint.data, entry]))
        return UpdateReport(version=version, period=period.index, rows=len(log),
                            new_users=len(user_ids) - checkpoint.n_users,
                            new_items=len(item_ids) - checkpoint.n_items, seconds=seconds, warnings=warnings)


def _check_batch(checkpoint: Checkpoint, log: InteractionLog, force: bool) -> list[str]:
    """Refusals that ``force`` may override; returns the warnings of overridden ones."""
    problems = []
    applied = checkpoint.applied_hashes
    if log.sha256 in applied:
        problems.append(f"this batch was already applied (same sha256 {log.sha256[:12]}..., "
                        f"period {applied[log.sha256]})")
    last_time = checkpoint.cumulative.last_time
    if int(log.time[0]) < last_time:
        problems.append(f"its earliest time {_stamp(int(log.time[0]))} precedes the last applied period "
                        f"(which ends {_stamp(last_time)})")
    if problems and not force:
        raise DataError("; ".join(problems) + "; pass --force (force=True) to apply it anyway",
                        path=log.source)
    return problems


def _stamp(seconds: int) -> str:
    return f"{pd.Timestamp(seconds, unit='s'):%Y-%m-%d %H:%M:%S} UTC"


def _label(times: np.ndarray) -> str:
    return f"{pd.Timestamp(int(times[0]), unit='s'):%Y-%m-%d %H:%M}..{pd.Timestamp(int(times[-1]), unit='s'):%Y-%m-%d %H:%M}"
