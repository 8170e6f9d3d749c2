"""Tuning on validation periods: Optuna searches each strategy's few key settings.

One Optuna study per strategy; a trial is one replay of that strategy with the suggested
settings on the timeline cut after its last validation period (``sweep.validation_timeline``),
so a trial never loads, trains on or scores a test period (sml-method.md 1.3). The objective is
the chosen metric micro-averaged over the validation periods. The pretrained model and the
validation candidates are made once per command and shared by every trial (the suggested
settings are a strategy's own, which pretraining never reads).

Parallel trials: ``jobs`` spawned worker processes (experiment/parallel.py) share one Optuna
storage (a journal file in a temporary folder, unless ``storage`` names one); several machines
share an RDB URL (``sqlite:///...``, ``postgresql://...``) or a journal file on a shared disk, and
every machine runs the same command. A study is full when it holds ``budget`` trials (all
workers on all machines together); a worker that finds it full starts none.

Sampler: TPE (Optuna's default, seeded with the replay seed) or a grid over categorical spaces.
With one process and no shared storage the same command gives the same trials and the same
choice; with several processes each worker's sampler gets its own seed (equal seeds would
propose the same points) and the trial order depends on timing.

``SEARCH_SPACES`` declares the space of each strategy by name, including strategies that may not
be registered in this build (their spaces are skipped unless such a strategy is asked for);
``--space STRATEGY.SETTING=SPEC`` or a space file adds or replaces a setting's range.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from .. import __version__
from ..config import ReplaySettings, load_toml, merge, replay_settings, to_dict
from ..data.candidates import CandidateStore
from ..data.loading import load_timeline
from ..data.periods import SCORED_ROLES, Timeline
from ..errors import ConfigError
from ..evaluation.protocols import ALL_METRICS, AUC_METRICS
from ..strategies import STRATEGIES, strategy_settings
from ..strategies.factory import configure_threads
from ..strategies.pretrain import pretrain_model
from .replay import iter_replay, resolve_strategies
from .results import periods_frame, summary_frame
from .sweep import validation_timeline


# ----------------------------------------------------------------------------------------------
# Search spaces

@dataclass(frozen=True)
class Categorical:
    """One of a few listed values (numbers, booleans or text)."""

    choices: tuple


@dataclass(frozen=True)
class IntRange:
    """A whole number in [low, high]; ``log``: drawn uniformly in log space."""

    low: int
    high: int
    log: bool = False


@dataclass(frozen=True)
class FloatRange:
    """A number in [low, high]; ``log``: drawn uniformly in log space."""

    low: float
    high: float
    log: bool = False


Spec = Union[Categorical, IntRange, FloatRange]

_WINDOW = IntRange(0, 10)           # training window in periods; 0: all data so far
_HISTORY = IntRange(5, 100, log=True)
_RECENCY = FloatRange(0.5, 1.0)
_MF_EPOCHS = IntRange(1, 10)
_MF_LR = FloatRange(1e-3, 1e-1, log=True)

SEARCH_SPACES: dict[str, dict[str, Spec]] = {
    "pop-recent": {"decay": FloatRange(0.05, 1.0)},
    "full-retrain": {"epochs": _MF_EPOCHS, "lr": _MF_LR},
    "fine-tune": {"epochs": _MF_EPOCHS, "lr": _MF_LR},
    "spmf": {"epochs": _MF_EPOCHS, "reservoir_size": IntRange(1_000, 100_000, log=True), "lr": _MF_LR},
    "asmg": {"epochs": _MF_EPOCHS, "generator_lr": FloatRange(1e-3, 1e-1, log=True)},
    "gru4rec": {"epochs": IntRange(1, 5), "lr": FloatRange(1e-4, 1e-2, log=True),
                "dropout": FloatRange(0.0, 0.5)},
    "caser": {"epochs": IntRange(1, 5), "lr": FloatRange(1e-4, 1e-2, log=True),
              "dropout": FloatRange(0.0, 0.5)},
    "sml": {"rounds": IntRange(1, 10), "step1_lr": FloatRange(1e-3, 1e-1, log=True),
            "step2_lr": FloatRange(1e-4, 1e-2, log=True)},
    "sml-s": {"rounds": IntRange(1, 10), "step1_lr": FloatRange(1e-3, 1e-1, log=True),
              "step2_lr": FloatRange(1e-4, 1e-2, log=True)},
    # Strategies added by issue 23 (skipped while they are not registered):
    "itemknn": {"window": _WINDOW, "alpha": FloatRange(0.0, 1.0), "shrink": IntRange(0, 100),
                "neighbours": IntRange(20, 500, log=True), "history": _HISTORY, "recency": _RECENCY},
    "sknn": {"neighbours": IntRange(20, 500, log=True), "sample": IntRange(100, 5_000, log=True),
             "history": _HISTORY, "recency": _RECENCY},
    "ease": {"l2": FloatRange(10.0, 5_000.0, log=True), "window": _WINDOW, "history": _HISTORY},
    "ials": {"factors": IntRange(16, 256, log=True), "regularization": FloatRange(1e-3, 10.0, log=True),
             "alpha": FloatRange(1.0, 50.0, log=True), "iterations": IntRange(5, 30), "window": _WINDOW},
}
"""Each strategy's key settings and their ranges, by strategy name (``--space`` adds or replaces)."""

