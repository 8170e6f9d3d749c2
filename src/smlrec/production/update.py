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

Under ``torchrun`` (``decide`` and ``check_replicas`` below; docs/scaling.md): rank 0 alone takes
the lock, loads, checks and commits; every rank reads the data and runs the data-parallel update;
the other ranks never write to the registry folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save as save_safetensors

from .. import errors
from ..config import ReplaySettings, replay_settings, to_dict
from ..data.loading import load_log, period_boundaries
from ..data.log import InteractionLog, file_sha256
from ..data.periods import Period, Plan, build_timeline
from ..data.pairs import PairIndex
from ..errors import CheckpointError, ConfigError, DataError, SmlrecError
from ..models.distributed import is_leader, local_ranks, same_everywhere, share, world
from ..strategies import Strategy, StrategyContext, create_strategy
from ..strategies.factory import configure_threads, make_strategy
from ..strategies.pretrain import pretrain_model
from .events import emit
from .ingest import (DEFAULT_MAX_FUTURE, DUPLICATE_MODES, Reading, as_numbers, check_not_future,
                     handle_duplicates, legacy_reading, parse_horizon, read_batch, reading_of, stamp)
from .registry import Checkpoint, Cumulative, ModelRegistry, PreviousPeriod
from .state import flatten

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
    already_applied: bool = False     # the batch is the one the latest version was built from
    duplicates: dict | None = None    # {"mode": "drop" | "keep", "rows": n} when the batch repeated rows


