"""History-aware user rows (strategies/foldin.py): the fold-in's twin, no leak, the gate fitted on
D_{t+1} before the inner update, served tables consistent with ``score``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from smlrec.errors import ConfigError
from smlrec.strategies import create_strategy, foldin, strategy_settings
from smlrec.strategies.foldin import (FoldIn, history_vectors, history_vectors_reference, recency_weights)
from smlrec.strategies.sequential import PAD
from smlrec.strategies.sml import SMLSettings
from smlrec.testing import ContractWorld, fast_overrides


@pytest.fixture(scope="module")
def world():
    return ContractWorld()


def _contexts(rng: np.random.Generator, n: int, width: int, n_items: int) -> np.ndarray:
    """Right-aligned random contexts with every length 0..width."""
    contexts = np.full((n, width), PAD, dtype=np.int64)
    for row in range(n):
        length = row % (width + 1)
        if length:
            contexts[row, width - length:] = rng.integers(0, n_items, length)
    return contexts


def test_recency_weights_by_hand():
    contexts = np.array([[PAD, 4, 7], [PAD, PAD, PAD], [1, 2, 3]])
    weights = recency_weights(contexts, 0.5)
    # [-, a, b]: raw 0.5, 1 -> 1/3, 2/3; [a, b, c]: 0.25, 0.5, 1 -> 1/7, 2/7, 4/7
    np.testing.assert_allclose(weights, [[0, 1 / 3, 2 / 3], [0, 0, 0], [1 / 7, 2 / 7, 4 / 7]], rtol=1e-12)


@pytest.mark.parametrize("fold", ["mean", "least-squares"])
def test_history_vectors_match_the_slow_twin(fold):
    rng = np.random.default_rng(0)
    table = torch.from_numpy(rng.normal(size=(40, 6))).float()
    contexts = _contexts(rng, 60, 5, 40)
    fast = history_vectors(table, contexts, 0.7, fold, 0.3)
    slow = history_vectors_reference(table, contexts, 0.7, fold, 0.3)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    assert torch.equal(fast[0], torch.zeros(6))            # no history: h = 0
    # the mean of one item is that item's row
    one = np.array([[PAD, PAD, PAD, PAD, 9]])
    if fold == "mean":
        torch.testing.assert_close(history_vectors(table, one, 0.7)[0], table[9])


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="history"):
        SMLSettings(history="always")
    with pytest.raises(ConfigError, match="history_recency"):
        SMLSettings(history="fold-in", history_recency=0.0)
    with pytest.raises(ConfigError, match="strategy.sml-h.history_fold"):
        strategy_settings("sml-h", {"history_fold": "median"})


def test_fold_in_is_refused_on_ncf(world):
    from smlrec.config import BaseSettings
    context = replace(world.context("sml-h"), base=BaseSettings("ncf"))
    with pytest.raises(ConfigError, match="NCF"):
        create_strategy("sml-h", context, {**fast_overrides("sml-h")})


def test_a_closed_gate_leaves_sml_as_it_was(world):
    """With the gate at 0 and not fitted, sml-h scores exactly as sml: the fold-in has its own
    random stream, so SML's training is untouched."""
    closed = {**fast_overrides("sml"), "history": "fold-in", "history_beta": 0.0, "history_steps": 0}
    plain = world.fresh("sml")
    gated = create_strategy("sml", world.context("sml"), closed)
    gated.start(world.timeline.pretrain_data, {k: v.clone() for k, v in world.initial.items()})
    for period in world.replayed:
        assert torch.equal(world.score(plain, period), world.score(gated, period))
        plain.update(period)
        gated.update(period)


def _spied(world, monkeypatch):
    strategy = world.fresh("sml-h")
    seen = []
    original = strategy.foldin.fit

    def spy(period, user_table, item_table, cold):
        seen.append({"period": period.index, "users": period.users.copy(), "items": period.items.copy(),
                     "sml_updates": strategy.periods_seen, "blocks": strategy.foldin.blocks,
                     "served": user_table is strategy.encoded_tables()[0]})
        original(period, user_table, item_table, cold)

    monkeypatch.setattr(strategy.foldin, "fit", spy)
    return strategy, seen


