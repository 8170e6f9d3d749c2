"""Retraining strategies, by name. Adding one = a module with a Strategy subclass + ``register``.

Variants of one method (the SML ablations) are one class registered under several names with
different preset settings, never copies of the class.

Strategies from outside the package (plug-ins) join the same registry without editing it:

* ``register_class(MyStrategy)``: a Strategy subclass from user code, under its ``name``
  (``smlrec.replay(strategies=[MyStrategy, "sml"])`` calls it for you);
* ``load_plugin("module:Class")``: the CLI's ``--plugin`` (the current directory is importable);
* the entry-point group ``smlrec.strategies`` of installed distributions (``name = "module:Class"``),
  read the first time a name is not found, and by ``smlrec strategies``.

A plug-in's settings are a frozen dataclass given as the class attribute ``Settings``
(optional); ``--set strategy.<name>.<key>=...`` and ``strategy={name: {...}}`` reach it as for
the built-in strategies. Plug-ins are opt-in: a replay runs one only when it is named.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from ..config import build, merge
from ..errors import ConfigError
from .asmg import ASMG, ASMGSettings
from .base import Strategy, StrategyContext
from .blend import BlendSettings, SMLBlend
from .linear import EASE, IALS, EASESettings, IALSSettings
from .mf_retrain import FineTune, FullRetrain, RetrainSettings
from .neighbours import SKNN, ItemKNN, ItemKNNSettings, SKNNSettings
from .novelty import WithNovelty, WithNoveltySettings, bind_registry
from .popularity import Popularity, PopularitySettings
from .sequential import SequentialSettings, SequentialStrategy
from .sml import SML, SMLSettings
from .spmf import SPMF, SPMFSettings
from .stale import NoUpdate


@dataclass(frozen=True)
class StrategySpec:
    cls: type[Strategy]
    settings_cls: type
    preset: dict = field(default_factory=dict)
    description: str = ""
    in_default: bool = True    # run when no --strategies are given (ablations are opt-in)
    history: str = ""          # what a scored row reads of its user's history (sml-method.md section 6)


STRATEGIES: dict[str, StrategySpec] = {}
MF_HISTORY = ("none by default (the user's trained row; its rows of the scored period are not read); with "
              "history = 'fold-in': the last 20 items before the row folded into that row (docs/sml-history.md)")


def register(name: str, cls: type[Strategy], settings_cls: type, preset: dict | None = None,
             description: str = "", in_default: bool = True, history: str = "") -> None:
    STRATEGIES[name] = StrategySpec(cls, settings_cls, dict(preset or {}), description, in_default, history)


def default_strategies() -> list[str]:
    """The strategies a replay runs when none are named: the paper's comparison, not the ablations."""
    return [name for name, spec in STRATEGIES.items() if spec.in_default]


def strategy_settings(name: str, overrides: dict | None = None) -> Any:
    """The settings object of strategy ``name``: class defaults < preset < overrides."""
    spec = _spec(name)
    return build(spec.settings_cls, merge(spec.preset, overrides or {}), f"strategy.{name}")


def check_strategy(name: str, context: StrategyContext, overrides: dict | None = None) -> None:
    """ConfigError now if ``name`` with these settings cannot work in ``context`` (e.g. its base)."""
    _spec(name).cls.check_context(strategy_settings(name, overrides), context, name)


def create_strategy(name: str, context: StrategyContext, overrides: dict | None = None) -> Strategy:
    spec = _spec(name)
    settings = strategy_settings(name, overrides)
    spec.cls.check_context(settings, context, name)
    strategy = spec.cls(settings, context)
    strategy.name = name
    return strategy


def _spec(name: str) -> StrategySpec:
    if name not in STRATEGIES:
        load_entry_points()
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
    return STRATEGIES[name]


# ----------------------------------------------------------------------------------------------
# Plug-ins: strategies defined outside the package

ENTRY_POINT_GROUP = "smlrec.strategies"


@dataclass(frozen=True)
class NoSettings:
    """The settings of a strategy that declares none."""


def strategy_name(cls: type[Strategy]) -> str:
    """The name a strategy class is registered under: its own ``name`` attribute when it sets one,
    else its class name in lower case."""
    own = next((klass.__dict__["name"] for klass in cls.__mro__
                if klass is not Strategy and "name" in klass.__dict__), None)
    return own if isinstance(own, str) and own else cls.__name__.lower()