@contextlib.contextmanager
def reproducible(settings: ReplaySettings) -> Iterator[None]:
    """Run an init or update reproducibly: the registry's fixed thread count and torch's
    deterministic kernels (on CPU they make the multi-threaded reductions, e.g. ``index_add_``,
    sum in a fixed order, so a rerun from the same version and batch gives the same bytes).
    The previous torch settings are restored afterwards."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if settings.threads and world()[1] > 1:   # torchrun's ranks on this machine share its cores
        settings = dataclasses.replace(settings, threads=max(1, settings.threads // local_ranks()))
    configure_threads(settings)
    torch.use_deterministic_algorithms(True, warn_only=True)  # warn, not fail, on an op without one
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_num_threads(threads)


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
    # The thread count is fixed in the registry so every update reduces in the same order.
    settings = dataclasses.replace(settings, data=data, plan=plan or settings.plan, strategies=(strategy,),
                                   threads=settings.threads or os.cpu_count() or 1)
    leader = is_leader()
    with contextlib.ExitStack() as hold, reproducible(settings):
        def admit() -> dict:
            # Under torchrun rank 0 alone takes the lock and looks at the folder (``decide`` runs
            # this there only); the other ranks follow its answer and never write to the registry.
            hold.enter_context(registry.lock(create=True))
            return _refuse_existing(registry)

        decide(admit)
        log = load_log(settings.data)
        reading = reading_of(log, settings)            # refuses times in ms etc. before cutting periods
        timeline = build_timeline(log, period_boundaries(log, settings.data), settings.plan)
        user_ids, item_ids = as_numbers(log.user_ids), as_numbers(log.item_ids)
        reading = dataclasses.replace(reading, user_ids="number" if user_ids.dtype.kind in "iu" else "text",
                                      item_ids="number" if item_ids.dtype.kind in "iu" else "text")
        initial, _ = pretrain_model(timeline.pretrain_data, log.n_users, log.n_items, settings)
        model = make_strategy(strategy, timeline, settings)
        model.start(timeline.pretrain_data, initial)
        for period in timeline.periods[settings.plan.pretrain:]:
            model.update(period)
        check_replicas(model)
        last = timeline.periods[-1]
        seen = PairIndex.from_log(log.user_idx, log.item_idx)
        cumulative = Cumulative(rows=len(log), items_seen=log.n_items, pair_keys=seen.keys,
                                pair_first=seen.first_position, last_time=int(log.time[-1]),
                                next_period=len(timeline.periods))
        cumulative.previous = _previous(last)
        entry = {"sha256": log.sha256, "source": str(history), "rows": len(log),
                 "period": last.index, "periods": [0, last.index], "kind": "history",
                 "first_time": int(log.time[0]), "last_time": int(log.time[-1])}

        def commit() -> dict:
            checkpoint = Checkpoint(strategy=strategy, settings=to_dict(settings),
                                    strategy_state=model.state_dict(), user_ids=np.asarray(user_ids),
                                    item_ids=np.asarray(item_ids), cumulative=cumulative, data=[entry],
                                    reading=reading.to_dict(), served=served_tables(model))
            return {"version": registry.write(checkpoint)}

        version = decide(commit)["version"]
        if leader:
            emit("init", f"version {version} written ({strategy}, {len(log)} interactions)",
                 registry=str(registry.root), version=version, strategy=strategy, rows=len(log),
                 sha256=log.sha256, source=str(history))
        return version


def _refuse_existing(registry: ModelRegistry) -> dict:
    if registry.latest_version() is not None:
        raise ConfigError(f"{registry.root}: already holds a registry (version "
                          f"{registry.latest_version()}); use `smlrec update`, or a new folder")
    return {}


# ----------------------------------------------------------------------------------------------
# Under torchrun (models/distributed.py): every rank trains, rank 0 alone touches the registry.

def decide(work: Callable[[], dict]) -> dict:
    """Run ``work`` on rank 0 alone and return its answer (a small dict) on every rank; an error
    it raises is raised on every rank (as the same smlrec error class), so no rank waits for a
    collective its peers have left. In a single process: ``work()``."""
    if world()[1] == 1:
        return work()
    if is_leader():
        try:
            answer = work()
        except Exception as err:
            share({"error": type(err).__name__, "message": str(err)})
            raise
        return share(answer)
    answer = share(None)
    if "error" in answer:
        kind = getattr(errors, answer["error"], None)
        if isinstance(kind, type) and issubclass(kind, SmlrecError):
            raise kind(answer["message"])        # (a DataError's message already names the file)
        raise SmlrecError(f"rank 0 failed: {answer['error']}: {answer['message']}")
    return answer


def state_digest(strategy: Strategy) -> str:
    """sha256 of a strategy's state (every tensor's bytes and the JSON rest): equal on two ranks
    exactly when they hold the same model."""
    tensors, skeleton = flatten({"strategy": strategy.state_dict()})
    digest = hashlib.sha256(save_safetensors(tensors))
    digest.update(json.dumps(skeleton, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def check_replicas(strategy: Strategy) -> None:
    """Under torchrun: refuse (on every rank, before anything is written) when the ranks' models
    are not bit-identical; the data-parallel updates are built to keep them so."""
    if world()[1] > 1 and not same_everywhere(state_digest(strategy)):
        raise CheckpointError("the ranks' models differ after the update (a data-parallel step went "
                              "out of step); nothing written")


def served_tables(strategy: Strategy) -> dict[str, torch.Tensor] | None:
    """What a query needs from a strategy that serves an inner product: its user and item tables
    and the scores of a user it has never seen (absent when it has no cold-user rule). Stored with
    the version so that ``recommend`` and ``serve`` need not rebuild the strategy (building one
    creates its optimiser, and torch imports its compiler for that: seconds)."""
    tables = strategy.served_tables()
    if tables is None:
        return None
    with torch.no_grad():
        served = {"user": tables[0].detach().float().cpu().contiguous(),
                  "item": tables[1].detach().float().cpu().contiguous()}
    cold = cold_user_scores(strategy)
    if cold is not None:
        served["cold"] = cold
    return served


def cold_user_scores(strategy: Strategy) -> torch.Tensor | None:
    """Scores of every item for a user the strategy has never seen (its cold-user rule), or None
    when it declares no such rule."""
    try:
        with torch.no_grad():
            candidates = torch.arange(strategy.n_items, device=strategy.device)[None, :]
            return strategy.score_new_users(candidates)[0].float().cpu().contiguous()
    except ConfigError:
        return None


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
                              base=settings.base_settings, precision=settings.precision)
    strategy = create_strategy(checkpoint.strategy, context, settings.strategy.get(checkpoint.strategy, {}))
    strategy.load_state_dict(checkpoint.strategy_state)
    return strategy


def reading_from(checkpoint: Checkpoint) -> Reading:
    """How the checkpoint's registry reads its batches (derived for registries that predate it)."""
    if checkpoint.reading:
        return Reading.from_dict(checkpoint.reading)
    source = checkpoint.data[0].get("source", "") if checkpoint.data else ""
    return legacy_reading(settings_of(checkpoint), source, checkpoint.user_ids, checkpoint.item_ids)


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