def test_the_gate_is_fitted_on_the_next_period_before_the_inner_update(world, monkeypatch):
    strategy, seen = _spied(world, monkeypatch)
    for k, period in enumerate(world.replayed):
        assert all(entry["period"] < period.index for entry in seen)
        w_served = strategy.foldin.w.clone()
        world.score(strategy, period)
        assert torch.equal(strategy.foldin.w, w_served)           # scoring never fits
        strategy.update(period)
        last = seen[-1]
        assert last["period"] == period.index and len(seen) == k + 1
        np.testing.assert_array_equal(last["users"], period.users)
        np.testing.assert_array_equal(last["items"], period.items)
        # before SML's update on D_{t+1} and before the windows received it, with the served model
        assert last["sml_updates"] == k and last["blocks"] == k + 1 and last["served"]
        assert strategy.foldin.fit_log[-1]["period"] == period.index
    assert not torch.equal(strategy.foldin.w, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))


def test_the_fit_reads_the_period_it_is_given(world):
    period = world.replayed[0]
    shuffled = replace(period, items=np.random.default_rng(0).permutation(period.items))
    weights = []
    for rows in (period, period, shuffled):
        strategy = world.fresh("sml-h")
        strategy.update(rows)
        weights.append(strategy.foldin.w.clone())
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])


def _leaky_contexts(windows, users, items):
    """A context builder that leaks: each row's context ends with the row's own item."""
    contexts, touched, new_windows = foldin_sequence_contexts(windows, users, items)
    return np.concatenate([contexts[:, 1:], np.asarray(items, np.int64)[:, None]], axis=1), touched, new_windows


foldin_sequence_contexts = foldin.sequence_contexts


