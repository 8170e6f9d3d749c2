"""Negative sampling, vectorised: training negatives and the 999-negative test candidates.

Two kinds of pool (sml-method.md 1.5-1.6):

* **prefix**: the items seen in the log up to and including the row (item indices are in
  first-appearance order, so this is ``0 .. items_seen[row]-1``), minus the items the user has
  interacted with up to and including the row. Used by the test candidates, MF pretraining and
  SML step 1.
* **set**: a fixed set of items (those of a training set), minus the user's items in that set.
  Used by Full-retrain, Fine-tune and SML step 2.

All functions draw with replacement and reject excluded items, a whole batch at a time.
"""

from __future__ import annotations

import numpy as np

from .pairs import PairIndex

MAX_REJECTION_ROUNDS = 64
MAX_CANDIDATE_ATTEMPTS = 4  # rejection rounds for test candidates before enumerating the pool


def _rejection_sample(n: int, draw, excluded, rng: np.random.Generator) -> np.ndarray:
    """Draw one value per row; redraw rows whose value is excluded.

    A row that is still excluded after MAX_REJECTION_ROUNDS (its user has interacted with
    nearly every item of the pool) keeps its last draw, so the sampler always terminates.
    """
    rows = np.arange(n)
    out = draw(rows, rng)
    for _ in range(MAX_REJECTION_ROUNDS):
        bad = excluded(rows, out[rows])
        if not bad.any():
            break
        rows = rows[bad]
        out[rows] = draw(rows, rng)
    return out


def sample_prefix_negatives(users: np.ndarray, positions: np.ndarray, items_seen: np.ndarray,
                            seen: PairIndex, rng: np.random.Generator) -> np.ndarray:
    """One negative per row from the prefix pool (items seen so far minus the user's history)."""
    users = np.asarray(users, dtype=np.int64)
    sizes = np.asarray(items_seen, dtype=np.int64)

    def draw(rows, g):
        return np.floor(g.random(len(rows)) * sizes[rows]).astype(np.int64)

    def excluded(rows, items):
        return seen.contains(users[rows], items, positions[rows])

    return _rejection_sample(len(users), draw, excluded, rng)


def sample_set_negatives(users: np.ndarray, pool: np.ndarray, exclude: PairIndex,
                         rng: np.random.Generator) -> np.ndarray:
    """One negative per row, uniform over ``pool`` minus the pairs in ``exclude``."""
    users = np.asarray(users, dtype=np.int64)
    pool = np.asarray(pool, dtype=np.int64)

    def draw(rows, g):
        return pool[g.integers(0, len(pool), size=len(rows))]

    def excluded(rows, items):
        return exclude.contains(users[rows], items)

    return _rejection_sample(len(users), draw, excluded, rng)


class SetNegativeSampler:
    """Negatives for a training set: uniform over its items minus each user's items in it."""

    def __init__(self, users: np.ndarray, items: np.ndarray) -> None:
        self.users = np.asarray(users, dtype=np.int64)
        self.pool = np.unique(items)
        self.exclude = PairIndex.from_pairs(users, items)

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        return sample_set_negatives(self.users, self.pool, self.exclude, rng)


class PrefixNegativeSampler:
    """Negatives for rows of the log: the prefix pool at each row's position."""

    def __init__(self, users: np.ndarray, positions: np.ndarray, items_seen: np.ndarray,
                 seen: PairIndex) -> None:
        self.users = np.asarray(users, dtype=np.int64)
        self.positions = np.asarray(positions, dtype=np.int64)
        self.items_seen = np.asarray(items_seen, dtype=np.int64)
        self.seen = seen

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        return sample_prefix_negatives(self.users, self.positions, self.items_seen, self.seen, rng)


# ----------------------------------------------------------------------------------------------
# Test candidates

