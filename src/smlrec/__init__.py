"""smlrec: retrain recommender systems period after period (SML and its baselines)."""

import os as _os
import sys as _sys

# Our batches are small, so torch's OpenMP threads wait on each other often. With the default
# (spinning) wait policy, any other busy process on the machine makes them fight for the cores:
# a Full-retrain update measured 39.5 s instead of 2.0 s on 2 cores shared with one other job.
# Passive waiting avoids that and costs nothing measurable when the machine is idle. It must be
# set before torch (OpenMP) starts: when a script imported torch first, it is too late, and
# strategies/factory.py:configure_threads falls back to one thread on a busy machine and warns.
SPINNING_OPENMP = "torch" in _sys.modules and "OMP_WAIT_POLICY" not in _os.environ
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
