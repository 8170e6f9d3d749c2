"""Neighbour strategies (itemknn, sknn) and no-update: hand-checked values, no leakage, slow twins."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from smlrec.config import MFSettings
from smlrec.data.log import InteractionLog
from smlrec.data.periods import Plan, build_timeline, concat_periods
from smlrec.errors import ConfigError
from smlrec.strategies import StrategyContext, create_strategy, neighbours
from smlrec.strategies.neighbours import (asymmetric_cosine, asymmetric_cosine_reference,
                                          itemknn_scores_reference, sknn_scores_reference)
from smlrec.strategies.sequential import PAD, sequence_contexts_reference

from helpers import T0, TINY_MF, tiny_timeline

# Pretrain block (period 0): u0 {0, 1, 2}, u1 {0, 1}, u2 {1, 3}; period 1 (scored): u1 takes 2,
# then 3; u3 (never seen) takes 0. Raw ids are given in first-appearance order, so index = raw id.
PRETRAIN = [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (2, 1), (2, 3)]
SCORED = [(1, 2), (1, 3), (3, 0)]


def hand_timeline():
    rows = PRETRAIN + SCORED
    log = InteractionLog.from_arrays([u for u, _ in rows], [i for _, i in rows],
                                     T0 + np.arange(len(rows)) * 60)
    return build_timeline(log, np.array([0, len(PRETRAIN), len(rows)]), Plan(1, 0, 0, 1))


def started(name, timeline, pretrain=1, **settings):
    log = timeline.log
    context = StrategyContext(log.n_users, log.n_items, MFSettings(dim=8), seed=3, name=name)
    strategy = create_strategy(name, context, settings)
    strategy.start(concat_periods(timeline.periods[:pretrain]), {})
    return strategy


# -- itemknn by hand ------------------------------------------------------------------------
def test_asymmetric_cosine_by_hand():
    users, items = np.array([u for u, _ in PRETRAIN]), np.array([i for _, i in PRETRAIN])
    # alpha = 1: sim(i, j) = c_ij / (c_i + shrink); counts c = [2, 3, 1, 1]
    sim = asymmetric_cosine(users, items, 3, 4, alpha=1.0, shrink=1.0, neighbours=10).toarray()
    expected = np.array([[0, 2 / 3, 1 / 3, 0],
                         [2 / 4, 0, 1 / 4, 1 / 4],
                         [1 / 2, 1 / 2, 0, 0],
                         [0, 1 / 2, 0, 0]])
    np.testing.assert_allclose(sim, expected, rtol=0, atol=1e-12)
    # alpha = 0: sim(i, j) = c_ij / (c_j + shrink), the transpose's pattern
    sim0 = asymmetric_cosine(users, items, 3, 4, alpha=0.0, shrink=1.0, neighbours=10).toarray()
    np.testing.assert_allclose(sim0, expected.T, rtol=0, atol=1e-12)
    # alpha = .5, no shrink: the plain cosine c_ij / sqrt(c_i c_j)
    cos = asymmetric_cosine(users, items, 3, 4, alpha=0.5, shrink=0.0, neighbours=10).toarray()
    assert cos[0, 1] == pytest.approx(2 / np.sqrt(6)) and cos[1, 3] == pytest.approx(1 / np.sqrt(3))


def test_a_pair_given_twice_counts_once():
    users, items = np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1])
    sim = asymmetric_cosine(users, items, 2, 2, alpha=1.0, shrink=0.0, neighbours=5).toarray()
    assert sim[0, 1] == pytest.approx(1.0) and sim[1, 0] == pytest.approx(0.5)


def test_top_k_keeps_the_most_similar_and_breaks_ties_to_the_lower_item():
    users, items = np.array([u for u, _ in PRETRAIN]), np.array([i for _, i in PRETRAIN])
    sim = asymmetric_cosine(users, items, 3, 4, alpha=1.0, shrink=1.0, neighbours=1).toarray()
    expected = np.zeros((4, 4))
    expected[0, 1], expected[1, 0], expected[3, 1] = 2 / 3, 1 / 2, 1 / 2
    expected[2, 0] = 1 / 2            # items 0 and 1 tie at 1/2 for item 2: the lower one stays
    np.testing.assert_allclose(sim, expected, rtol=0, atol=1e-12)


def test_itemknn_scores_by_hand_with_recency_and_history_of_the_scored_period():
    timeline = hand_timeline()
    strategy = started("itemknn", timeline, alpha=1.0, shrink=1.0, history=3, recency=0.5)
    scored = timeline.periods[1]
    candidates = torch.tensor([[2, 3, 0, 1], [3, 0, 1, 2], [0, 1, 2, 3]])
    scores = strategy.score(scored, slice(0, 3), candidates).numpy()
    # row 0: u1's history [0, 1] weighs 0.5, 1 -> 0.5 sim(0, c) + sim(1, c)
    np.testing.assert_allclose(scores[0], [5 / 12, 1 / 4, 1 / 2, 1 / 3], rtol=1e-6)
    # row 1: [0, 1, 2], row 0's item included, weighs .25, .5, 1
    np.testing.assert_allclose(scores[1], [1 / 8, 3 / 4, 2 / 3, 5 / 24], rtol=1e-6)
    # row 2: u3 has no history: the popularity floor (the pretrain block counted once)
    np.testing.assert_array_equal(scores[2], [2, 3, 1, 1])
    np.testing.assert_array_equal(strategy.score_new_users(candidates[2:]).numpy()[0], [2, 3, 1, 1])


def test_itemknn_window_keeps_the_last_periods_only():
    timeline = tiny_timeline(Plan(2, 2, 1, 1), n_rows=400, seed=5)
    strategy = started("itemknn", timeline, pretrain=2, window=1, alpha=0.3, shrink=2.0, neighbours=4)
    for period in timeline.periods[2:4]:
        strategy.update(period)
    last = timeline.periods[3]
    expected = asymmetric_cosine_reference(last.users, last.items, timeline.log.n_items, 0.3, 2.0, 4)
    np.testing.assert_allclose(strategy.similarity.toarray(), expected, rtol=0, atol=1e-12)
    everything = started("itemknn", timeline, pretrain=2, window=0, alpha=0.3, shrink=2.0, neighbours=4)
    for period in timeline.periods[2:4]:
        everything.update(period)
    seen = concat_periods(timeline.periods[:4])
    expected = asymmetric_cosine_reference(seen.users, seen.items, timeline.log.n_items, 0.3, 2.0, 4)
    np.testing.assert_allclose(everything.similarity.toarray(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("product", ["sparse x dense", "sparse x sparse"])
@pytest.mark.parametrize("trial", range(3))
def test_asymmetric_cosine_equals_its_slow_twin(trial, product, monkeypatch):
    monkeypatch.setattr(neighbours, "SPARSE_PRODUCT_COST", 0.0 if product == "sparse x dense" else 1e12)
    rng = np.random.default_rng(trial)
    users, items = rng.integers(0, 25, 250), rng.integers(0, 20, 250)
    alpha, shrink, k = [(0.5, 0.0, 20), (0.2, 3.0, 3), (0.9, 0.5, 1)][trial]
    fast = asymmetric_cosine(users, items, 25, 20, alpha, shrink, k, block_elements=60).toarray()
    np.testing.assert_allclose(fast, asymmetric_cosine_reference(users, items, 20, alpha, shrink, k),
                               rtol=0, atol=1e-12)


def test_itemknn_scorer_equals_its_slow_twin():
    timeline = tiny_timeline(Plan(2, 1, 1, 2), n_rows=400, seed=6)
    strategy = started("itemknn", timeline, pretrain=2, history=4, recency=0.7, neighbours=5, shrink=1.0)
    strategy.update(timeline.periods[2])
    period = timeline.periods[3]
    candidates = torch.from_numpy(np.random.default_rng(0).integers(0, timeline.log.n_items, (len(period), 12)))
    fast = strategy.score(period, slice(0, len(period)), candidates).numpy()
    seen = concat_periods(timeline.periods[:3])
    contexts = sequence_contexts_reference(_windows_after(seen, timeline.log.n_users, 4), period.users,
                                           period.items)
    slow = itemknn_scores_reference(strategy.similarity.toarray(), contexts, candidates.numpy(), 0.7)
    warm = contexts[:, -1] != PAD
    assert warm.sum() > 10          # (rows without history: the hand-built test)
    np.testing.assert_allclose(fast[warm], slow[warm], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(fast[~warm], strategy.counts[candidates.numpy()[~warm]].astype(np.float32))


def _windows_after(rows, n_users: int, width: int) -> np.ndarray:
    """Each user's last ``width`` items of ``rows``, right-aligned (a plain loop)."""
    windows = np.full((n_users, width), PAD, dtype=np.int64)
    for user, item in zip(rows.users, rows.items):
        windows[user] = np.concatenate([windows[user][1:], [item]])
    return windows