def update_once(registry: str | Path | ModelRegistry, batch: str | Path, force: bool = False,
                max_future: str | None = DEFAULT_MAX_FUTURE, now: float | None = None,
                duplicates: str = "refuse") -> UpdateReport:
    """Apply one new period from file ``batch`` to the latest version; write the next version.

    The batch is read as the registry's history was (see ingest.py). Refuses (DataError, nothing
    written) a batch that is empty or malformed, has ids or time units that do not fit the
    registry, ends after now + ``max_future``, precedes the last applied period, or was already
    applied; ``force`` overrides the last three. Rows repeating an earlier row of the batch exactly
    (same user, item, time) are refused unless ``duplicates`` is "drop" or "keep" (ingest.py).
    Retrying the batch the latest version was built
    from is not an error: the report says ``already_applied`` and nothing is written.
    """
    registry = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry)
    horizon = parse_horizon(max_future)
    if duplicates not in DUPLICATE_MODES:
        raise ConfigError(f"--duplicates {duplicates!r}: expected one of {', '.join(DUPLICATE_MODES)}")
    try:
        with contextlib.ExitStack() as hold:
            held: dict = {}

            def admit() -> dict:
                # Under torchrun rank 0 alone takes the lock, loads and checks (``decide`` runs this
                # there only); the other ranks follow its answer and never write to the registry.
                hold.enter_context(registry.lock())
                return _admit(registry, batch, force, horizon, now, held, duplicates)

            answer = decide(admit)
            if answer["retry"] is not None:
                return UpdateReport(version=answer["version"], period=answer["period"], rows=answer["rows"],
                                    new_users=0, new_items=0, seconds=0.0, warnings=[], already_applied=True)
            # The other ranks load the version rank 0 loaded: a committed version never changes.
            checkpoint = held["checkpoint"] if "checkpoint" in held else registry.load(answer["version"])
            reading = reading_from(checkpoint)
            log = held["log"] if "log" in held else handle_duplicates(read_batch(batch, reading), duplicates)
            with reproducible(settings_of(checkpoint)):
                return _apply(registry, checkpoint, reading, log, batch, answer["warnings"])
    except SmlrecError as err:
        if is_leader():
            emit("update_refused", f"{batch}: refused: {err}", level="error", registry=str(registry.root),
                 source=str(batch), error=str(err))
        raise


def _admit(registry: ModelRegistry, batch: str | Path, force: bool, horizon: float | None,
           now: float | None, held: dict, duplicates: str = "refuse") -> dict:
    """Rank 0's checks before an update: load the latest version, spot a retry, read and check the
    batch (refusals raise). ``held`` keeps the checkpoint and the batch for rank 0's own use; the
    answer is what the other ranks need."""
    checkpoint = registry.load()
    settings_of(checkpoint)                            # stored settings that do not load are refused
    retry = _retry_of_latest(checkpoint, batch, force)
    if retry is not None:
        emit("update_already_applied", f"{batch}: already applied as version {checkpoint.version}",
             registry=str(registry.root), version=checkpoint.version, source=str(batch), sha256=retry)
        return {"retry": retry, "version": checkpoint.version, "period": int(checkpoint.data[-1]["period"]),
                "rows": int(checkpoint.data[-1].get("rows", 0))}
    log = read_batch(batch, reading_from(checkpoint))  # DataError on empty, malformed or unfit files
    log = handle_duplicates(log, duplicates)           # DataError on exact repeats unless drop/keep
    warnings = _check_batch(checkpoint, log, force, horizon, now)
    held.update(checkpoint=checkpoint, log=log)
    return {"retry": None, "version": checkpoint.version, "warnings": warnings}