SAMPLERS = ("tpe", "grid")


def _number(text: str, where: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"{where}: {text!r} is not a finite number")
    return value


def parse_spec(raw: Any, where: str) -> Spec:
    """A space from text: ``LOW:HIGH`` (whole numbers: IntRange, else FloatRange), ``LOW:HIGH:log``,
    or ``A,B,C`` (categorical; values read as TOML); a TOML list is categorical too."""
    from ..config import parse_assignment

    if isinstance(raw, list):
        values = raw
    elif not isinstance(raw, str) or not raw.strip():
        raise ConfigError(f"{where}: expected LOW:HIGH, LOW:HIGH:log or A,B,C, got {raw!r}")
    elif ":" in raw:
        parts = [p.strip() for p in raw.split(":")]
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
            raise ConfigError(f"{where}: expected LOW:HIGH or LOW:HIGH:log, got {raw!r}")
        low, high = _number(parts[0], where), _number(parts[1], where)
        log = len(parts) == 3
        if not low < high:
            raise ConfigError(f"{where}: LOW must be below HIGH, got {raw!r}")
        if log and low <= 0:
            raise ConfigError(f"{where}: a log range needs LOW > 0, got {raw!r}")
        if isinstance(low, int) and isinstance(high, int):
            return IntRange(low, high, log)
        return FloatRange(float(low), float(high), log)
    else:
        values = [parse_assignment(f"v={item.strip()}")["v"] for item in raw.split(",") if item.strip()]
    if not values:
        raise ConfigError(f"{where}: empty list of values")
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"{where}: a value is listed twice")
    if not all(isinstance(v, (bool, int, float, str)) for v in values):
        raise ConfigError(f"{where}: values must be numbers, booleans or text, got {values!r}")
    return Categorical(tuple(values))


def parse_space(text: str) -> tuple[str, str, Spec]:
    """``"pop-recent.decay=0.1:0.9"`` -> ("pop-recent", "decay", FloatRange(0.1, 0.9))."""
    where = f"--space {text!r}"
    if "=" not in text:
        raise ConfigError(f"{where}: expected STRATEGY.SETTING=LOW:HIGH[:log] or =A,B,C, "
                          "e.g. pop-recent.decay=0.1:1.0")
    key, raw = (part.strip() for part in text.split("=", 1))
    if "." not in key or not all(key.rsplit(".", 1)):
        raise ConfigError(f"{where}: expected STRATEGY.SETTING before '=', e.g. fine-tune.epochs")
    strategy, setting = key.rsplit(".", 1)
    return strategy, setting, parse_spec(raw, where)


def load_space_file(path: str | Path) -> dict[str, dict[str, Spec]]:
    """A TOML space file: a table per strategy, ``setting = "LOW:HIGH[:log]"`` or a list of values."""
    data = load_toml(path)
    spaces: dict[str, dict[str, Spec]] = {}
    for strategy, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {strategy!r} must be a table of settings, e.g. "
                              f"[{strategy}] then decay = \"0.1:1.0\"")
        spaces[strategy] = {setting: parse_spec(raw, f"{path}: {strategy}.{setting}")
                            for setting, raw in table.items()}
    return spaces


def _edges(spec: Spec) -> list:
    if isinstance(spec, Categorical):
        return list(spec.choices)
    return [spec.low, spec.high]