# -- sknn ------------------------------------------------------------------------------------
def test_sknn_scores_by_hand():
    timeline = hand_timeline()
    scored = timeline.periods[1]
    candidates = torch.tensor([[2, 3, 0, 1]])
    sim_u0 = 1.5 / (np.sqrt(1.25) * np.sqrt(3))     # query {0: .5, 1: 1} . u0's {0, 1, 2}
    sim_u2 = 1.0 / (np.sqrt(1.25) * np.sqrt(2))     # . u2's {1, 3}; u1's own session is skipped
    every = started("sknn", timeline, history=3, recency=0.5, neighbours=5)
    np.testing.assert_allclose(every.score(scored, slice(0, 1), candidates).numpy()[0],
                               [sim_u0, sim_u2, sim_u0, sim_u0 + sim_u2], rtol=1e-6)
    nearest = started("sknn", timeline, history=3, recency=0.5, neighbours=1)     # u0 only
    np.testing.assert_allclose(nearest.score(scored, slice(0, 1), candidates).numpy()[0],
                               [sim_u0, 0, sim_u0, sim_u0], rtol=1e-6)
    # sample = 1: only the most recently active user's session (u2, the last pretrain row)
    recent = started("sknn", timeline, history=3, recency=0.5, sample=1)
    np.testing.assert_allclose(recent.score(scored, slice(0, 1), candidates).numpy()[0],
                               [0, sim_u2, 0, sim_u2], rtol=1e-6)


