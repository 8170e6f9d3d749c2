"""Negative sampling and test candidates against slow Python references (sml-method.md 1.5-1.6)."""

from __future__ import annotations

import signal

import numpy as np
import pytest

from smlrec.data import sampling
from smlrec.data.log import InteractionLog
from smlrec.data.pairs import PairIndex
from smlrec.data.sampling import (PrefixNegativeSampler, SetNegativeSampler, sample_candidates,
                                  sample_prefix_negatives)

from helpers import tiny_log


def _history_sets(log: InteractionLog) -> list[set]:
    """histories[g] = the items of row g's user in rows 0..g (slow reference)."""
    per_user: dict[int, set] = {}
    out = []
    for u, i in zip(log.user_idx.tolist(), log.item_idx.tolist()):
        per_user.setdefault(u, set()).add(i)
        out.append(set(per_user[u]))
    return out


@pytest.fixture(scope="module")
def log() -> InteractionLog:
    return tiny_log(n_rows=300, n_users=12, n_items=60, seed=3)


def test_pair_index_contains_matches_reference(log):
    index = PairIndex.from_log(log.user_idx, log.item_idx)
    rng = np.random.default_rng(0)
    users = rng.integers(0, log.n_users, 2000)
    items = rng.integers(0, log.n_items + 3, 2000)  # includes items beyond the table
    positions = rng.integers(0, len(log), 2000)
    first: dict[tuple[int, int], int] = {}
    for g, (u, i) in enumerate(zip(log.user_idx.tolist(), log.item_idx.tolist())):
        first.setdefault((u, i), g)
    expect_at = [first.get((u, i), 10**9) <= p for u, i, p in zip(users, items, positions)]
    expect_any = [(u, i) in first for u, i in zip(users, items)]
    assert index.contains(users, items, positions).tolist() == expect_at
    assert index.contains(users, items).tolist() == expect_any
    assert sum(expect_at) > 50 and sum(expect_any) > sum(expect_at)  # the check is not vacuous


def test_pair_index_empty_and_from_pairs():
    empty = PairIndex.from_pairs(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    assert len(empty) == 0
    assert empty.contains(np.array([0, 1]), np.array([0, 1])).tolist() == [False, False]
    pairs = PairIndex.from_pairs(np.array([2, 2, 0]), np.array([5, 5, 1]))
    assert len(pairs) == 2
    assert pairs.contains(np.array([2, 0, 0, 5]), np.array([5, 1, 5, 2])).tolist() == \
        [True, True, False, False]


def test_history_counts_matches_reference(log):
    index = PairIndex.from_log(log.user_idx, log.item_idx)
    rng = np.random.default_rng(1)
    users = rng.integers(0, log.n_users, 1000)
    positions = rng.integers(0, len(log), 1000)
    expect = [len({i for u2, i in zip(log.user_idx[: p + 1].tolist(), log.item_idx[: p + 1].tolist())
                   if u2 == u}) for u, p in zip(users, positions)]
    assert index.history_counts(users, positions).tolist() == expect
    # at each row's own position, the row's item is part of the history
    rows = np.arange(len(log))
    own = index.history_counts(log.user_idx, rows)
    assert own.tolist() == [len(h) for h in _history_sets(log)]


def _eligible(log, histories, g) -> set:
    return set(range(int(log.items_seen[g]))) - histories[g]


def test_prefix_negatives_never_in_history_or_unseen(log):
    index = PairIndex.from_log(log.user_idx, log.item_idx)
    histories = _history_sets(log)
    rows = np.array([g for g in range(len(log))
                     if len(_eligible(log, histories, g)) >= 0.25 * log.items_seen[g]])
    assert len(rows) > 200
    sampler = PrefixNegativeSampler(log.user_idx[rows], rows, log.items_seen[rows], index)
    for seed in range(5):
        negatives = sampler(np.random.default_rng(seed))
        for g, item in zip(rows.tolist(), negatives.tolist()):
            assert 0 <= item < log.items_seen[g]
            assert item not in histories[g]


def test_prefix_negatives_exclude_history_at_the_row_not_later():
    # user 0 sees items 0,1,2 at rows 0..2 and item 3 at row 5; rows 3,4 are user 1 on items 3,4.
    users = np.array([0, 0, 0, 1, 1, 0])
    items = np.array([0, 1, 2, 3, 4, 3])
    index = PairIndex.from_log(users, items)
    items_seen = np.maximum.accumulate(items) + 1
    # at row 4, user 0's pool is {3, 4} (item 3 is only his at row 5)
    draws = sample_prefix_negatives(np.full(400, 0), np.full(400, 4), np.full(400, items_seen[4]),
                                    index, np.random.default_rng(0))
    assert set(draws.tolist()) == {3, 4}


def test_set_negatives_never_in_the_users_set_items(log):
    users, items = log.user_idx[:150], log.item_idx[:150]
    sampler = SetNegativeSampler(users, items)
    pool = set(items.tolist())
    own = {u: set(items[users == u].tolist()) for u in set(users.tolist())}
    for seed in range(5):
        negatives = sampler(np.random.default_rng(seed))
        for u, item in zip(users.tolist(), negatives.tolist()):
            if len(pool - own[u]) >= 0.25 * len(pool):
                assert item in pool and item not in own[u]


# ---------------------------------------------------------------------------------------------
# Test candidates

def _candidate_setup(log):
    index = PairIndex.from_log(log.user_idx, log.item_idx)
    rows = np.arange(len(log))
    return index, rows


def _check_candidates(log, index, rows, cands, n_negatives):
    histories = _history_sets(log)
    assert cands.shape == (len(rows), n_negatives + 1) and cands.dtype == np.int32
    assert cands[:, 0].tolist() == log.item_idx[rows].tolist()
    short_rows = 0
    for k, g in enumerate(rows.tolist()):
        negs = cands[k, 1:]
        valid = negs[negs >= 0].tolist()
        eligible = _eligible(log, histories, g)
        assert len(set(valid)) == len(valid), "negatives repeat"
        assert set(valid) <= eligible, "negative in history or unseen"
        assert len(valid) == min(n_negatives, len(eligible))
        # padding only at the end
        assert (negs[len(valid):] == -1).all()
        if len(eligible) < n_negatives:
            short_rows += 1
            assert set(valid) == eligible
    return short_rows


def test_candidates_both_paths(log):
    index, rows = _candidate_setup(log)
    n_negatives = 10  # pools above 20 eligible items use rejection, others enumeration
    cands = sample_candidates(log.user_idx, log.item_idx, rows, log.items_seen, index, n_negatives,
                              np.random.default_rng(7))
    eligible = log.items_seen - index.history_counts(log.user_idx, rows)
    assert (eligible > 2 * n_negatives).sum() > 50 and (eligible <= 2 * n_negatives).sum() > 20
    short = _check_candidates(log, index, rows, cands, n_negatives)
    assert short > 0  # some rows have fewer eligible items than negatives (padding was tested)


def test_candidates_padded_when_pool_is_small(log):
    index, rows = _candidate_setup(log)
    cands = sample_candidates(log.user_idx, log.item_idx, rows, log.items_seen, index, 999,
                              np.random.default_rng(7))
    _check_candidates(log, index, rows, cands, 999)
    assert (cands[:, 1:] == -1).any(axis=1).all()  # 60 items < 999: every row is padded


def test_candidates_deterministic_per_seed(log):
    index, rows = _candidate_setup(log)

    def draw(seed):
        return sample_candidates(log.user_idx, log.item_idx, rows, log.items_seen, index, 10,
                                 np.random.default_rng(seed))

    np.testing.assert_array_equal(draw(11), draw(11))
    assert (draw(11) != draw(12)).any()


def test_candidates_chunking_does_not_change_validity(log):
    index, rows = _candidate_setup(log)
    cands = sample_candidates(log.user_idx, log.item_idx, rows, log.items_seen, index, 10,
                              np.random.default_rng(3), chunk_elements=64)
    _check_candidates(log, index, rows, cands, 10)


def test_candidates_empty_input():
    index = PairIndex.from_log(np.array([0]), np.array([0]))
    out = sample_candidates(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64),
                            np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), index, 5,
                            np.random.default_rng(0))
    assert out.shape == (0, 6)


