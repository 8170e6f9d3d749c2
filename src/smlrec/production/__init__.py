"""The production loop: a versioned model registry, one update per new period, recommendations.

``init_registry`` once on the history, ``update_once`` per new batch file, ``recommend`` (or a
:class:`Recommender`, what ``smlrec serve`` holds) to answer top-K queries::

    from smlrec.production import ModelRegistry, init_registry, recommend, update_once

Modules: ``registry`` (versions on disk, atomic commits, the update lock), ``state`` (strategy
state <-> safetensors + JSON), ``update`` (init and update), ``recommender`` (top-K queries),
``serve`` (HTTP). Independent of :mod:`smlrec.experiment`: both build on the strategies and the
data below them.
"""

from .registry import ModelRegistry
from .recommender import Recommender, recommend
from .update import UpdateReport, init_registry, update_once

__all__ = ["ModelRegistry", "Recommender", "UpdateReport", "init_registry", "recommend", "update_once"]
