"""Thread count and import order (strategies/factory.py: pick_threads, configure_threads)."""

from __future__ import annotations

import os
import subprocess
import sys

from smlrec import WAIT_SETTINGS
from smlrec.strategies.factory import available_cores, pick_threads


def test_requested_threads_always_win():
    assert pick_threads(3, spinning=True, cores=2, load=9.0) == (3, None)


def test_bounded_waiting_uses_every_available_core():
    assert pick_threads(None, spinning=False, cores=4, load=9.0) == (4, None)


def test_spinning_threads_on_a_busy_machine_fall_back_to_one_thread_with_the_fix():
    threads, warning = pick_threads(None, spinning=True, cores=2, load=2.0)
    assert threads == 1 and "import smlrec first" in warning and "GOMP_SPINCOUNT=1000" in warning


def test_spinning_threads_on_an_idle_machine_keep_the_cores_and_warn():
    threads, warning = pick_threads(None, spinning=True, cores=2, load=0.2)
    assert threads == 2 and "import smlrec first" in warning


def test_available_cores_follow_the_affinity_mask():
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert available_cores() == expected


def _after(imports: str, **environment: str) -> list[str]:
    """SPINNING_OPENMP and the three wait settings seen by a fresh interpreter after ``imports``."""
    env = {k: v for k, v in os.environ.items() if k not in WAIT_SETTINGS} | environment
    code = (f"{imports}; import smlrec, os; "
            f"print(smlrec.SPINNING_OPENMP, *(os.environ.get(k, '-') for k in {WAIT_SETTINGS!r}))")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.split()


def test_torch_imported_first_is_detected_and_the_spin_is_bounded_otherwise():
    assert _after("import torch") == ["True", "-", "1000", "0"]
    assert _after("import os") == ["False", "-", "1000", "0"]


def test_a_wait_setting_of_the_users_own_is_left_alone():
    assert _after("import torch", OMP_WAIT_POLICY="PASSIVE") == ["False", "PASSIVE", "-", "-"]
    assert _after("import os", GOMP_SPINCOUNT="5") == ["False", "-", "5", "-"]
