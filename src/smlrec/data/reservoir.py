"""A fixed-size uniform sample of a stream of (user, item) pairs: Vitter's algorithm R.

Algorithm R, for the n-th pair of the stream (n = 1, 2, ...) and a reservoir of ``capacity`` slots::

    if n <= capacity:  slot n-1 := pair                        (filling; no randomness)
    else:              j := uniform integer in [0, n)           (j = floor(u * n), u ~ U[0, 1))
                       if j < capacity: slot j := pair          (kept with probability capacity/n)

After any number of pushes every pair of the stream so far is in the reservoir with the same
probability ``capacity / n``. :meth:`Reservoir.push` applies the rule to a whole batch at once:
one uniform per pair beyond the filling phase (drawn in stream order with ``rng.random``), and
when several pairs of the batch land in the same slot the latest one wins, exactly as the
sequential loop would leave it. :func:`algorithm_r_reference` is the slow, obvious twin.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CheckpointError, ConfigError
from ..random import rng_state, set_rng_state


class Reservoir:
    """``capacity`` slots of (user, item) pairs, filled and replaced by algorithm R.

    ``rng`` is the generator of the reservoir's draws (owned by the reservoir from then on; its
    state is part of :meth:`state_dict`, so a restored reservoir continues with the same draws).
    """

    def __init__(self, capacity: int, rng: np.random.Generator) -> None:
        if not isinstance(capacity, (int, np.integer)) or capacity < 1:
            raise ConfigError(f"reservoir capacity must be a whole number >= 1, got {capacity!r}")
        self.capacity = int(capacity)
        self.rng = rng
        self.seen = 0                                   # pairs pushed so far (the stream length n)
        self.slot_users = np.full(self.capacity, -1, dtype=np.int64)
        self.slot_items = np.full(self.capacity, -1, dtype=np.int64)

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    @property
    def users(self) -> np.ndarray:
        """Users of the filled slots (a view)."""
        return self.slot_users[: len(self)]

    @property
    def items(self) -> np.ndarray:
        """Items of the filled slots (a view)."""
        return self.slot_items[: len(self)]

    def push(self, users: np.ndarray, items: np.ndarray) -> None:
        """Feed a batch of pairs, in stream order, through algorithm R."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        if users.shape != items.shape or users.ndim != 1:
            raise ValueError("users and items must be 1-d arrays of the same length")
        m = len(users)
        # Filling phase: the first pairs go to the next free slots.
        n_fill = max(0, min(m, self.capacity - self.seen))
        if n_fill:
            self.slot_users[self.seen: self.seen + n_fill] = users[:n_fill]
            self.slot_items[self.seen: self.seen + n_fill] = items[:n_fill]
        rest = m - n_fill
        if rest:
            # Stream numbers n (1-based) of the remaining pairs, one uniform each: j = floor(u * n).
            n = self.seen + n_fill + 1 + np.arange(rest, dtype=np.int64)
            j = np.floor(self.rng.random(rest) * n).astype(np.int64)
            j = np.minimum(j, n - 1)                    # guard the (measure-zero) rounding at u -> 1
            kept = np.flatnonzero(j < self.capacity)
            if kept.size:
                slots = j[kept]
                # The last pair written to a slot is the one that stays: unique over the reversed order.
                _, last_from_end = np.unique(slots[::-1], return_index=True)
                winners = kept[::-1][last_from_end]
                source = n_fill + winners
                self.slot_users[j[winners]] = users[source]
                self.slot_items[j[winners]] = items[source]
        self.seen += m

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "seen": self.seen, "users": self.slot_users.copy(),
                "items": self.slot_items.copy(), "rng": rng_state(self.rng)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        users = np.asarray(state["users"], dtype=np.int64)
        items = np.asarray(state["items"], dtype=np.int64)
        capacity = int(state["capacity"])
        if users.shape != (capacity,) or items.shape != (capacity,) or int(state["seen"]) < 0:
            raise CheckpointError(f"reservoir state does not fit: capacity {capacity}, "
                                  f"arrays {users.shape} and {items.shape}")
        self.capacity = capacity
        self.seen = int(state["seen"])
        self.slot_users = users.copy()
        self.slot_items = items.copy()
        set_rng_state(self.rng, state["rng"])


def algorithm_r_reference(users: np.ndarray, items: np.ndarray, capacity: int,
                          uniforms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm R one pair at a time (the slow twin of :class:`Reservoir`, for tests).

    ``uniforms[k]`` is the U[0, 1) draw of the k-th pair *beyond the filling phase*.
    Returns the slots' users and items.
    """
    slot_users: list[int] = []
    slot_items: list[int] = []
    draw = 0
    for position, (user, item) in enumerate(zip(users, items)):
        n = position + 1
        if n <= capacity:
            slot_users.append(int(user))
            slot_items.append(int(item))
            continue
        j = min(int(uniforms[draw] * n), n - 1)
        draw += 1
        if j < capacity:
            slot_users[j] = int(user)
            slot_items[j] = int(item)
    return np.asarray(slot_users, dtype=np.int64), np.asarray(slot_items, dtype=np.int64)
