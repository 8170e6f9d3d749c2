"""The production loop: a versioned model registry, one update per new period, recommendations.

``init_registry`` once on the history, ``update_once`` per new batch file, ``recommend`` (or a
:class:`Recommender`, what ``smlrec serve`` holds) to answer top-K queries::

    from smlrec.production import ModelRegistry, init_registry, recommend, update_once

Modules: ``registry`` (versions on disk, atomic commits, the update lock), ``state`` (strategy
state <-> safetensors + JSON), ``update`` (init and update), ``recommender`` (top-K queries),
``served`` (top-K from the served tables with numpy alone), ``serve`` (HTTP). Independent of
:mod:`smlrec.experiment`: both build on the strategies and the data below them.

The names below are imported on first use, so that ``smlrec.production.served`` (what a one-user
``smlrec recommend`` needs) can be imported without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"ModelRegistry": "registry", "Recommender": "recommender", "recommend": "recommender",
          "UpdateReport": "update", "init_registry": "update", "update_once": "update"}

__all__ = ["ModelRegistry", "Recommender", "UpdateReport", "init_registry", "recommend", "update_once"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
