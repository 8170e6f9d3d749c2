"""Independent replays in worker processes: strategies of one replay, or points of a sweep.

Each strategy of a replay is independent of the others once the shared pretrained model and the
candidate lists exist: its random streams are named by (seed, strategy name) (``random.py``), it
starts from its own copy of the pretrained state, and it reads the same candidate files. So the
parent pretrains and draws the candidates once, then K worker processes ("spawn": a fresh
interpreter, no forked torch or OpenMP state) each run whole strategies with ``iter_replay``, and
the parent puts the records back in strategy order: the same records as the sequential loop.

Threads: each worker gets ``--threads`` when given, else ``available cores // K`` (at least 1),
so K workers never oversubscribe the machine.

A spawned interpreter imports the package afresh, so each job carries its strategy's registry
entry: a plug-in registered at run time (``--plugin``, a class given to ``smlrec.replay``) runs in
a worker when its class can be imported there by name (a class defined in ``__main__`` or a
notebook cannot: run it with ``jobs=1``).
"""

from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterable, Sequence, TypeVar

import torch

from ..config import ReplaySettings
from ..data.candidates import CandidateStore
from ..data.periods import SCORED_ROLES, Timeline
from ..strategies import STRATEGIES
from ..strategies.factory import available_cores
from .replay import PeriodRecord, iter_replay

T = TypeVar("T")
R = TypeVar("R")


def worker_threads(settings: ReplaySettings, jobs: int, cores: int | None = None) -> int:
    """Torch threads of one of ``jobs`` workers: ``settings.threads`` if set, else cores // jobs."""
    if settings.threads:
        return settings.threads
    return max(1, (cores or available_cores()) // max(1, jobs))


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run_in_pool(function: Callable[[T], R], items: Sequence[T], jobs: int, threads: int,
                on_done: Callable[[int, R], None] | None = None,
                start_order: Sequence[int] | None = None) -> list[R]:
    """``[function(item) for item in items]`` in ``jobs`` spawned processes, results in item order.

    ``function`` must be a module-level function (it is pickled by name). ``on_done(index,
    result)`` is called in the parent as each item finishes (in completion order).
    ``start_order``: the order the items are handed to the workers (default: item order); it
    changes the wall time only, never the results.
    """
    context = multiprocessing.get_context("spawn")
    results: list[Any] = [None] * len(items)
    order = list(range(len(items))) if start_order is None else list(start_order)
    if sorted(order) != list(range(len(items))):
        raise ValueError("start_order must be a permutation of the items' positions")
    with ProcessPoolExecutor(max_workers=max(1, min(jobs, len(items))), mp_context=context,
                             initializer=_init_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(function, items[index]): index for index in order}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                index = futures[future]
                results[index] = future.result()   # a worker's exception is raised here
                if on_done is not None:
                    on_done(index, results[index])
    return results


def _replay_one(job: tuple) -> list[PeriodRecord]:
    """One strategy's whole replay (in a worker): exactly the sequential loop for that name."""
    timeline, settings, name, initial_state, candidates, spec = job
    STRATEGIES.setdefault(name, spec)
    return list(iter_replay(timeline, settings, [name], initial_state, candidates, progress=False))


def pool_runner(jobs: int) -> Callable[..., Iterable[PeriodRecord]]:
    """A ``runner`` for ``experiment.replay.replay``: strategies spread over ``jobs`` processes."""

    def run(timeline: Timeline, settings: ReplaySettings, strategies: list[str],
            initial_state: dict[str, torch.Tensor], candidates: CandidateStore,
            progress: bool = True) -> list[PeriodRecord]:
        for period in timeline.periods[timeline.plan.pretrain:]:
            if period.role in SCORED_ROLES:
                candidates.get(period)  # drawn once here; workers only read the cached files
        items = [(timeline, settings, name, initial_state, candidates, STRATEGIES[name])
                 for name in strategies]

        def announce(index: int, records: list[PeriodRecord]) -> None:
            if progress:
                print(f"{strategies[index]:>14}: done ({len(records)} scored periods)",
                      file=sys.stderr, flush=True)

        # Longest first shortens the wall time: the registry (and so the default list) names the
        # cheap baselines first and SML's family, an order of magnitude slower, last; so the
        # workers take the strategies from the end of the list. Results do not depend on it.
        per_strategy = run_in_pool(_replay_one, items, jobs, worker_threads(settings, jobs), announce,
                                   start_order=range(len(items) - 1, -1, -1))
        return [record for records in per_strategy for record in records]

    return run