def resolve_spaces(strategies: Sequence[str], overrides: dict[str, dict[str, Spec]] | None = None,
                   base_overrides: dict | None = None) -> dict[str, dict[str, Spec]]:
    """The space of each strategy to tune: ``SEARCH_SPACES`` with ``overrides`` laid over it.

    Checked before any work: every strategy is registered and has a space; every setting is a
    field of its settings class; each range's ends (each listed value) make valid settings."""
    overrides = overrides or {}
    for name in overrides:
        if name not in strategies:
            raise ConfigError(f"--space {name}.*: {name!r} is not among the strategies tuned "
                              f"({', '.join(strategies)})")
    spaces: dict[str, dict[str, Spec]] = {}
    for name in strategies:
        if name not in STRATEGIES:
            raise ConfigError(f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
        space = {**SEARCH_SPACES.get(name, {}), **overrides.get(name, {})}
        if not space:
            raise ConfigError(f"no search space for strategy {name!r}: give one with --space "
                              f"{name}.SETTING=LOW:HIGH (spaces are declared for "
                              f"{', '.join(n for n in SEARCH_SPACES if n in STRATEGIES)})")
        fields = {f.name for f in dataclasses.fields(STRATEGIES[name].settings_cls)}
        for setting, spec in space.items():
            if setting not in fields:
                raise ConfigError(f"search space of {name!r}: no setting {setting!r} "
                                  f"(known: {', '.join(sorted(fields))})")
            for value in _edges(spec):
                try:
                    strategy_settings(name, merge((base_overrides or {}).get(name, {}), {setting: value}))
                except ConfigError as err:
                    raise ConfigError(f"search space of {name!r}, {setting}={value!r}: {err}") from None
        spaces[name] = space
    return spaces


def describe_spec(spec: Spec) -> str:
    if isinstance(spec, Categorical):
        return "one of " + ", ".join(map(str, spec.choices))
    kind = "int" if isinstance(spec, IntRange) else "float"
    return f"{kind} {spec.low}..{spec.high}{' (log)' if spec.log else ''}"


def _suggest(trial, setting: str, spec: Spec) -> Any:
    if isinstance(spec, Categorical):
        return trial.suggest_categorical(setting, list(spec.choices))
    if isinstance(spec, IntRange):
        return trial.suggest_int(setting, spec.low, spec.high, log=spec.log)
    return trial.suggest_float(setting, spec.low, spec.high, log=spec.log)


def _grid(space: dict[str, Spec], name: str) -> dict[str, list]:
    grid = {}
    for setting, spec in space.items():
        if not isinstance(spec, Categorical):
            raise ConfigError(f"--sampler grid needs listed values; {name}.{setting} is a range "
                              f"({describe_spec(spec)}): give --space {name}.{setting}=A,B,C")
        grid[setting] = list(spec.choices)
    return grid


# ----------------------------------------------------------------------------------------------
# The study

@dataclass(frozen=True)
class TuneJob:
    """Everything a worker needs (pickled into spawned processes)."""

    settings: ReplaySettings          # base settings; a trial overrides its strategy's table only
    timeline: Timeline                # validation timeline (no test period)
    initial_state: dict
    candidates: CandidateStore
    spaces: dict[str, dict[str, Spec]]
    budget: int
    metric: str
    protocol: str
    storage: str | None               # None: in-memory (one process only)
    study: str
    sampler: str
    fingerprints: dict[str, str]      # per strategy: what its study's trials depend on
    fixed_seed: bool                  # one process, private storage: the sampler gets settings.seed


@dataclass
class StrategyTuning:
    """The outcome of one strategy's study."""

    strategy: str
    space: dict[str, Spec]
    params: dict[str, Any]            # the best trial's settings
    value: float                      # its validation metric
    best_trial: int
    trials: int                       # trials complete in the study
    study: str


@dataclass
class TuneResult:
    tunings: list[StrategyTuning]
    settings: ReplaySettings
    metric: str
    protocol: str
    sampler: str
    budget: int
    validation_periods: list[int]
    validation_labels: list[str]
    first_test_period: int | None
    storage: str | None
    jobs: int
    wall_seconds: float


def _direction(metric: str) -> str:
    return "minimize" if metric == "logloss" else "maximize"


def make_storage(url: str | None):
    """An Optuna storage: an RDB URL (``sqlite:///tune.db``, ``postgresql://...``) as Optuna takes
    it, anything else a journal file path (a lock file beside it; fine on a shared disk)."""
    import optuna

    if url is None:
        return optuna.storages.InMemoryStorage()
    if "://" in url:
        return optuna.storages.RDBStorage(url)
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    path = str(Path(url).expanduser())
    return optuna.storages.JournalStorage(JournalFileBackend(path, JournalFileOpenLock(path)))


def _open_study(job: TuneJob, name: str, storage, seed: int):
    import optuna

    if job.sampler == "grid":
        # One seed everywhere: the sampler maps trial number k to grid point k of its own shuffle,
        # so workers with different shuffles would evaluate some points twice and skip others.
        sampler = optuna.samplers.GridSampler(_grid(job.spaces[name], name), seed=job.settings.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed)
    study_name = f"{job.study}:{name}"
    study = optuna.create_study(storage=storage, sampler=sampler, study_name=study_name,
                                direction=_direction(job.metric), load_if_exists=True)
    attrs = study.user_attrs
    if "fingerprint" not in attrs:
        study.set_user_attr("fingerprint", job.fingerprints[name])
        study.set_user_attr("space", {k: describe_spec(v) for k, v in job.spaces[name].items()})
    elif attrs["fingerprint"] != job.fingerprints[name]:
        raise ConfigError(f"study {study_name!r} in {job.storage} was made with other data, settings, "
                          "space or metric; choose another --study name")
    return study


def _validation_value(records: list, metric: str, protocol: str) -> float:
    summary = summary_frame(periods_frame(records), role="validation")
    row = summary[summary["protocol"] == protocol]
    if row.empty or metric not in row:
        raise ConfigError(f"no validation {metric} was scored under protocol {protocol}")
    return float(row[metric].iloc[0])


def _run_trials(job: TuneJob, name: str, storage, seed: int, progress: bool) -> None:
    """Run trials of ``name``'s study until it holds ``budget`` trials (counting other workers')."""
    from optuna.trial import TrialState

    study = _open_study(job, name, storage, seed)
    space = job.spaces[name]
    base = job.settings.strategy.get(name, {})
    limit = job.budget
    if job.sampler == "grid":
        limit = min(limit, math.prod(len(s.choices) for s in space.values()))

    def objective(trial) -> float:
        params = {setting: _suggest(trial, setting, spec) for setting, spec in space.items()}
        for done in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if done.params == params:   # a point seen before costs no replay (deterministic)
                trial.set_user_attr("repeat_of", done.number)
                return float(done.value)
        settings = replace(job.settings, strategies=(name,),
                           strategy={**job.settings.strategy, name: merge(base, params)})
        records = list(iter_replay(job.timeline, settings, [name], job.initial_state, job.candidates,
                                   progress=False))
        value = _validation_value(records, job.metric, job.protocol)
        if progress:
            shown = ", ".join(f"{k}={_short(v)}" for k, v in params.items())
            print(f"{name} trial {trial.number}: {shown} -> {job.metric} {value:.4f}",
                  file=sys.stderr, flush=True)
        return value

    while len(study.get_trials(deepcopy=False)) < limit:
        study.optimize(objective, n_trials=1)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _worker_seed(job: TuneJob, worker: int) -> int:
    if job.fixed_seed:
        return job.settings.seed
    # Every worker (and every machine running the same command) needs its own stream, or they
    # would all propose the same first points.
    return int.from_bytes(os.urandom(4), "little") ^ (job.settings.seed + worker)


def _tune_worker(item: tuple[int, TuneJob, bool]) -> int:
    """One worker: each strategy's study in turn, until each holds the budget."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    worker, job, progress = item
    storage = make_storage(job.storage)
    for name in job.spaces:
        _run_trials(job, name, storage, _worker_seed(job, worker), progress)
    return worker


def _fingerprint(settings: ReplaySettings, name: str, space: dict[str, Spec], metric: str, protocol: str,
                 sampler: str) -> str:
    """What the trials of ``name``'s study depend on: a study reused with anything else is refused."""
    ignored = {"device", "threads", "cache_dir", "eval_batch_size", "bootstrap_resamples",
               "bootstrap_unit", "tuned", "strategies", "strategy"}
    described = {k: v for k, v in to_dict(settings).items() if k not in ignored}
    described.update(strategy=name, overrides=settings.strategy.get(name, {}),
                     space={k: repr(v) for k, v in space.items()}, metric=metric, protocol=protocol,
                     sampler=sampler)
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_tune(base_layers: Sequence[dict], strategies: Sequence[str], budget: int,
             metric: str = "recall@20", jobs: int = 1, storage: str | None = None,
             study: str = "smlrec-tune", sampler: str = "tpe",
             space_overrides: dict[str, dict[str, Spec]] | None = None,
             progress: bool = False) -> TuneResult:
    """Tune each of ``strategies`` on the validation periods; settings are checked before any work."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    began = time.perf_counter()
    if budget < 1:
        raise ConfigError(f"--budget must be >= 1 trial, got {budget}")
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r} (known: {', '.join(SAMPLERS)})")
    if metric not in ALL_METRICS:
        raise ConfigError(f"unknown metric {metric!r} (known: {', '.join(ALL_METRICS)})")
    if not strategies:
        raise ConfigError("name the strategies to tune, e.g. --strategies pop-recent,fine-tune")
    settings = replay_settings(*base_layers, {"strategies": list(strategies)})
    if settings.plan.validation < 1:
        raise ConfigError("tune chooses settings on validation periods, and the plan has none; "
                          "give --plan P,O,V,T with V >= 1")
    names = resolve_strategies(settings)
    if len(settings.protocols) != 1:
        raise ConfigError(f"tune scores under one protocol, got {', '.join(settings.protocols)}")
    protocol = settings.protocols[0]
    if (metric in AUC_METRICS) != (protocol == "auc"):
        raise ConfigError(f"metric {metric} is not scored under protocol {protocol} "
                          f"({'auc, logloss' if protocol == 'auc' else 'recall@K, ndcg@K'} are)")
    spaces = resolve_spaces(names, space_overrides, settings.strategy)
    if sampler == "grid":
        for name in names:
            _grid(spaces[name], name)
    fixed_seed = jobs == 1 and storage is None
    store_path = storage
    scratch = None
    if storage is None and jobs > 1:   # workers in other processes need a storage on disk
        scratch = tempfile.TemporaryDirectory(prefix="smlrec-tune-")
        store_path = str(Path(scratch.name) / "journal.log")
    if storage is not None:
        make_storage(storage)   # a bad URL or path fails now, not in a worker
    configure_threads(settings)
    full = load_timeline(settings)
    timeline = validation_timeline(full)
    initial, _losses = pretrain_model(timeline.pretrain_data, timeline.log.n_users, timeline.log.n_items,
                                      settings)
    candidates = CandidateStore(timeline, settings.seed, settings.n_negatives, settings.cache_dir)
    if protocol == "sampled":
        for period in timeline.periods[timeline.plan.pretrain:]:
            if period.role in SCORED_ROLES:
                candidates.get(period)   # drawn once here; workers only read the cached files
    fingerprints = {name: _fingerprint(settings, name, spaces[name], metric, protocol, sampler)
                    for name in names}
    job = TuneJob(settings, timeline, initial, candidates, spaces, budget, metric, protocol, store_path,
                  study, sampler, fingerprints, fixed_seed)
    try:
        if jobs == 1:
            shared = make_storage(None) if store_path is None else make_storage(store_path)
            for name in names:
                _run_trials(job, name, shared, _worker_seed(job, 0), progress)
        else:
            from .parallel import run_in_pool, worker_threads

            run_in_pool(_tune_worker, [(w, job, progress) for w in range(jobs)], jobs,
                        worker_threads(settings, jobs))
            shared = make_storage(store_path)
        tunings = []
        for name in names:
            found = optuna.load_study(study_name=f"{study}:{name}", storage=shared)
            complete = found.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if not complete:
                raise ConfigError(f"study {study}:{name} has no complete trial yet "
                                  f"({len(found.get_trials(deepcopy=False))} started elsewhere); "
                                  "run the same command again once they finish")
            best = found.best_trial
            tunings.append(StrategyTuning(
                name, spaces[name], dict(best.params), float(best.value), best.number, len(complete),
                f"{study}:{name}"))
    finally:
        if scratch is not None:
            scratch.cleanup()
    validation = [p for p in timeline.periods if p.role == "validation"]
    tests = [p.index for p in full.periods if p.role == "test"]
    return TuneResult(tunings, settings, metric, protocol, sampler, budget,
                      [p.index for p in validation], [p.label for p in validation],
                      tests[0] if tests else None, storage, jobs, time.perf_counter() - began)


# ----------------------------------------------------------------------------------------------
# The TOML a replay takes

_WRITTEN = ("data", "plan", "mf", "pretrain", "base", "lightgcn", "ncf", "seed", "n_negatives",
            "precision", "protocols")
"""Settings the tuned file carries when they differ from the defaults: what the choice depended on.
Machine settings (threads, device, cache_dir, batch sizes of evaluation, bootstrap) stay flags."""


def tuned_settings(result: TuneResult) -> dict:
    """The settings mapping of the tuned file (what ``smlrec replay --config`` reads)."""
    defaults = to_dict(ReplaySettings())
    mine = to_dict(result.settings)
    out: dict[str, Any] = {}
    for key in _WRITTEN:
        value, default = mine[key], defaults[key]
        if isinstance(value, dict):
            changed = {k: v for k, v in value.items() if v != default.get(k) and v is not None}
            if changed:
                out[key] = changed
        elif value != default and value is not None:
            out[key] = value
    out["strategies"] = [t.strategy for t in result.tunings]
    strategy = {name: dict(table) for name, table in result.settings.strategy.items()}
    for tuning in result.tunings:
        strategy[tuning.strategy] = merge(strategy.get(tuning.strategy, {}), tuning.params)
    out["strategy"] = strategy
    out["tuned"] = {
        "by": "smlrec tune", "smlrec_version": __version__, "metric": result.metric,
        "protocol": result.protocol, "role": "validation",
        "validation_periods": result.validation_periods,
        "sampler": f"{'TPE' if result.sampler == 'tpe' else 'grid'}, seed {result.settings.seed}"
                   + ("" if result.jobs == 1 and result.storage is None else
                      f" (+ a per-worker offset; {result.jobs} process(es), shared storage)"),
        "budget": result.budget,
        "strategy": {t.strategy: {"values": dict(t.params),
                                  "space": {k: describe_spec(v) for k, v in t.space.items()},
                                  "best_value": t.value, "best_trial": t.best_trial,
                                  "trials": t.trials, "study": t.study}
                     for t in result.tunings},
    }
    return out


def _toml_key(key: str) -> str:
    if key and all(c.isalnum() or c in "-_" for c in key) and key.isascii():
        return key
    return json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"cannot write {value!r} as TOML")


def to_toml(mapping: dict, header: Sequence[str] = (), inline_depth: int = 4) -> str:
    """TOML text of a nested mapping: scalars and lists first, then a [table] per sub-mapping;
    a mapping ``inline_depth`` keys deep or deeper is written as an inline table."""
    import tomllib

    lines = [f"# {line}" if line else "#" for line in header]

    def emit(table: dict, path: list[str]) -> None:
        inline = len(path) + 1 >= inline_depth
        scalars = {k: v for k, v in table.items() if inline or not isinstance(v, dict)}
        tables = {k: v for k, v in table.items() if not inline and isinstance(v, dict)}
        if path and (scalars or not tables):
            lines.append("")
            lines.append("[" + ".".join(_toml_key(p) for p in path) + "]")
        for key, value in scalars.items():
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        for key, value in tables.items():
            emit(value, [*path, key])

    emit(mapping, [])
    text = "\n".join(lines) + "\n"
    if tomllib.loads(text) != json.loads(json.dumps(mapping, default=float)):
        raise AssertionError("the tuned TOML does not read back as written")  # a writer bug
    return text


def tuned_toml(result: TuneResult) -> str:
    """The tuned file: comments saying what was tuned and how, then the settings."""
    periods = ", ".join(str(p) for p in result.validation_periods)
    test = (f"; test periods from {result.first_test_period} on were never replayed"
            if result.first_test_period is not None else "")
    header = [
        f"Written by `smlrec tune` (smlrec {__version__}). Use: smlrec replay --config <this file>",
        f"Chosen on validation periods {periods} only{test}.",
        f"Objective: validation {result.metric} ({result.protocol} protocol), micro-averaged; "
        f"sampler {result.sampler.upper() if result.sampler == 'tpe' else 'grid'} seeded "
        f"{result.settings.seed}; budget {result.budget} trials per strategy.",
    ]
    for t in result.tunings:
        chosen = ", ".join(f"{k} = {_short(v)}" for k, v in t.params.items())
        header.append(f"{t.strategy}: {chosen} (validation {result.metric} {t.value:.4f}, "
                      f"best of {t.trials} trials)")
    header.append("The [tuned] table records this for the replay's config.json and report.")
    return to_toml(tuned_settings(result), header)


def write_tuned(result: TuneResult, path: str | Path) -> Path:
    """Write the tuned TOML to ``path`` atomically (temporary file renamed into place)."""
    path = Path(path)
    text = tuned_toml(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