def test_sknn_scorer_equals_its_slow_twin():
    timeline = tiny_timeline(Plan(2, 1, 1, 2), n_rows=400, seed=8)
    n_users = timeline.log.n_users
    strategy = started("sknn", timeline, pretrain=2, history=5, recency=0.8, neighbours=4, sample=12)
    strategy.update(timeline.periods[2])
    period = timeline.periods[3]
    candidates = np.random.default_rng(1).integers(0, timeline.log.n_items, (len(period), 10))
    fast = strategy.score(period, slice(0, len(period)), torch.from_numpy(candidates)).numpy()
    seen = concat_periods(timeline.periods[:3])
    windows = _windows_after(seen, n_users, 5)
    last_row = {int(u): r for r, u in enumerate(seen.users)}
    sample = sorted(sorted(last_row, key=lambda u: -last_row[u])[:12])
    sessions = [{int(i) for i in windows[u] if i != PAD} for u in sample]
    contexts = sequence_contexts_reference(windows, period.users, period.items)
    histories = [[int(i) for i in row if i != PAD] for row in contexts]
    weights = [[0.8 ** (len(h) - 1 - k) for k in range(len(h))] for h in histories]
    slow = sknn_scores_reference(histories, weights, sessions, sample, [int(u) for u in period.users], 4,
                                 candidates)
    warm = contexts[:, -1] != PAD
    assert warm.sum() > 10 and fast[warm].max() > 0
    np.testing.assert_allclose(fast[warm], slow[warm], rtol=1e-6, atol=1e-7)


# -- the history never includes the scored row or a later one (sml-method.md section 6) -----
def _leaky_contexts(windows, users, items):
    """A deliberately leaking context builder: each row's context ends with the row's own item."""
    contexts, touched, new_windows = _honest(windows, users, items)
    leaked = np.concatenate([contexts[:, 1:], np.asarray(items, np.int64)[:, None]], axis=1)
    return leaked, touched, new_windows


_honest = neighbours.sequence_contexts


def _changes_before_or_at(name: str, row: int) -> bool:
    """Whether altering rows >= ``row`` of the scored period changes the scores of rows <= ``row``."""
    timeline = tiny_timeline(Plan(2, 1, 1, 2), n_rows=400, seed=9)
    n_items = timeline.log.n_items
    period = timeline.periods[3]
    altered = replace(period, items=(period.items + np.where(np.arange(len(period)) >= row, 7, 0)) % n_items)
    candidates = torch.from_numpy(np.random.default_rng(2).integers(0, n_items, (len(period), 15)))
    scores = []
    for scored in (period, altered):
        strategy = started(name, timeline, pretrain=2, history=6)
        strategy.update(timeline.periods[2])
        scores.append(strategy.score(scored, slice(0, len(period)), candidates))
    return not torch.equal(scores[0][: row + 1], scores[1][: row + 1])


@pytest.mark.parametrize("name", ["itemknn", "sknn"])
def test_scores_never_read_the_scored_row_or_a_later_one(name, monkeypatch):
    timeline = tiny_timeline(Plan(2, 1, 1, 2), n_rows=400, seed=9)
    period = timeline.periods[3]
    row = len(period) // 2
    assert (period.users[:row] == period.users[row]).any()     # its user has earlier rows in the period
    assert not _changes_before_or_at(name, row)
    monkeypatch.setattr(neighbours, "sequence_contexts", _leaky_contexts)
    assert _changes_before_or_at(name, row)                      # the check catches a leak


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="alpha"):
        neighbours.ItemKNNSettings(alpha=1.5)
    with pytest.raises(ConfigError, match="window"):
        neighbours.ItemKNNSettings(window=-1)
    with pytest.raises(ConfigError, match="recency"):
        neighbours.SKNNSettings(recency=0.0)