def _altered_scores(world, name: str, row: int, period, monkeypatch, leak: bool
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of ``period`` and of a copy whose rows >= ``row`` have other items (and rows > ``row``
    other users), from an sml-h updated on the periods before it."""
    n_items, n_users = world.timeline.log.n_items, world.timeline.log.n_users
    index = np.arange(len(period))
    altered = replace(period, items=(period.items + np.where(index >= row, 7, 0)) % n_items,
                      users=np.where(index > row, (period.users + 3) % n_users, period.users))
    candidates = torch.from_numpy(np.random.default_rng(2).integers(0, n_items, (len(period), 15)))
    if leak:
        monkeypatch.setattr(foldin, "sequence_contexts", _leaky_contexts)
    out = []
    for scored in (period, altered):
        strategy = _fresh(world, name)
        for p in world.replayed:
            if p.index == period.index:
                break
            strategy.update(p)
        with torch.no_grad():
            out.append(strategy.score(scored, slice(0, len(period)), candidates))
    return out[0], out[1]


@pytest.mark.parametrize("name", ["sml-h", "sml-h-linear", "fine-tune"])
def test_scores_never_read_the_scored_row_or_a_later_one(world, monkeypatch, name):
    period = world.replayed[-1]
    row = len(period) // 2
    assert (period.users[:row] == period.users[row]).any()     # its user has earlier rows in the period
    honest = _altered_scores(world, name, row, period, monkeypatch, leak=False)
    assert torch.equal(honest[0][: row + 1], honest[1][: row + 1])
    assert not torch.equal(honest[0][row + 1:], honest[1][row + 1:])   # later rows do read earlier ones


@pytest.mark.parametrize("name", ["sml-h", "fine-tune"])
def test_the_leak_check_fails_on_a_leaking_context_builder(world, monkeypatch, name):
    period = world.replayed[-1]
    row = len(period) // 2
    leaky = _altered_scores(world, name, row, period, monkeypatch, leak=True)
    assert not torch.equal(leaky[0][row], leaky[1][row])


HISTORY_AWARE = {"sml-h": ("sml-h", {}), "sml-h-linear": ("sml-h", {"history_map": "linear"}),
                 "fine-tune": ("fine-tune", {"history": "fold-in"}), "spmf": ("spmf", {"history": "fold-in"}),
                 "full-retrain": ("full-retrain", {"history": "fold-in"}),
                 "no-update": ("no-update", {"history": "fold-in"})}


def _fresh(world, label: str):
    """A started strategy (HISTORY_AWARE[label]) with its fast settings and a fold-in."""
    name, overrides = HISTORY_AWARE[label]
    strategy = create_strategy(name, world.context(name), {**fast_overrides(name), **overrides})
    strategy.start(world.timeline.pretrain_data, {k: v.clone() for k, v in world.initial.items()})
    assert strategy.foldin is not None
    return strategy


@pytest.mark.parametrize("name", sorted(HISTORY_AWARE))
def test_served_tables_give_scores_of_a_row_without_in_period_history(world, name):
    """The fast path's product (served user table . item table) equals ``score`` for every row
    that is its user's first row of the period; later rows differ (they add in-period history)."""
    strategy = _fresh(world, name)
    *before, period = world.replayed
    for p in before:
        strategy.update(p)
    cands = torch.from_numpy(world.candidates[period.index].astype(np.int64)).clamp_min(0)
    with torch.no_grad():
        scores = strategy.score(period, slice(0, len(period)), cands)
        users_table, items_table = strategy.served_tables()
        fast = torch.einsum("nd,ncd->nc", users_table[torch.from_numpy(period.users)], items_table[cands])
    users = np.asarray(period.users)
    first = np.zeros(len(users), dtype=bool)
    first[np.unique(users, return_index=True)[1]] = True
    torch.testing.assert_close(scores[first], fast[first], rtol=1e-5, atol=1e-5)
    assert not torch.equal(scores[~first], fast[~first])
    # the baked table is not the plain one: known users' histories were folded in
    assert not torch.allclose(users_table, strategy.encoded_tables()[0])


def test_grown_users_start_without_history(world):
    strategy = world.fresh("sml-h")
    strategy.update(world.replayed[0])
    n_users, n_items = strategy.n_users, strategy.n_items
    before = strategy.served_tables()[0].clone()
    strategy.grow(n_users + 3, n_items + 2)
    assert strategy.foldin.windows.shape == (n_users + 3, strategy.settings.history_length)
    assert (strategy.foldin.windows[n_users:] == PAD).all()
    after = strategy.served_tables()[0]
    torch.testing.assert_close(after[:n_users], before, rtol=1e-6, atol=1e-6)
    cold = strategy.score_new_users(torch.arange(n_items + 2)[None, :])[0]
    torch.testing.assert_close(after[n_users] @ strategy.served_tables()[1].T, cold, rtol=1e-5, atol=1e-5)


def test_fold_in_state_round_trip(world):
    strategy = world.fresh("sml-h")
    strategy.update(world.replayed[0])
    copy = world.fresh("sml-h")
    copy.load_state_dict(strategy.state_dict())
    assert np.array_equal(copy.foldin.windows, strategy.foldin.windows)
    assert torch.equal(copy.foldin.w, strategy.foldin.w)
    for s in (strategy, copy):
        s.update(world.replayed[1])
    assert torch.equal(copy.foldin.w, strategy.foldin.w)
    period = world.replayed[2]
    assert torch.equal(world.score(copy, period), world.score(strategy, period))


def test_fold_in_object_rejects_a_state_of_another_size():
    settings = SMLSettings(history="fold-in")
    small, large = FoldIn(settings, 3, 0, "x"), FoldIn(settings, 4, 0, "x")
    with pytest.raises(ValueError, match="windows"):
        large.load_state(small.state())


def test_retraining_gate_is_fitted_before_the_model_update(world, monkeypatch):
    """Fine-tune with a fold-in: the gate's fit sees D_{t+1} while the model is still the one
    served before it (its trained-user mask has not moved on)."""
    strategy = _fresh(world, "fine-tune")
    seen = []
    original = strategy.foldin.fit

    def spy(period, user_table, item_table, cold):
        seen.append((period.index, strategy.periods_seen, bool(strategy.user_rows.trained[period.users].all())))
        original(period, user_table, item_table, cold)

    monkeypatch.setattr(strategy.foldin, "fit", spy)
    for k, period in enumerate(world.replayed[:3]):
        strategy.update(period)
        assert seen[-1][:2] == (period.index, k)


def test_linear_map_is_fitted_and_kept_in_the_state(world):
    strategy = _fresh(world, "sml-h-linear")
    assert strategy.foldin.map is None                       # identity until the first fit
    strategy.update(world.replayed[0])
    dim = strategy.encoded_tables()[1].shape[1]
    assert strategy.foldin.map.shape == (dim, dim)
    assert not torch.equal(strategy.foldin.map, torch.eye(dim, dtype=torch.float64))
    copy = _fresh(world, "sml-h-linear")
    copy.load_state_dict(strategy.state_dict())
    assert torch.equal(copy.foldin.map, strategy.foldin.map)
    period = world.replayed[1]
    assert torch.equal(world.score(copy, period), world.score(strategy, period))
