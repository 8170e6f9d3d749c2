"""Shared fixtures: every test gets its own candidate cache under tmp_path."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Point SMLREC_CACHE into the test's tmp_path so tests never share cached candidates."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SMLREC_CACHE", str(cache))
    return cache


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread: tiny tensors on a shared 2-core machine run ~10x faster this way."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
