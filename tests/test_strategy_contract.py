"""Every registered strategy meets the contract of smlrec.testing (parametrised automatically)."""

from __future__ import annotations

import pytest
import torch

from smlrec.strategies import STRATEGIES, register_class
from smlrec.strategies.popularity import Popularity, PopularitySettings
from smlrec.testing import (FAST_OVERRIDES, ContractWorld, check_deterministic, check_empty_period_refused,
                            check_indices_beyond_tables_refused, check_scores, check_state_round_trip,
                            check_strategy, fast_overrides)

NAMES = sorted(STRATEGIES)


@pytest.fixture(scope="module")
def world() -> ContractWorld:
    return ContractWorld()


def test_fast_overrides_prefix_lookup(monkeypatch):
    monkeypatch.setitem(FAST_OVERRIDES, "sml", {"rounds": 1})
    monkeypatch.setitem(FAST_OVERRIDES, "sml-cnn", {"rounds": 2})
    assert fast_overrides("sml") == {"rounds": 1}
    assert fast_overrides("sml-fast") == {"rounds": 1}
    assert fast_overrides("sml-cnn-x") == {"rounds": 2}
    assert fast_overrides("unheard-of") == {}


@pytest.mark.parametrize("name", NAMES)
def test_start_update_score_shapes(world, name):
    check_scores(world, name)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_for_a_seed(world, name):
    check_deterministic(world, name)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(world, name):
    check_state_round_trip(world, name)


@pytest.mark.parametrize("name", NAMES)
def test_update_on_empty_period_is_a_data_error(world, name):
    check_empty_period_refused(world, name)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("column", ["users", "items"])
def test_indices_beyond_tables_are_a_data_error(world, name, column):
    check_indices_beyond_tables_refused(world, name, column)


# ----------------------------------------------------------------------------------------------
# The checks themselves: each one fails on a strategy that breaks its rule

class _Leaky(Popularity):
    """Breaks two rules: scoring changes the state, and the state holds a plain object."""

    name = "test-leaky"
    Settings = PopularitySettings

    def score(self, period, rows, candidates):
        self.counts = self.counts * 2.0 + 1.0    # scoring must be read-only
        self._table = None
        return super().score(period, rows, candidates)

    def _state(self):
        return {"counts": self.counts.copy(), "clock": object()}


class _Nondeterministic(Popularity):
    name = "test-nondeterministic"
    Settings = PopularitySettings

    def score(self, period, rows, candidates):
        return super().score(period, rows, candidates) + torch.rand(candidates.shape)


def test_the_checks_catch_broken_strategies(world):
    leaky = register_class(_Leaky)
    nondeterministic = register_class(_Nondeterministic)
    try:
        with pytest.raises(AssertionError, match="period"):
            check_scores(world, leaky)
        with pytest.raises(AssertionError, match="not tensors"):
            check_state_round_trip(world, leaky)
        with pytest.raises(AssertionError):
            check_deterministic(world, nondeterministic)
        with pytest.raises(AssertionError):
            check_strategy(_Nondeterministic, world=world)
    finally:
        STRATEGIES.pop(leaky)
        STRATEGIES.pop(nondeterministic)


def test_check_strategy_passes_a_sound_plug_in(world):
    class Recent(Popularity):
        """A plug-in subclass with its own name and settings."""

        name = "test-recent"
        Settings = PopularitySettings

    try:
        assert check_strategy(Recent, overrides={"decay": 0.3}, world=world) == "test-recent"
        assert STRATEGIES["test-recent"].cls is Recent
    finally:
        STRATEGIES.pop("test-recent", None)
