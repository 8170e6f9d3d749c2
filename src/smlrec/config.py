"""Typed settings: frozen dataclasses with the paper's defaults, built from TOML and flags.

Precedence: dataclass defaults < ``--config`` TOML file < command-line flags (and ``--set``).
Unknown keys and values of the wrong type are ConfigErrors naming the key.

TOML layout::

    seed = 2020
    strategies = ["full-retrain", "fine-tune", "sml"]
    [data]        # path, format, columns, periods / every / day_cuts, timezone, min_rating,
                  # min_user_interactions, min_item_interactions (k-core)
    [plan]        # pretrain, offline, validation, test
    [mf]          # dim, lr, batch_size, init_std, sparse, kernel
    [pretrain]    # epochs
    base = "mf"   # the base model: mf | lightgcn | ncf (models/bases.py)
    [lightgcn]    # layers, loss
    [ncf]         # hidden
    [strategy.sml]  # settings of one strategy, by its name
    rounds = 10
    [tuned]         # written by `smlrec tune` (experiment/tune.py): which settings were tuned, how
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data.periods import Plan
from .errors import ConfigError


PROTOCOL_NAMES = ("sampled", "full", "auc")
"""Evaluation protocols (evaluation/protocols.py): 999 sampled negatives, full ranking, AUC/LogLoss."""


def require(ok: bool, name: str, rule: str, value: Any) -> None:
    """Range check of setting ``name``: a ConfigError unless ``ok`` (``build`` adds the table prefix)."""
    if not ok:
        err = ConfigError(f"{name}: must be {rule}, got {value!r}")
        err.setting = name
        raise err


@dataclass(frozen=True)
class DataSettings:
    """Where the log is and how to cut it into periods."""

    path: str | None = None          # None: the bundled MovieLens ml-latest-small ratings
    format: str = "auto"             # csv, parquet, movielens, movielens-1m, movielens-100k, recbole, ...
    user_col: str | None = None
    item_col: str | None = None
    time_col: str | None = None
    rating_col: str | None = None
    sep: str | None = None
    min_rating: float | None = None  # keep rows with rating >= this; None keeps every row
    min_user_interactions: int = 0   # k-core: keep users with >= this many rows (iterated to stability)
    min_item_interactions: int = 0   # k-core: keep items with >= this many rows (see data/filters.py)
    periods: int = 20                # equal-count periods, unless every or day_cuts is given
    every: str | None = None         # calendar windows, e.g. "1D", "8h"
    day_cuts: tuple[float, ...] | None = None  # hours inside each day, e.g. (10, 17)
    timezone: str = "UTC"            # for every / day_cuts
    drop_empty: bool = False         # skip empty calendar windows instead of failing

    def __post_init__(self) -> None:
        require(self.periods >= 1, "periods", ">= 1", self.periods)


@dataclass(frozen=True)
class MFSettings:
    """The base matrix-factorisation model and its optimiser (sml-method.md section 2)."""

    dim: int = 64
    lr: float = 0.01
    batch_size: int = 1024
    init_std: float = 0.1
    sparse: bool = True              # lazy row-wise Adam (models/fused_mf.py); False: dense Adam
    kernel: str = "auto"             # lazy Adam's kernel: numba | torch | auto (numba on the CPU if installed)

    def __post_init__(self) -> None:
        require(self.kernel in ("auto", "numba", "torch"), "kernel", "one of auto, numba, torch", self.kernel)
        require(self.dim >= 1, "dim", ">= 1", self.dim)
        require(self.lr > 0, "lr", "> 0", self.lr)
        require(self.batch_size >= 1, "batch_size", ">= 1", self.batch_size)
        require(self.init_std >= 0, "init_std", ">= 0", self.init_std)


BASE_KINDS = ("mf", "lightgcn", "ncf")
BASE_LOSSES = ("bce", "bpr")


@dataclass(frozen=True)
class LightGCNSettings:
    """LightGCN (He et al., SIGIR 2020) over the user-item graph of a strategy's training data."""

    layers: int = 3                  # K propagation layers; final embedding = mean of layers 0..K
    loss: str = "bce"                # bce (one negative, as every other base) | bpr

    def __post_init__(self) -> None:
        require(self.layers >= 0, "layers", ">= 0", self.layers)
        require(self.loss in BASE_LOSSES, "loss", f"one of {', '.join(BASE_LOSSES)}", self.loss)


@dataclass(frozen=True)
class NCFSettings:
    """NeuMF's MLP tower: concat(p_u, q_i) -> ReLU layers of these widths -> one logit."""

    hidden: tuple[int, ...] = (64, 32, 16)
    loss: str = "bce"                # bce | bpr

    def __post_init__(self) -> None:
        require(len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden), "hidden",
                "one or more widths >= 1", self.hidden)
        require(self.loss in BASE_LOSSES, "loss", f"one of {', '.join(BASE_LOSSES)}", self.loss)