def sample_candidates(users: np.ndarray, items: np.ndarray, positions: np.ndarray,
                      items_seen: np.ndarray, seen: PairIndex, n_negatives: int,
                      rng: np.random.Generator, chunk_elements: int = 1 << 23) -> np.ndarray:
    """Candidate lists ``[positive, n_negatives distinct negatives]`` for each row, int32.

    Negatives are drawn uniformly without repetition from the items seen up to and including the
    row, minus every item the user has interacted with up to and including it. A row with fewer
    eligible items than ``n_negatives`` gets all of them, in random order, and ``-1`` padding.
    """
    users = np.asarray(users, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.int64)
    sizes = np.asarray(items_seen, dtype=np.int64)
    n = len(users)
    out = np.full((n, n_negatives + 1), -1, dtype=np.int32)
    out[:, 0] = items
    if n == 0:
        return out
    eligible = sizes - seen.history_counts(users, positions)
    # Small pools (few eligible items) are enumerated; large ones are sampled with rejection.
    small = eligible <= 2 * n_negatives
    small_rows = np.flatnonzero(small)
    large_rows = np.flatnonzero(~small)
    if small_rows.size:
        _candidates_by_enumeration(out, small_rows, users, positions, sizes, seen, n_negatives, rng,
                                   chunk_elements)
    if large_rows.size:
        _candidates_by_rejection(out, large_rows, users, positions, sizes, eligible, seen, n_negatives,
                                 rng, chunk_elements)
    return out


def _candidates_by_enumeration(out, rows, users, positions, sizes, seen, n_negatives, rng,
                               chunk_elements) -> None:
    width = int(sizes[rows].max())
    step = max(1, chunk_elements // max(width, 1))
    for lo in range(0, len(rows), step):
        block = rows[lo: lo + step]
        items = np.broadcast_to(np.arange(width, dtype=np.int64), (len(block), width))
        keys = rng.random((len(block), width))
        invalid = items >= sizes[block, None]
        invalid |= seen.contains(np.repeat(users[block], width).reshape(len(block), width), items,
                                 np.repeat(positions[block], width).reshape(len(block), width))
        keys[invalid] = np.inf
        take = min(n_negatives, width)
        chosen = np.argpartition(keys, take - 1, axis=1)[:, :take] if take < width else \
            np.argsort(keys, axis=1)[:, :take]
        chosen_keys = np.take_along_axis(keys, chosen, axis=1)
        order = np.argsort(chosen_keys, axis=1)
        chosen = np.take_along_axis(chosen, order, axis=1)
        chosen_keys = np.take_along_axis(chosen_keys, order, axis=1)
        values = np.where(np.isfinite(chosen_keys), chosen, -1).astype(np.int32)
        out[block, 1: 1 + take] = values


def _candidates_by_rejection(out, rows, users, positions, sizes, eligible, seen, n_negatives, rng,
                             chunk_elements) -> None:
    pending = rows
    attempt = 0
    while pending.size:
        if attempt >= MAX_CANDIDATE_ATTEMPTS:
            # The draw cap below leaves too few eligible draws for these rows (a user who has
            # seen nearly every item of a large pool): enumerate their pools instead of looping.
            _candidates_by_enumeration(out, pending, users, positions, sizes, seen, n_negatives, rng,
                                       chunk_elements)
            return
        # Draw enough that, after removing the user's items and repeats, n_negatives remain with
        # high probability; the rare row that falls short is redrawn with a larger margin.
        reject_rate = 1.0 - eligible[pending] / sizes[pending]
        margin = 1.25 + 0.25 * attempt
        draws = int(np.ceil(n_negatives * margin / max(1e-3, 1.0 - float(reject_rate.max())))) + 32
        draws = min(draws, 8 * n_negatives + 64)
        step = max(1, chunk_elements // draws)
        short = []
        for lo in range(0, len(pending), step):
            block = pending[lo: lo + step]
            m = len(block)
            sample = np.floor(rng.random((m, draws)) * sizes[block, None]).astype(np.int64)
            bad = seen.contains(np.repeat(users[block], draws).reshape(m, draws), sample,
                                np.repeat(positions[block], draws).reshape(m, draws))
            order = np.argsort(sample, axis=1, kind="stable")
            sorted_sample = np.take_along_axis(sample, order, axis=1)
            repeat_sorted = np.zeros_like(bad)
            repeat_sorted[:, 1:] = sorted_sample[:, 1:] == sorted_sample[:, :-1]
            repeat = np.empty_like(bad)
            np.put_along_axis(repeat, order, repeat_sorted, axis=1)
            good = ~(bad | repeat)
            count = np.cumsum(good, axis=1)
            enough = count[:, -1] >= n_negatives
            keep = good & (count <= n_negatives) & enough[:, None]
            done = block[enough]
            out[done, 1:] = sample[keep].reshape(len(done), n_negatives).astype(np.int32)
            short.append(block[~enough])
        pending = np.concatenate(short) if short else np.zeros(0, dtype=np.int64)
        attempt += 1
