"""Shared fixtures: every test gets its own candidate cache under tmp_path."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Point SMLREC_CACHE into the test's tmp_path so tests never share cached candidates."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SMLREC_CACHE", str(cache))
    return cache


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    """One intra-op thread by default: tiny tensors on a shared 2-core machine run ~10x faster.

    ``SMLREC_TEST_THREADS=2`` runs the suite with two, as .ci/run does for the ``numerics`` tests,
    so a test that only passes with one thread's reduction order fails in CI."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("SMLREC_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(before)


NUMERICS_MODULES = {
    "test_bases", "test_candidate_kernel", "test_cold_start", "test_distributed", "test_fused_mf",
    "test_lazy_vs_dense_adam", "test_parallel", "test_production", "test_registry", "test_replay",
    "test_serve", "test_sequential", "test_sml", "test_spmf", "test_state", "test_strategy_contract",
    "test_neighbours", "test_linear", "test_blend", "test_collapse", "test_api", "test_examples",
    "test_foldin", "test_novelty", "test_production_recent", "test_wins",
}
"""Modules whose tests compare float results of two computations (replay vs production, one rank vs
two, a rerun, a fast kernel vs its twin). .ci/run runs them a second time with oneDNN and MKL held
to AVX2 and two threads (``-m numerics``): a test that passes only on one CPU's kernels fails there."""


def pytest_collection_modifyitems(items):
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in NUMERICS_MODULES:
            item.add_marker(pytest.mark.numerics)