def test_growth_keeps_scores_and_gives_new_ids_empty_rows():
    timeline = tiny_timeline(Plan(2, 1, 1, 2), n_rows=400, seed=6)
    for name in ("itemknn", "sknn"):
        strategy = started(name, timeline, pretrain=2)
        period = timeline.periods[2]
        candidates = torch.from_numpy(np.random.default_rng(0).integers(0, timeline.log.n_items, (len(period), 8)))
        before = strategy.score(period, slice(0, len(period)), candidates)
        strategy.grow(timeline.log.n_users + 3, timeline.log.n_items + 2)
        after = strategy.score(period, slice(0, len(period)), candidates)
        torch.testing.assert_close(before, after, rtol=0, atol=0)
        new = torch.tensor([[timeline.log.n_items + 1, 0]])
        assert strategy.score_new_users(new)[0, 0] == 0
        assert (strategy.windows[-3:] == PAD).all()


# -- no-update ------------------------------------------------------------------------------
def _no_update(timeline, offline):
    log = timeline.log
    context = StrategyContext(log.n_users, log.n_items, TINY_MF, seed=3, name="no-update",
                              offline_periods=offline)
    strategy = create_strategy("no-update", context, {"epochs": 1})
    from smlrec.strategies.pretrain import pretrain_mf
    initial, _ = pretrain_mf(timeline.pretrain_data, log.n_users, log.n_items, TINY_MF, epochs=1, seed=3)
    strategy.start(timeline.pretrain_data, initial)
    return strategy


def test_no_update_trains_through_the_offline_periods_then_freezes():
    timeline = tiny_timeline(Plan(2, 2, 1, 1), n_rows=400, seed=5)
    strategy = _no_update(timeline, offline=2)
    tables = [strategy.model.user.weight.detach().clone()]
    for period in timeline.periods[2:]:
        strategy.update(period)
        tables.append(strategy.model.user.weight.detach().clone())
    assert not torch.equal(tables[0], tables[1]) and not torch.equal(tables[1], tables[2])   # offline
    assert torch.equal(tables[2], tables[3]) and torch.equal(tables[3], tables[4])           # frozen
    assert strategy.frozen


def test_no_update_without_a_plan_freezes_when_first_scored():
    timeline = tiny_timeline(Plan(2, 2, 1, 1), n_rows=400, seed=5)
    strategy = _no_update(timeline, offline=None)
    strategy.update(timeline.periods[2])
    period = timeline.periods[3]
    candidates = torch.zeros((len(period), 3), dtype=torch.int64)
    strategy.score(period, slice(0, len(period)), candidates)
    before = strategy.model.user.weight.detach().clone()
    strategy.update(period)
    assert torch.equal(before, strategy.model.user.weight.detach())


def test_production_serves_a_repeated_user_as_if_asked_once(tmp_path):
    from _production_data import synthetic_log, tiny_settings, write_periods
    from smlrec.production import Recommender, init_registry

    history, _ = write_periods(synthetic_log(6), tmp_path / "data", 4)
    init_registry(history, tmp_path / "reg", "itemknn", tiny_settings("itemknn", 4))
    served = Recommender.from_registry(tmp_path / "reg")
    scores = served.generic_scores(np.array([3, 1, 3, 3]))
    alone = served.generic_scores(np.array([3]))[0]
    # the query's placeholder items are not history: every row of user 3 is scored as if asked once
    for row in (0, 2, 3):
        torch.testing.assert_close(scores[row], alone, rtol=0, atol=0)
    assert not torch.equal(scores[1], alone)


def repeating_timeline(n_periods: int = 6, rows: int = 60, seed: int = 0):
    """Few users and items, so pairs repeat inside a period and across periods."""
    rng = np.random.default_rng(seed)
    n = n_periods * rows
    users, items = rng.integers(0, 15, n), rng.integers(0, 12, n)
    users[:15], items[:12] = np.arange(15), np.arange(12)       # every id appears (index = raw id)
    log = InteractionLog.from_arrays(users, items, T0 + np.arange(n) * 60)
    return build_timeline(log, np.arange(0, n + 1, rows), Plan(1, 1, 1, n_periods - 3))


