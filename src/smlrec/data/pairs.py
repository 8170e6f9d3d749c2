"""A sorted index of (user, item) pairs: "has user u interacted with item i by position g?"."""

from __future__ import annotations

import numpy as np

_SHIFT = np.int64(32)


def pair_keys(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """One int64 key per (user, item); valid while ids stay below 2**31."""
    return (np.asarray(users, dtype=np.int64) << _SHIFT) | np.asarray(items, dtype=np.int64)


class PairIndex:
    """Distinct (user, item) pairs with the log position at which each was first seen.

    ``contains(users, items, positions)`` is vectorised (a binary search per query) and answers
    whether the pair was seen at or before ``positions`` (or at all, when positions is None).
    """

    def __init__(self, keys: np.ndarray, first_position: np.ndarray) -> None:
        self.keys = keys
        self.first_position = first_position

    @classmethod
    def from_log(cls, users: np.ndarray, items: np.ndarray, start: int = 0) -> "PairIndex":
        keys, first = np.unique(pair_keys(users, items), return_index=True)
        return cls(keys, first.astype(np.int64) + start)

    @classmethod
    def from_pairs(cls, users: np.ndarray, items: np.ndarray) -> "PairIndex":
        """An index of a set of pairs, without positions (every pair counts as always seen)."""
        keys = np.unique(pair_keys(users, items))
        return cls(keys, np.zeros(len(keys), dtype=np.int64))

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def contains(self, users: np.ndarray, items: np.ndarray,
                 positions: np.ndarray | None = None) -> np.ndarray:
        query = pair_keys(users, items)
        if len(self.keys) == 0:
            return np.zeros(query.shape, dtype=bool)
        slot = np.searchsorted(self.keys, query)
        slot_c = np.minimum(slot, len(self.keys) - 1)
        found = self.keys[slot_c] == query
        if positions is not None:
            found &= self.first_position[slot_c] <= positions
        return found

    def history_counts(self, users: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Distinct items of each user seen up to and including each position.

        Only valid for indices built ``from_log`` over rows that include ``positions``.
        """
        users = np.asarray(users, dtype=np.int64)
        key_users = self.keys >> _SHIFT
        order = np.lexsort((self.first_position, key_users))
        sorted_users = key_users[order]
        sorted_pos = self.first_position[order]
        # Within a user's block, first positions are increasing; count those <= position.
        block_start = np.searchsorted(sorted_users, users, side="left")
        user_pos_key = (sorted_users << _SHIFT) | sorted_pos
        query = (users << _SHIFT) | np.asarray(positions, dtype=np.int64)
        return (np.searchsorted(user_pos_key, query, side="right") - block_start).astype(np.int64)