def _retry_of_latest(checkpoint: Checkpoint, batch: str | Path, force: bool) -> str | None:
    """The batch's sha256 when it is the batch the latest version was built from (an idempotent
    retry, e.g. after the update was killed just after its commit); None otherwise."""
    if force or not checkpoint.data or not Path(batch).is_file():
        return None
    digest = file_sha256(batch)
    return digest if checkpoint.data[-1].get("sha256") == digest else None


def _apply(registry: ModelRegistry, checkpoint: Checkpoint, reading: Reading, log: InteractionLog,
           batch: str | Path, warnings: list[str]) -> UpdateReport:
    """The update itself, on every rank; rank 0 writes the next version."""
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
    check_replicas(strategy)
    entry = {"sha256": log.sha256, "source": str(batch), "rows": len(log), "period": period.index,
             "kind": "update", "forced": bool(warnings), "first_time": int(log.time[0]),
             "last_time": int(log.time[-1])}
    if "duplicates" in log.metadata:
        entry["duplicates"] = log.metadata["duplicates"]
    version = decide(lambda: {"version": registry.write(Checkpoint(
        strategy=checkpoint.strategy, settings=checkpoint.settings, strategy_state=strategy.state_dict(),
        user_ids=user_ids, item_ids=item_ids, cumulative=grown, data=[*checkpoint.data, entry],
        reading=reading.to_dict(), served=served_tables(strategy)))})["version"]
    report = UpdateReport(version=version, period=period.index, rows=len(log),
                          new_users=len(user_ids) - checkpoint.n_users,
                          new_items=len(item_ids) - checkpoint.n_items, seconds=seconds, warnings=warnings,
                          duplicates=log.metadata.get("duplicates"))
    if is_leader():
        emit("update", f"version {version} written from {batch} (period {period.index}, {len(log)} interactions)",
             registry=str(registry.root), version=version, previous=checkpoint.version, period=period.index,
             rows=len(log), new_users=report.new_users, new_items=report.new_items, seconds=round(seconds, 4),
             sha256=log.sha256, source=str(batch), forced=warnings)
    return report


def _check_batch(checkpoint: Checkpoint, log: InteractionLog, force: bool, horizon: float | None,
                 now: float | None) -> list[str]:
    """Refusals that ``force`` may override; returns the warnings of overridden ones."""
    problems = []
    applied = checkpoint.applied_hashes
    if log.sha256 in applied:
        problems.append(f"this batch was already applied (same sha256 {log.sha256[:12]}..., "
                        f"period {applied[log.sha256]})")
    future = check_not_future(log, horizon, now)
    if future:
        problems.append(future)
    last_time = checkpoint.cumulative.last_time
    if int(log.time[0]) < last_time:
        problems.append(f"its earliest time {stamp(int(log.time[0]))} precedes the last applied period "
                        f"(which ends {stamp(last_time)})")
    if problems and not force:
        raise DataError("; ".join(problems) + "; pass --force (force=True) to apply it anyway",
                        path=log.source)
    return problems


def _label(times: np.ndarray) -> str:
    try:
        first, last = (pd.Timestamp(int(t), unit="s") for t in (times[0], times[-1]))
    except (ValueError, OverflowError, pd.errors.OutOfBoundsDatetime):
        return f"{int(times[0])}..{int(times[-1])}"
    return f"{first:%Y-%m-%d %H:%M}..{last:%Y-%m-%d %H:%M}"