def _heavy_user_log(n_items: int, history: int):
    """User 0 has items 0..history-1; user 1 then brings the rest of the items."""
    users = np.concatenate([np.zeros(history, dtype=np.int64), np.ones(n_items - history, dtype=np.int64)])
    items = np.arange(n_items, dtype=np.int64)
    return users, items, PairIndex.from_log(users, items)


def _chi_square(counts: np.ndarray) -> float:
    expected = counts.mean()
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("path", ["enumeration", "rejection"])
def test_candidate_paths_are_uniform(path):
    # One query: user 0 at the last row; eligible = items 30..69 (40 items), 10 negatives each.
    n_items, history, n_negatives, copies = 70, 30, 10, 3000
    _, _, index = _heavy_user_log(n_items, history)
    users = np.zeros(copies, dtype=np.int64)
    positions = np.full(copies, n_items - 1)
    sizes = np.full(copies, n_items)
    out = np.full((copies, n_negatives + 1), -1, dtype=np.int32)
    rows = np.arange(copies)
    rng = np.random.default_rng(2020)
    if path == "enumeration":
        sampling._candidates_by_enumeration(out, rows, users, positions, sizes, index, n_negatives,
                                            rng, 1 << 20)
    else:
        eligible = np.full(copies, n_items - history)
        sampling._candidates_by_rejection(out, rows, users, positions, sizes, eligible, index,
                                          n_negatives, rng, 1 << 20)
    negs = out[:, 1:]
    assert (negs >= history).all() and (negs < n_items).all()
    assert all(len(set(r)) == n_negatives for r in negs.tolist())
    counts = np.bincount(negs.ravel() - history, minlength=n_items - history)
    # 40 cells, 39 degrees of freedom: mean 39, sd ~8.8; a biased sampler lands far above 80.
    # (Sampling without replacement makes the statistic a bit smaller than chi-square.)
    assert _chi_square(counts) < 80
    # Every slot position is uniform too (not e.g. sorted ascending).
    first_slot = np.bincount(negs[:, 0] - history, minlength=n_items - history)
    assert _chi_square(first_slot) < 80


def test_uniformity_check_detects_a_biased_sampler():
    """The chi-square bound above can fail: a sampler that favours low items exceeds it."""
    rng = np.random.default_rng(2020)
    weights = np.linspace(1.0, 1.5, 40)
    draws = rng.choice(40, size=30000, p=weights / weights.sum())
    assert _chi_square(np.bincount(draws, minlength=40)) > 80


def test_rejection_terminates_when_user_has_nearly_every_item():
    """Eligible just above 2*n but only 5% of the pool: rejection alone never gets enough."""
    n_items, history, n_negatives = 2000, 1900, 45
    users, items, index = _heavy_user_log(n_items, history)
    previous = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("hangs")))
    signal.alarm(30)
    try:
        out = sample_candidates(np.zeros(3, dtype=np.int64), np.array([0, 1, 2]),
                                np.full(3, n_items - 1), np.full(3, n_items), index, n_negatives,
                                np.random.default_rng(0))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    negs = out[:, 1:]
    assert (negs >= history).all() and (negs < n_items).all()
    assert all(len(set(r)) == n_negatives for r in negs.tolist())