def register_class(cls: Any, name: str | None = None, where: str = "") -> str:
    """Register a Strategy subclass from outside the package; returns its name.

    Registering the class already registered under that name again is a no-op; another class
    under a taken name is a ConfigError (a plug-in never replaces a strategy silently).
    """
    origin = f" ({where})" if where else ""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigError(f"a strategy plug-in must be a subclass of smlrec.strategies.Strategy, "
                          f"got {cls!r}{origin}")
    if getattr(cls, "__abstractmethods__", None):
        raise ConfigError(f"strategy plug-in {cls.__name__}{origin} does not implement "
                          f"{', '.join(sorted(cls.__abstractmethods__))}")
    name = name or strategy_name(cls)
    settings_cls = getattr(cls, "Settings", NoSettings)
    if not (dataclasses.is_dataclass(settings_cls) and isinstance(settings_cls, type)):
        raise ConfigError(f"strategy plug-in {cls.__name__}{origin}: its Settings must be a dataclass")
    if name in STRATEGIES:
        if STRATEGIES[name].cls is cls:
            return name
        raise ConfigError(f"strategy name {name!r} is taken by {STRATEGIES[name].cls.__name__}; give "
                          f"{cls.__name__}{origin} another name (its class attribute 'name')")
    doc = (cls.__doc__ or "").strip().splitlines()
    register(name, cls, settings_cls, {}, f"(plug-in {cls.__module__}.{cls.__qualname__}) "
             f"{doc[0] if doc else ''}".rstrip(), in_default=False,
             history=str(getattr(cls, "history", "") or "not declared by the plug-in (class attribute 'history')"))
    return name


