"""EASE and iALS (strategies/linear.py): weights, fold-in, the history rule, the refusal."""

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from contract import ContractWorld
from smlrec.errors import ConfigError
from smlrec.strategies import create_strategy, strategy_settings
from smlrec.strategies.linear import (PAD, FoldInput, binary_matrix, ease_row_scores,
                                      ease_row_scores_reference, ease_weights, ease_weights_reference,
                                      fold_in, fold_in_reference)


@pytest.fixture(scope="module")
def world() -> ContractWorld:
    return ContractWorld()


# -- EASE ----------------------------------------------------------------------------------------
def test_ease_two_items_by_hand():
    # users {0,1}, {0}, {0}: X^T X = [[3, 1], [1, 1]]; with l2 = 1, G = [[4, 1], [1, 2]],
    # P = G^-1 = [[2, -1], [-1, 4]] / 7, B_ij = -P_ij / P_jj: B_01 = 1/4, B_10 = 1/2.
    users, items = np.array([0, 0, 1, 2]), np.array([0, 1, 0, 0])
    active, weights = ease_weights(users, items, l2=1.0, dtype="float64")
    assert active.tolist() == [0, 1]
    np.testing.assert_allclose(weights.numpy(), [[0.0, 0.25], [0.5, 0.0]], rtol=0, atol=1e-12)


def test_ease_weights_equal_a_dense_numpy_solve():
    rng = np.random.default_rng(3)
    users = rng.integers(0, 40, 600)
    items = rng.integers(0, 25, 600) * 3           # ids with gaps: only occurring items are kept
    users = np.concatenate([users, users[:50]])    # duplicate rows count once (X is binary)
    items = np.concatenate([items, items[:50]])
    active, expected = ease_weights_reference(users, items, l2=7.0)
    got_active, got64 = ease_weights(users, items, l2=7.0, dtype="float64")
    assert got_active.tolist() == active.tolist()
    np.testing.assert_allclose(got64.numpy(), expected, rtol=0, atol=1e-10)
    _, got32 = ease_weights(users, items, l2=7.0, dtype="float32")
    np.testing.assert_allclose(got32.numpy(), expected, rtol=0, atol=1e-5)
    assert np.all(np.diag(got64.numpy()) == 0.0)


def test_ease_refuses_above_max_items():
    users, items = np.arange(5), np.arange(5)
    with pytest.raises(ConfigError, match=r"holds 5 items, above max_items = 4.*5 x 5.*GiB"):
        ease_weights(users, items, l2=1.0, dtype="float32", max_items=4)
    ease_weights(users, items, l2=1.0, dtype="float32", max_items=5)   # at the limit: fine


def test_ease_refusal_reaches_the_strategy(world):
    strategy = create_strategy("ease", world.context("ease"), {"max_items": 3})
    with pytest.raises(ConfigError, match="max_items = 3"):
        strategy.start(world.timeline.pretrain_data, {})


def test_ease_row_scores_equal_the_slow_twin():
    rng = np.random.default_rng(5)
    users, items = rng.integers(0, 30, 400), rng.integers(0, 40, 400)
    active, weights = ease_weights(users, items, l2=3.0, dtype="float64")
    item_index = np.full(50, -1)
    item_index[active] = np.arange(len(active))
    contexts = rng.integers(0, 50, (64, 6))        # ids 40..49: not in the weights
    contexts[rng.random(contexts.shape) < 0.3] = PAD
    contexts[0] = PAD                              # no history at all
    contexts[1] = [PAD, PAD, 41, 45, 49, PAD]      # only unknown items: cold too
    candidates = rng.integers(0, 50, (64, 9))
    scores, cold = ease_row_scores(weights, item_index, contexts, torch.from_numpy(candidates), cells=100)
    expected = ease_row_scores_reference(weights.numpy(), active, contexts, candidates)
    assert cold.numpy().tolist() == np.isnan(expected[:, 0]).tolist()
    assert cold[0] and cold[1]
    np.testing.assert_allclose(scores.numpy()[~cold.numpy()], expected[~cold.numpy()], rtol=0, atol=1e-5)


# -- iALS fold-in --------------------------------------------------------------------------------
def _fold_world(seed: int = 0):
    rng = np.random.default_rng(seed)
    n_users, n_items, f = 12, 30, 5
    w_users, w_items = rng.integers(0, 9, 80), rng.integers(0, 25, 80)   # users 9..11: cold
    window = binary_matrix(w_users, w_items, (n_users, n_items))
    factors = rng.normal(size=(n_items, f)).astype(np.float32)
    factors[25:] = 0.0                                                  # items never learned
    data = FoldInput(window, factors, regularization=0.3, alpha=4.0)
    users, items = rng.integers(0, n_users, 70), rng.integers(0, n_items, 70)
    return data, users, items


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_fold_in_equals_the_slow_twin(chunk):
    data, users, items = _fold_world()
    rows, vectors = fold_in(data, users, items, chunk=chunk)
    expected = fold_in_reference(data, users, items)
    assert sorted(rows.tolist()) == sorted(expected)
    assert len(rows) > 20
    for row, vector in zip(rows, vectors):
        np.testing.assert_allclose(vector, expected[int(row)], rtol=0, atol=1e-8)


