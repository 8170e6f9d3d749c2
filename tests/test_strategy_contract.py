"""Every registered strategy meets the contract in tests/contract.py (parametrised automatically)."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from smlrec.data.periods import SCORED_ROLES
from smlrec.errors import DataError
from smlrec.strategies import STRATEGIES

from contract import (FAST_OVERRIDES, ContractWorld, assert_same, assert_state_round_trip, empty_period,
                      fast_overrides)

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
    strategy = world.fresh(name)
    scores = world.walk(strategy, world.replayed)
    scored = [p for p in world.replayed if p.role in SCORED_ROLES]
    assert sorted(scores) == [p.index for p in scored]
    for period in scored:
        s = scores[period.index]
        assert s.shape == (len(period), world.candidates[period.index].shape[1])
        assert s.dtype.is_floating_point
        assert torch.isfinite(s).all()
    # scoring is read-only: the same call again gives the same scores
    last = scored[-1]
    assert_same({last.index: scores[last.index]}, {last.index: world.score(strategy, last)})


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_for_a_seed(world, name):
    first = world.walk(world.fresh(name), world.replayed)
    second = world.walk(world.fresh(name), world.replayed)
    assert_same(first, second)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(world, name):
    assert_state_round_trip(world, name)


@pytest.mark.parametrize("name", NAMES)
def test_update_on_empty_period_is_a_data_error(world, name):
    strategy = world.fresh(name)
    with pytest.raises(DataError, match="no interactions"):
        strategy.update(empty_period(world.replayed[0]))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("column", ["users", "items"])
def test_indices_beyond_tables_are_a_data_error(world, name, column):
    from dataclasses import replace

    strategy = world.fresh(name)
    period = world.replayed[0]
    limit = world.timeline.log.n_users if column == "users" else world.timeline.log.n_items
    values = getattr(period, column).copy()
    values[len(values) // 2] = limit
    with pytest.raises(DataError, match="beyond"):
        strategy.update(replace(period, **{column: values}))
