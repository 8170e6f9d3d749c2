"""smlrec: retrain recommender systems period after period (SML and its baselines)."""

import os as _os
import sys as _sys

# Our batches are small, so torch's OpenMP threads meet at a barrier every few microseconds.
# How a waiting thread waits decides the speed:
# - spinning without bound (libgomp's default when torch is imported first: 300,000 spins) makes
#   threads fight for the cores when any other process is busy (a Full-retrain update measured
#   39.5 s instead of 2.0 s on 2 cores shared with one other job);
# - sleeping at once (OMP_WAIT_POLICY=PASSIVE, smlrec's choice until 2026-11-28) pays a futex
#   wake-up per parallel region: SML's Yelp-scale update took 72.5 s against 54.6 s on an idle
#   machine;
# - a short spin (GOMP_SPINCOUNT=1000, tens of microseconds) then sleep is as fast as spinning
#   on an idle machine and close to PASSIVE on a busy one (BENCHMARKS.md, "Waiting threads").
# OpenMP reads these when torch loads, so a script that imported torch first gets the default;
# strategies/factory.py:configure_threads then uses one thread on a busy machine and warns.
# A user's own OMP_WAIT_POLICY, GOMP_SPINCOUNT or KMP_BLOCKTIME is left alone. (Intel's OpenMP, in some conda
# builds of torch, reads KMP_BLOCKTIME instead: 0 there is its PASSIVE.)
WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")   # how OpenMP threads wait
_USER_CHOSE_WAIT = any(name in _os.environ for name in WAIT_SETTINGS)
SPINNING_OPENMP = "torch" in _sys.modules and not _USER_CHOSE_WAIT
if not _USER_CHOSE_WAIT:
    _os.environ["GOMP_SPINCOUNT"] = "1000"
    _os.environ["KMP_BLOCKTIME"] = "0"

__version__ = "0.1.0"


def __getattr__(name: str):
    # The public API, imported on first use: ``import smlrec`` alone loads no torch, and the
    # modules below the API never load it (tests/test_layout.py, LAZY_EXPORTS).
    if name in ("replay", "Results"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'smlrec' has no attribute {name!r}")


__all__ = ["Results", "replay", "__version__"]