def test_fold_in_equals_implicits_recalculate_user():
    from implicit.cpu.als import AlternatingLeastSquares

    data, users, items = _fold_world(1)
    rows, vectors = fold_in(data, users, items)
    model = AlternatingLeastSquares(factors=5, regularization=data.regularization, alpha=data.alpha,
                                    num_threads=1)
    model.item_factors = data.item_factors
    for row, vector in zip(rows, vectors):
        earlier = items[:row][users[:row] == users[row]]
        history = np.union1d(data.window[users[row]].indices, earlier)   # distinct items before row
        user_items = sp.csr_matrix((np.ones(len(history), np.float32), (np.zeros(len(history), int), history)),
                                   shape=(1, data.item_factors.shape[0]))
        refit = model.recalculate_user(0, user_items)
        np.testing.assert_allclose(vector, refit, rtol=1e-3, atol=1e-4)   # implicit solves in float32


def test_fold_in_is_the_least_squares_minimiser():
    # A full refit of the user's row with the item factors fixed: the gradient of implicit's loss
    # sum_i c_i (p_i - x.y_i)^2 + reg |x|^2 vanishes at the folded-in vector.
    data, users, items = _fold_world(2)
    rows, vectors = fold_in(data, users, items)
    y = data.item_factors.astype(np.float64)
    row, x = int(rows[-1]), vectors[-1]
    history = np.union1d(data.window[users[row]].indices, items[:row][users[:row] == users[row]])
    p = np.zeros(len(y))
    p[history] = 1.0
    c = np.where(p > 0, data.alpha, 1.0)
    gradient = -2 * (c * (p - y @ x)) @ y + 2 * data.regularization * x
    np.testing.assert_allclose(gradient, 0.0, atol=1e-8)


# -- the history rule ----------------------------------------------------------------------------
def _scores_after_offline(world: ContractWorld, name: str, period) -> torch.Tensor:
    strategy = create_strategy(name, world.context(name))
    strategy.start(world.timeline.pretrain_data, {})
    for offline in world.replayed[:2]:
        strategy.update(offline)
    return world.score(strategy, period)


@pytest.mark.parametrize("name", ["ease", "ials"])
def test_history_never_reads_the_scored_row_or_later(world, name):
    period = world.replayed[2]
    base = _scores_after_offline(world, name, period)
    n = len(period)
    changed_later = False
    for r in (n // 4, n // 2, n - 3):
        altered_items = period.items.copy()
        altered_items[r:] = (altered_items[r:] + 1 + np.arange(n - r)) % world.timeline.log.n_items
        altered = replace(period, items=altered_items)
        scores = _scores_after_offline(world, name, altered)
        torch.testing.assert_close(scores[: r + 1], base[: r + 1], rtol=0, atol=0)
        changed_later |= not torch.equal(scores[r + 1:], base[r + 1:])
    assert changed_later        # the earlier rows of the period are read (the test has teeth)


def test_defaults_are_valid_and_checked():
    assert strategy_settings("ease").history >= 1
    with pytest.raises(ConfigError, match="l2"):
        strategy_settings("ease", {"l2": 0})
    with pytest.raises(ConfigError, match="alpha"):
        strategy_settings("ials", {"alpha": -1})
    with pytest.raises(ConfigError, match="dtype"):
        strategy_settings("ease", {"dtype": "float16"})


def test_ials_window_keeps_only_recent_periods(world):
    strategy = create_strategy("ials", world.context("ials"), {"window": 1, "iterations": 2})
    strategy.start(world.timeline.pretrain_data, {})
    period = world.replayed[0]
    strategy.update(period)
    assert np.array_equal(strategy.rows_users, period.users)
    assert set(strategy.rows_block.tolist()) == {1}


@pytest.mark.parametrize("name", ["ease", "ials"])
def test_production_scores_a_repeated_user_once(tmp_path, name):
    # A serving query is not an interaction: the same user twice in one request gets the same
    # scores twice, never a history that holds the first request's placeholder row.
    from _production_data import synthetic_log, tiny_settings, write_periods
    from smlrec.production import Recommender, init_registry

    history, _ = write_periods(synthetic_log(6), tmp_path / "data", 4)
    init_registry(history, tmp_path / "reg", name, tiny_settings(name, 4))
    served = Recommender.from_registry(tmp_path / "reg")
    users = np.arange(min(6, served.checkpoint.n_users))
    alone = served.scores(users)
    twice = served.scores(np.concatenate([users, users]))
    torch.testing.assert_close(twice[: len(users)], alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(twice[len(users):], alone, rtol=0, atol=1e-6)