def load_plugin(target: str) -> str:
    """Import ``module:Class`` (the current directory first on the path, as for ``python -m``)
    and register the class; returns its strategy name."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"--plugin {target!r}: expected module:Class, e.g. mypackage.strategies:MyStrategy")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"--plugin {target!r}: cannot import {module_name} ({err})") from None
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"--plugin {target!r}: {module_name} has no {attribute}")
        obj = getattr(obj, part)
    return register_class(obj, where=f"--plugin {target}")


_entry_points_loaded = False


def load_entry_points() -> list[str]:
    """Register the strategies of the entry-point group ``smlrec.strategies`` (once); returns
    their names. An entry point that fails to load is a ConfigError naming it."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return [n for n, spec in STRATEGIES.items() if spec.description.startswith("(plug-in")]
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    names = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {point.name} = {point.value}"
        try:
            cls = point.load()
        except Exception as err:  # noqa: BLE001 - any import error of a third-party plug-in
            raise ConfigError(f"strategy plug-in {where}: cannot load it ({type(err).__name__}: {err})") from None
        names.append(register_class(cls, point.name, where))
    return names


register("pop", Popularity, PopularitySettings, {"decay": 1.0},
         "items ranked by their interaction count over everything seen so far (the floor)",
         history="none (the same ranking for every user)")
register("pop-recent", Popularity, PopularitySettings, {"decay": 0.5},
         "items ranked by exponentially decayed counts (x decay per period; the recency floor)",
         history="none (the same ranking for every user)")
register("full-retrain", FullRetrain, RetrainSettings, {"epochs": 5},
         "warm-started MF trained on all data so far",
         history=MF_HISTORY)
register("fine-tune", FineTune, RetrainSettings, {"epochs": 5, "graph": "seen"},
         "warm-started MF trained on the new period only",
         history=MF_HISTORY)
register("fine-tune-h", FineTune, RetrainSettings, {"epochs": 5, "graph": "seen", "history": "fold-in"},
         "fine-tune whose served user row adds a fold-in of the user's last items, gated by weights fitted "
         "on the next period (docs/sml-history.md)", in_default=False,
         history="last 20 items before the row (earlier periods and earlier rows of the scored period), "
                 "folded over the served item rows into the user's served row (never the row itself)")
register("spmf", SPMF, SPMFSettings, {},
         "warm-started MF on reservoir + new period, rank-weighted sampling (Wang et al. 2018)",
         history=MF_HISTORY)
register("asmg", ASMG, ASMGSettings, {"epochs": 5},
         "GRU meta-generator over the last 3 fine-tuned models generates the next (Peng et al. 2021)",
         in_default=False,
         history=MF_HISTORY)
register("gru4rec", SequentialStrategy, SequentialSettings, {"model": "gru4rec"},
         "GRU over each user's item sequence, warm-started each period (Hidasi et al. 2016)",
         history="last 10 items before the row (earlier periods and earlier rows of the scored period)")
register("caser", SequentialStrategy, SequentialSettings,
         {"model": "caser", "window": 5, "length": 5, "dropout": 0.5},
         "convolutions over each user's last 5 items, warm-started each period (Tang and Wang 2018)",
         history="last 5 items before the row (earlier periods and earlier rows of the scored period)")
register("itemknn", ItemKNN, ItemKNNSettings, {},
         "item-item asymmetric cosine over a window of periods, scored from the user's last items",
         history="last 20 items before the row (earlier periods and earlier rows of the scored period)")
register("sknn", SKNN, SKNNSettings, {},
         "V-SKNN: the most similar recent user histories vote for their items (Ludewig et al. 2021)",
         history="last 100 items before the row (earlier periods and earlier rows of the scored period); "
                 "neighbours: other users' last 100 items up to the previous period")
register("no-update", NoUpdate, RetrainSettings, {"epochs": 5, "graph": "seen"},
         "MF fine-tuned through the offline periods, then never updated (the staleness reference)",
         history="none (the user's row as trained before the freeze)")

register("ease", EASE, EASESettings, {},
         "closed-form item-item weights over the window, scored from the user's last items (Steck 2019)",
         in_default=False,
         history="last 20 items before the row (earlier periods and earlier rows of the scored period)")
register("ials", IALS, IALSSettings, {},
         "implicit ALS (implicit), warm-started each period, in-period rows folded in (Hu et al. 2008)",
         history="the user's rows of the window and earlier rows of the scored period, folded into the "
                 "user's factors (never the row itself)")

register("sml", SML, SMLSettings, {}, "sequential meta-learning with the CNN transfer (Zhang et al. 2020)",
         history=MF_HISTORY)
register("sml-s", SML, SMLSettings, {"freeze_when_scored": True},
         "SML with the transfer frozen once periods are scored (no step 2)",
         history=MF_HISTORY)
register("sml-n", SML, SMLSettings, {"step2_data": "current"},
         "SML whose transfer is trained on D_t instead of D_t+1 (ablation)", in_default=False,
         history=MF_HISTORY)
register("sml-fp", SML, SMLSettings, {"step1_through_transfer": False},
         "SML with new embeddings fitted on their own loss, then merged (ablation)", in_default=False,
         history=MF_HISTORY)
register("sml-cnn", SML, SMLSettings, {"transfer": "no-cnn"}, "SML transfer without the CNN (ablation)",
         in_default=False,
         history=MF_HISTORY)
# The plain FC-less transfer squeezes every row towards one vector (test R@20 .0801, below pop's
# .2081, bundled data); the residual, scale-keeping form was chosen on validation
# (docs/sml-stability.md).
register("sml-fc", SML, SMLSettings, {"transfer": "no-fc", "residual": True, "keep_scale": True,
                                      "round_start": "hat"},
         "SML transfer without the FC layers, residual and scale-keeping (ablation)", in_default=False,
         history=MF_HISTORY)
register("sml-linear", SML, SMLSettings, {"transfer": "linear"},
         "SML with a learned linear mix a*W_prev + (1-a)*W_hat (ablation)", in_default=False,
         history=MF_HISTORY)
register("sml-mlp", SML, SMLSettings, {"transfer": "mlp"}, "SML with an MLP on [W_prev; W_hat] (ablation)",
         in_default=False,
         history=MF_HISTORY)

register("sml-h", SML, SMLSettings, {"history": "fold-in"},
         "SML whose served user row adds a fold-in of the user's last items, gated by weights fitted "
         "on the next period (docs/sml-history.md)", in_default=False,
         history="last 20 items before the row (earlier periods and earlier rows of the scored period), "
                 "folded over the served item rows into the user's served row (never the row itself)")

register("sml-blend", SMLBlend, BlendSettings, {},
         "SML and history-aware models (components) mixed per row by weights meta-trained on the next "
         "period (docs/sml-blend.md)",
         in_default=False,
         history="each component's own rule (itemknn, ease: last 20 items before the row; sknn: last 100; "
                 "ials: earlier rows folded in; pop-recent: none; new-items, period-pop: every user's rows of "
                 "the scored period before the row); the weights read the user's row counts before the row; "
                 "SML's part: none")

bind_registry(_spec, strategy_settings, create_strategy)
# The new-item prior (docs/new-items.md) on three strategies: the inner strategy's z-scored scores
# plus weight * log(1 + recent count) for items first seen at most max_age periods ago.
for _inner, _history in (("pop-recent", STRATEGIES["pop-recent"].history),
                         ("itemknn", STRATEGIES["itemknn"].history),
                         ("sml", STRATEGIES["sml"].history)):
    register(f"{_inner}+new", WithNovelty, WithNoveltySettings, {"inner": _inner},
             f"{_inner} plus a counted prior for items first seen recently (docs/new-items.md)",
             in_default=False,
             history=f"{_history}; the prior reads every user's rows of the scored period before the row "
                     "(item counts), never the row itself")

__all__ = ["ENTRY_POINT_GROUP", "STRATEGIES", "NoSettings", "Strategy", "StrategyContext", "StrategySpec",
           "check_strategy", "create_strategy", "default_strategies", "load_entry_points", "load_plugin",
           "register", "register_class", "strategy_name", "strategy_settings"]
