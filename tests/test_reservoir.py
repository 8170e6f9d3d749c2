"""Reservoir sampling (algorithm R): exactness against the slow twin, uniformity, state."""

import numpy as np
import pytest

from smlrec.data.reservoir import Reservoir, algorithm_r_reference
from smlrec.errors import ConfigError
from smlrec.random import make_rng


def push_in_batches(reservoir: Reservoir, users, items, sizes):
    lo = 0
    for size in sizes:
        reservoir.push(users[lo: lo + size], items[lo: lo + size])
        lo += size
    assert lo == len(users)


def test_matches_the_one_at_a_time_reference_with_the_same_draws():
    users = np.arange(40) % 7
    items = np.arange(40) + 100
    capacity = 6
    reservoir = Reservoir(capacity, make_rng(1, "r"))
    push_in_batches(reservoir, users, items, [3, 1, 10, 0, 17, 9])   # crosses the filling boundary
    # The reservoir draws one uniform per pair beyond the filling phase, in stream order.
    uniforms = make_rng(1, "r").random(40 - capacity)
    ref_users, ref_items = algorithm_r_reference(users, items, capacity, uniforms)
    np.testing.assert_array_equal(reservoir.users, ref_users)
    np.testing.assert_array_equal(reservoir.items, ref_items)
    assert reservoir.seen == 40 and len(reservoir) == capacity


def test_batch_with_repeated_slots_keeps_the_latest_pair():
    # Hand case, capacity 2, stream 1..5 in one batch; uniforms for pairs n = 3, 4, 5:
    # n=3: u=0.1 -> j=0 (slot 0 := 3); n=4: u=0.9 -> j=3 (dropped); n=5: u=0.1 -> j=0 (slot 0 := 5)
    class FixedDraws:
        def random(self, size):
            return np.array([0.1, 0.9, 0.1])[:size]

    reservoir = Reservoir(2, FixedDraws())
    reservoir.push(np.zeros(5, dtype=np.int64), np.array([1, 2, 3, 4, 5]))
    np.testing.assert_array_equal(reservoir.items, [5, 2])


def test_short_stream_fills_in_order_without_draws():
    reservoir = Reservoir(5, make_rng(0))
    reservoir.push(np.array([1, 2]), np.array([10, 20]))
    reservoir.push(np.array([3]), np.array([30]))
    np.testing.assert_array_equal(reservoir.users, [1, 2, 3])
    np.testing.assert_array_equal(reservoir.items, [10, 20, 30])


def test_every_pair_of_the_stream_is_kept_with_probability_capacity_over_n():
    # 50 pairs, 10 slots: each pair is in the final reservoir with probability 0.2.
    # Over 4000 runs the frequency has standard deviation sqrt(0.2 * 0.8 / 4000) = 0.0063; the
    # tolerance 0.03 is ~4.7 of those. Keeping the last 10 (or the first 10) would give 1 or 0.
    n, capacity, runs = 50, 10, 4000
    rng = make_rng(7, "uniformity")
    counts = np.zeros(n)
    stream = np.arange(n)
    for _ in range(runs):
        reservoir = Reservoir(capacity, rng)
        push_in_batches(reservoir, stream, stream, [4, 9, 1, 20, 16])
        counts[reservoir.items] += 1
    frequency = counts / runs
    assert np.abs(frequency - capacity / n).max() < 0.03
    # Early and late halves of the stream are kept equally often (the classic off-by-one biases one).
    assert abs(frequency[:25].mean() - frequency[25:].mean()) < 0.01


def test_state_round_trip_continues_with_the_same_draws():
    users = np.arange(30)
    a = Reservoir(8, make_rng(3))
    a.push(users[:20], users[:20] + 1)
    state = a.state_dict()
    b = Reservoir(1, make_rng(99))
    b.load_state_dict(state)
    a.push(users[20:], users[20:] + 1)
    b.push(users[20:], users[20:] + 1)
    np.testing.assert_array_equal(a.users, b.users)
    np.testing.assert_array_equal(a.items, b.items)
    assert b.seen == 30 and b.capacity == 8


def test_capacity_must_be_positive():
    with pytest.raises(ConfigError):
        Reservoir(0, make_rng(0))
