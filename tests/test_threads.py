"""Thread count and import order (strategies/factory.py: pick_threads, configure_threads)."""

from __future__ import annotations

import os
import subprocess
import sys

from smlrec.strategies.factory import available_cores, pick_threads


def test_requested_threads_always_win():
    assert pick_threads(3, spinning=True, cores=2, load=9.0) == (3, None)


def test_passive_waiting_uses_every_available_core():
    assert pick_threads(None, spinning=False, cores=4, load=9.0) == (4, None)


def test_spinning_threads_on_a_busy_machine_fall_back_to_one_thread_with_the_fix():
    threads, warning = pick_threads(None, spinning=True, cores=2, load=2.0)
    assert threads == 1 and "import smlrec first" in warning and "OMP_WAIT_POLICY=PASSIVE" in warning


def test_spinning_threads_on_an_idle_machine_keep_the_cores_and_warn():
    threads, warning = pick_threads(None, spinning=True, cores=2, load=0.2)
    assert threads == 2 and "import smlrec first" in warning


def test_available_cores_follow_the_affinity_mask():
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert available_cores() == expected


def _spinning_after(imports: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = f"{imports}; import smlrec, os; print(smlrec.SPINNING_OPENMP, os.environ['OMP_WAIT_POLICY'])"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.split()


def test_torch_imported_first_is_detected():
    assert _spinning_after("import torch") == ["True", "PASSIVE"]
    assert _spinning_after("import os") == ["False", "PASSIVE"]