@pytest.mark.parametrize("window", [0, 1, 2])
def test_incremental_cooccurrence_equals_a_full_rebuild_after_every_period(window):
    timeline = repeating_timeline()
    log = timeline.log
    strategy = started("itemknn", timeline, window=window, alpha=0.6, shrink=0.5, neighbours=3)
    repeats = 0
    for period in timeline.periods[1:]:
        keys = period.users.astype(np.int64) * log.n_items + period.items
        repeats += len(keys) - len(np.unique(keys))
        strategy.update(period)
        inside = strategy.inside()
        users, items = strategy.pair_users[inside], strategy.pair_items[inside]
        # the window's pairs are exactly the distinct pairs of its periods
        recent = concat_periods(timeline.periods[max(0, period.index + 1 - window) if window else 0:
                                                  period.index + 1])
        expected_keys = np.unique(recent.users.astype(np.int64) * log.n_items + recent.items)
        np.testing.assert_array_equal(users * log.n_items + items, expected_keys)
        x = np.zeros((log.n_users, log.n_items))
        x[users, items] = 1.0
        np.testing.assert_array_equal(strategy.cooc.toarray(), x.T @ x)          # exact integers
        np.testing.assert_array_equal(strategy.similarity.toarray(), strategy._fit_full().toarray())
        np.testing.assert_allclose(strategy.similarity.toarray(),
                                   asymmetric_cosine_reference(users, items, log.n_items, 0.6, 0.5, 3),
                                   rtol=0, atol=1e-12)
    assert repeats > 0 and len(timeline.periods) == 6


def test_a_loaded_itemknn_rebuilds_the_same_counts():
    timeline = repeating_timeline(seed=1)
    first = started("itemknn", timeline, window=2)
    for period in timeline.periods[1:4]:
        first.update(period)
    second = started("itemknn", timeline, window=2)
    second._load_state(first._state())
    for strategy in (first, second):
        strategy.update(timeline.periods[4])
    np.testing.assert_array_equal(second.cooc.toarray(), first.cooc.toarray())
    np.testing.assert_array_equal(second.similarity.toarray(), first.similarity.toarray())


@pytest.mark.parametrize("k", [1, 2, 5, 40])
def test_top_per_csr_row_equals_the_dense_rule(k):
    rng = np.random.default_rng(k)
    dense = rng.integers(0, 4, (30, 25)).astype(np.float64) * (rng.random((30, 25)) < 0.6)   # many ties
    dense[3] = 0.0
    fast = neighbours.top_per_csr_row(sp.csr_matrix(dense), k, block_elements=50).toarray()
    np.testing.assert_array_equal(fast, np.where(neighbours.top_per_dense_row(dense, k), dense, 0.0))


LIMIT_CROSSED = 500        # window products per period: 494, 454, 531, 452, 589


@pytest.mark.parametrize("limit", [0, LIMIT_CROSSED])
def test_itemknn_without_kept_counts_gives_the_same_similarity(limit, monkeypatch):
    """Above COOCCURRENCE_MAX_PRODUCTS the counts are not kept and the similarity is rebuilt block
    by block (limit 0: always; 2,000: the window crosses the limit during the replay)."""
    timeline = repeating_timeline(seed=2)
    kept = started("itemknn", timeline, window=2, alpha=0.4, shrink=1.0, neighbours=4)
    monkeypatch.setattr(neighbours, "COOCCURRENCE_MAX_PRODUCTS", limit)
    rebuilt = started("itemknn", timeline, window=2, alpha=0.4, shrink=1.0, neighbours=4)
    modes = set()
    for period in timeline.periods[1:]:
        monkeypatch.setattr(neighbours, "COOCCURRENCE_MAX_PRODUCTS", 10 ** 12)
        kept.update(period)
        monkeypatch.setattr(neighbours, "COOCCURRENCE_MAX_PRODUCTS", limit)
        rebuilt.update(period)
        modes.add(rebuilt.cooc is None)
        np.testing.assert_array_equal(rebuilt.similarity.toarray(), kept.similarity.toarray())
    assert kept.cooc is not None and modes == ({True} if limit == 0 else {True, False})


@pytest.mark.parametrize("block_products", [1, 50, 10 ** 9])
def test_asymmetric_cosine_sparse_equals_the_dense_blocks(block_products):
    rng = np.random.default_rng(block_products)
    users, items = rng.integers(0, 25, 300), rng.integers(0, 30, 300)
    fast = neighbours.asymmetric_cosine_sparse(users, items, 25, 30, 0.7, 0.0, 3, block_products=block_products)
    np.testing.assert_array_equal(fast.toarray(), asymmetric_cosine(users, items, 25, 30, 0.7, 0.0, 3).toarray())