@dataclass(frozen=True)
class BaseSettings:
    """Which base model the strategies train and score, with its own settings (not a TOML table:
    ``ReplaySettings.base_settings`` assembles it from ``base``, ``[lightgcn]`` and ``[ncf]``)."""

    kind: str = "mf"
    lightgcn: LightGCNSettings = field(default_factory=LightGCNSettings)
    ncf: NCFSettings = field(default_factory=NCFSettings)

    def __post_init__(self) -> None:
        require(self.kind in BASE_KINDS, "base", f"one of {', '.join(BASE_KINDS)}", self.kind)


@dataclass(frozen=True)
class PretrainSettings:
    """MF pretraining on the pretrain periods; every strategy starts from this model."""

    epochs: int = 20

    def __post_init__(self) -> None:
        require(self.epochs >= 0, "epochs", ">= 0", self.epochs)


PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class ReplaySettings:
    data: DataSettings = field(default_factory=DataSettings)
    plan: Plan = field(default_factory=Plan)
    mf: MFSettings = field(default_factory=MFSettings)
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)
    base: str = "mf"                 # the base model: mf | lightgcn | ncf (models/bases.py)
    lightgcn: LightGCNSettings = field(default_factory=LightGCNSettings)
    ncf: NCFSettings = field(default_factory=NCFSettings)
    strategies: tuple[str, ...] = ()  # empty: every registered strategy
    strategy: dict = field(default_factory=dict)  # per-strategy overrides: {name: {key: value}}
    seed: int = 2020
    device: str = "cpu"
    threads: int | None = None       # torch intra-op threads; None: all cores
    precision: str = "fp32"          # fp32 | bf16: the SML transfer's arithmetic (models/precision.py)
    n_negatives: int = 999
    eval_batch_size: int = 2048
    cache_dir: str | None = None
    protocols: tuple[str, ...] = ("sampled",)   # sampled | full | auc; each scores every strategy
    bootstrap_resamples: int = 1000  # resamples for 95% intervals and p-values (0: none)
    bootstrap_unit: str = "user"     # user (a user's rows move together) | interaction
    tuned: dict = field(default_factory=dict)   # what `smlrec tune` chose and how (a record only:
                                                # config.json and the report show it; nothing reads it)

    def __post_init__(self) -> None:
        require(self.threads is None or self.threads >= 1, "threads", ">= 1", self.threads)
        require(len(self.protocols) > 0 and set(self.protocols) <= set(PROTOCOL_NAMES), "protocols",
                f"a non-empty list of {', '.join(PROTOCOL_NAMES)}", self.protocols)
        require(len(set(self.protocols)) == len(self.protocols), "protocols", "without repeats",
                self.protocols)
        require(self.bootstrap_resamples >= 0, "bootstrap_resamples", ">= 0", self.bootstrap_resamples)
        require(self.bootstrap_unit in ("user", "interaction"), "bootstrap_unit", "user or interaction",
                self.bootstrap_unit)
        require(self.n_negatives >= 1, "n_negatives", ">= 1", self.n_negatives)
        require(self.eval_batch_size >= 1, "eval_batch_size", ">= 1", self.eval_batch_size)
        require(self.base in BASE_KINDS, "base", f"one of {', '.join(BASE_KINDS)}", self.base)
        require(self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}",
                self.precision)

    @property
    def base_settings(self) -> BaseSettings:
        return BaseSettings(self.base, self.lightgcn, self.ncf)


# ----------------------------------------------------------------------------------------------

def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else str
        return tuple(_coerce(v, inner, where) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise ConfigError(f"{where}: expected a whole number, got {value!r}")
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected text, got {value!r}")
    if annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        return build(annotation, value, where)
    return value


def build(cls: type, mapping: Any, where: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a (nested) mapping, checking names and types."""
    if isinstance(mapping, cls):
        return mapping
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a table, got {mapping!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - names)
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown setting(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(names))})")
    values = {}
    for name, value in mapping.items():
        key = f"{where}.{name}" if where else name
        values[name] = _coerce(value, hints[name], key)
    try:
        return cls(**values)
    except ConfigError as err:
        if getattr(err, "setting", None) and where:
            raise ConfigError(f"{where}.{err}") from None
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where or cls.__name__}: {err}") from None


def to_dict(settings: Any) -> Any:
    """Plain (JSON-able) data of a settings object."""
    if dataclasses.is_dataclass(settings):
        return {f.name: to_dict(getattr(settings, f.name)) for f in dataclasses.fields(settings)}
    if isinstance(settings, (list, tuple)):
        return [to_dict(v) for v in settings]
    if isinstance(settings, dict):
        return {k: to_dict(v) for k, v in settings.items()}
    return settings


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge; ``override`` wins."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None


def parse_assignment(text: str) -> dict:
    """``a.b.c=value`` as a nested dict; the value is read as TOML (number, bool, list) or text."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. strategy.sml.rounds=5")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    out: dict = {}
    node = out
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text!r}: empty key")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def replay_settings(*layers: dict) -> ReplaySettings:
    """ReplaySettings from layered mappings (earlier layers are overridden by later ones)."""
    merged: dict = {}
    for layer in layers:
        merged = merge(merged, layer)
    return build(ReplaySettings, merged)
