"""The compiled (numba) MF kernels, imported on first use.

The kernels themselves (and their documentation) are in ``_mf_kernels_numba.py``. Importing numba
costs about a second, which every ``smlrec recommend`` and server start would pay for nothing
(serving never trains and scores served tables directly), so this module only tells whether numba
is installed; the first use of a kernel (``mf_kernels.train_rows``, ``candidate_scores``, ...)
imports and compiles it.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

AVAILABLE = importlib.util.find_spec("numba") is not None


def __getattr__(name: str) -> Any:
    compiled = importlib.import_module("._mf_kernels_numba", __package__)
    return getattr(compiled, name)
