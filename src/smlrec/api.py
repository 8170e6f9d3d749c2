"""The replay from Python: ``smlrec.replay(log, ...)`` returns a :class:`Results` of DataFrames.

The ``smlrec replay`` command is a thin layer over :func:`replay_settings_for` and :func:`run`:
one code path, two front doors. A notebook gets the same numbers as the command line for the
same settings::

    import pandas as pd
    import smlrec

    clicks = pd.read_csv("clicks.csv")                 # columns user, item, time
    results = smlrec.replay(clicks, periods=10, plan="3,3,2,2",
                            strategies=["pop-recent", "fine-tune"])
    results.summary                                    # one row per strategy: Recall/NDCG@k, intervals
    results.save("runs/clicks")                        # the results directory of the CLI
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from .config import DataSettings, ReplaySettings, merge, replay_settings
from .data.log import InteractionLog, ReadOptions, log_from_frame
from .data.periods import Plan
from .errors import ConfigError
from .experiment.replay import ReplayResult
from .experiment.results import ResultTables, format_summary, result_tables, write_results

DATA_KEYS = frozenset(f.name for f in dataclasses.fields(DataSettings)) - {"path", "periods"}
"""Keyword arguments of :func:`replay` that are data settings (``user_col="uid"``, ``every="1D"``)."""

StrategyLike = Any  # a registered name, or a Strategy subclass (see strategies.register_class)


class Results:
    """What a replay measured, as DataFrames (the files of the results directory).

    Attributes:
        summary: one row per (strategy, protocol): metrics micro-averaged over the test periods,
            update seconds, warm/cold users' metrics and 95% bootstrap intervals (summary.csv).
        periods: one row per (strategy, protocol, scored period) (periods.csv).
        significance: the best strategy against each other, per metric: difference and paired
            bootstrap p-value (significance.csv).
        warm_cold: metrics per warm/cold user x item group and period (warm_cold.csv).
        breakdown: the same per old/new group, the paper's analysis (breakdown.csv).
        raw: the replay's records, timeline and effective settings.
    """

    def __init__(self, raw: ReplayResult) -> None:
        self.raw = raw
        self._tables: ResultTables | None = None

    @property
    def tables(self) -> ResultTables:
        if self._tables is None:     # the bootstrap runs once, on first use
            self._tables = result_tables(self.raw)
        return self._tables

    @property
    def summary(self) -> pd.DataFrame:
        return self.tables.summary

    @property
    def periods(self) -> pd.DataFrame:
        return self.tables.periods

    @property
    def significance(self) -> pd.DataFrame:
        return self.tables.significance

    @property
    def warm_cold(self) -> pd.DataFrame:
        return self.tables.warm_cold

    @property
    def breakdown(self) -> pd.DataFrame:
        return self.tables.breakdown

    @property
    def settings(self) -> ReplaySettings:
        return self.raw.settings

    @property
    def strategies(self) -> list[str]:
        return list(self.raw.strategies)

    def save(self, out: str | Path, report: bool = True) -> Path:
        """Write the results directory ``out`` as ``smlrec replay --out`` does (with its
        ``report/`` unless ``report=False``). ``out`` must not exist or be empty."""
        from .atomic import check_out_dir

        out = Path(out)
        check_out_dir(out)
        extra = {}
        if report:
            from .report.document import replay_report_writer

            extra["report"] = replay_report_writer(out)
        return write_results(out, self.raw, extra_files=extra, tables=self.tables)

    def report(self, out: str | Path) -> Path:
        """Write the report (tables, figures, report.html) of these results into ``out``."""
        from .report.document import write_report

        out = Path(out)
        with tempfile.TemporaryDirectory(prefix="smlrec-results-") as scratch:
            run = Path(scratch) / out.name
            write_results(run, self.raw, tables=self.tables)
            write_report([run], out, names=[out.name], shown_paths=[out])
        return out

    def __str__(self) -> str:
        return format_summary(self.summary)

    def __repr__(self) -> str:
        return f"<smlrec.Results: {', '.join(self.strategies)}; {len(self.periods)} scored period rows>"


def replay(log: pd.DataFrame | str | Path | InteractionLog | None = None, *,
           periods: int | None = None, plan: str | Plan | Iterable[int] | None = None,
           strategies: Iterable[StrategyLike] | None = None, protocols: str | Iterable[str] | None = None,
           seed: int | None = None, jobs: int = 1, progress: bool = True, config: str | Path | None = None,
           **settings: Any) -> Results:
    """Replay strategies period by period on ``log`` and score them (test-then-train).

    Args:
        log: a DataFrame with user, item and time columns (any common spelling, or name them
            with ``user_col=``, ``item_col=``, ``time_col=``; times are unix seconds, ISO-8601
            text or datetimes), a log file's path (any format ``smlrec replay --data`` reads), an
            InteractionLog, or None for the bundled MovieLens ml-latest-small.
        periods: cut the log into this many periods of equal interaction counts (default 20;
            ``every="1D"`` or ``day_cuts=(10, 17)`` cut by calendar instead).
        plan: pretrain, offline, validation and test periods: ``"5,8,2,5"``, ``(5, 8, 2, 5)`` or
            a Plan.
        strategies: registered names (``smlrec strategies`` lists them) and/or Strategy
            subclasses from your own code, registered under their ``name`` attribute.
        protocols: ``"sampled"`` (default), ``"full"``, ``"auc"``, or several.
        seed: the random seed (default 2020).
        jobs: run the strategies in this many worker processes (same results).
        progress: show progress bars.
        config: a TOML settings file, as ``--config``; the arguments here override it.
        **settings: any other setting, as in the TOML file: ``mf={"dim": 32}``,
            ``pretrain={"epochs": 5}``, ``strategy={"sml": {"rounds": 5}}``,
            ``bootstrap_resamples=0``, ``threads=1``, data settings such as ``min_rating=4``.

    Returns:
        Results: ``.summary``, ``.periods``, ``.significance``, ``.warm_cold`` DataFrames;
        ``.save(dir)``, ``.report(dir)``.
    """
    from .config import load_toml

    names = _strategy_names(strategies)
    layers: list[dict] = [load_toml(config)] if config is not None else []
    layers.append(_keyword_layer(log, periods, plan, names, protocols, seed, settings))
    resolved = replay_settings(*layers)
    frame_log = None
    if isinstance(log, pd.DataFrame):
        frame_log = log_from_frame(log, ReadOptions(user_col=resolved.data.user_col,
                                                    item_col=resolved.data.item_col,
                                                    time_col=resolved.data.time_col,
                                                    rating_col=resolved.data.rating_col,
                                                    min_rating=resolved.data.min_rating))
    elif isinstance(log, InteractionLog):
        frame_log = log
    return Results(run(resolved, log=frame_log, jobs=jobs, progress=progress))


def run(settings: ReplaySettings, log: InteractionLog | None = None, jobs: int = 1, progress: bool = True,
        before_work: Callable[[], None] | None = None) -> ReplayResult:
    """The replay both front doors run: settings in, records out.

    Under torchrun every rank replays (MF updates split across ranks) and gets the records;
    writing them is the caller's (rank 0's) job, and only rank 0 shows progress. ``before_work`` runs on every rank once the
    process group is joined and before the log is read (the CLI checks ``--out`` there).
    """
    from .data.loading import load_timeline
    from .experiment.replay import replay as replay_records
    from .models.distributed import barrier, init_from_environment, is_leader, leave

    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    distributed = init_from_environment(settings.device)
    try:
        if distributed and jobs > 1:
            raise ConfigError("--jobs runs strategies in worker processes; under torchrun give --jobs 1")
        if before_work is not None:
            before_work()
        barrier()
        timeline = load_timeline(settings, log)  # fails on bad data before any work or any file
        runner = None
        if jobs > 1:
            from .experiment.parallel import pool_runner

            runner = pool_runner(jobs)
        return replay_records(settings, progress=progress and is_leader(), timeline=timeline,
                              runner=runner)
    finally:
        leave()


def _strategy_names(strategies: Iterable[StrategyLike] | None) -> list[str] | None:
    """Names for the settings; classes are registered (strategies.register_class) on the way."""
    if strategies is None:
        return None
    if isinstance(strategies, str):
        strategies = [s.strip() for s in strategies.split(",") if s.strip()]
    from .strategies import register_class

    return [item if isinstance(item, str) else register_class(item) for item in strategies]


def _keyword_layer(log: Any, periods: int | None, plan: Any, names: list[str] | None, protocols: Any,
                   seed: int | None, settings: Mapping[str, Any]) -> dict:
    layer: dict = {}
    data: dict = {key: settings[key] for key in settings if key in DATA_KEYS}
    if isinstance(log, (str, Path)):
        data["path"] = str(log)
    elif log is not None and not isinstance(log, (pd.DataFrame, InteractionLog)):
        raise ConfigError(f"log: expected a DataFrame, a path or an InteractionLog, got {type(log).__name__}")
    if periods is not None:
        data["periods"] = periods
    if data.get("every") is not None or data.get("day_cuts") is not None or periods is not None:
        data.setdefault("every", None)   # a cut given here replaces any cut of the config file
        data.setdefault("day_cuts", None)
    if data:
        layer["data"] = data
    if plan is not None:
        if isinstance(plan, str):
            plan = Plan.parse(plan)
        if not isinstance(plan, Plan):
            plan = Plan(*plan)
        layer["plan"] = dataclasses.asdict(plan)
    if names is not None:
        layer["strategies"] = names
    if protocols is not None:
        layer["protocols"] = ([p.strip() for p in protocols.split(",")] if isinstance(protocols, str)
                              else list(protocols))
    if seed is not None:
        layer["seed"] = seed
    rest = {key: value for key, value in settings.items() if key not in DATA_KEYS}
    return merge(layer, rest)


__all__ = ["Results", "replay", "run"]
