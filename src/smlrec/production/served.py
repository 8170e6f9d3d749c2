"""Top-K answers from a version's served tables with numpy alone (no torch, no pandas).

What ``smlrec recommend`` and ``smlrec serve`` use for strategies that serve an inner product
(``served.safetensors``: the user table, the item table and the cold user's scores). Importing this
module costs numpy and safetensors, so a one-user ``smlrec recommend`` starts in a fraction of a
second instead of paying for torch and pandas (BENCHMARKS.md, "Serving").

Scores are ``user_table[rows] @ item_table_t``, computed in fixed-shape blocks of ``BLOCK`` rows
(the last block padded with zeros), so every user's scores come from a product of the same shape
whether the user was asked alone or among thousands: the BLAS kernel a product runs depends on its
shape, and a 1-row product (a matrix-vector kernel) rounds differently from a many-row one. Top-k
order is by score, then by item index (ties broken the same way whatever k).

``prepare()`` (called by ``serve`` when a version is swapped in, never on the request path)
computes every known user's top ``CACHE_K`` unseen items once; a query with ``k <= CACHE_K`` that
excludes seen items then reads its answer from that table. The table holds exactly what the
on-demand computation gives (same blocks, same selection), so cached and computed answers agree.

This module reads a version's files itself (the manifest, sha256 checks) because the registry
module imports torch; which versions may be read is committed.py's rule, the registry's own, and
a test compares the two readers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import CheckpointError, ConfigError, DataError
from ..ids import INT64_MAX, whole_number
from .manifest import id_array, read_json, verified
from .committed import latest_version, require_committed, version_name

BLOCK = 64            # rows per scoring product (fixed: see the module docstring)
CACHE_K = 100         # top items per known user kept by prepare()
CACHE_ENTRIES = 50_000_000   # prepare() caches only when n_users * CACHE_K stays below this (~400 MB)
CACHE_WORK = 10**12          # ... and n_users * n_items * dim below this (tens of seconds of one core)
NUMBER, TEXT = "number", "text"


@dataclass
class Answer:
    """The top items of one queried user (raw item ids, best first)."""

    user: Any
    items: list
    scores: list[float]
    fallback: bool
    recent_used: bool | None = None   # None: no recent items given; False: the strategy reads no history


def id_kind(ids: np.ndarray) -> str:
    """"number" for integer id arrays, else "text" (the ids rule of ingest.py)."""
    return NUMBER if np.asarray(ids).dtype.kind in "iu" else TEXT


def normalise_query(value: Any, kind: str) -> Any:
    """A queried raw id (HTTP, ``recommend``) under the ids rule (smlrec/ids.py); None when it
    cannot be an id of this kind (an unknown user)."""
    if kind == TEXT:
        return str(value).strip()
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if abs(value) <= INT64_MAX else None
    return whole_number(str(value))


def block_scores(user_table: np.ndarray, item_table_t: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``user_table[rows] @ item_table_t`` as float32, in products of exactly ``BLOCK`` rows."""
    rows = np.asarray(rows, dtype=np.int64)
    n = len(rows)
    out = np.empty((n, item_table_t.shape[1]), dtype=np.float32)
    padded = np.zeros((BLOCK, user_table.shape[1]), dtype=np.float32)
    for lo in range(0, n, BLOCK):
        hi = min(lo + BLOCK, n)
        padded[: hi - lo] = user_table[rows[lo:hi]]
        padded[hi - lo:] = 0.0
        out[lo:hi] = (padded @ item_table_t)[: hi - lo]
    return out


def select_top(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(items, values) ``[rows, min(k, n_items)]``: best first, ties by item index; vectorised.

    Every item tied with the k-th score is a candidate, so the order of the first k does not
    depend on k (the cache of prepare() and an on-demand query agree)."""
    n_rows, n_items = scores.shape
    width = min(k, n_items)
    if n_rows == 0 or width == 0:
        return np.zeros((n_rows, width), np.int64), np.zeros((n_rows, width), scores.dtype)
    if np.isnan(scores).any():                   # a NaN ranks last (copying only when there is one)
        scores = np.where(np.isnan(scores), -np.inf, scores)
    if width < n_items:
        kth = np.partition(scores, n_items - width, axis=1)[:, n_items - width]
        rows, items = np.nonzero(scores >= kth[:, None])
    else:
        rows, items = np.divmod(np.arange(n_rows * n_items), n_items)
    values = scores[rows, items]
    order = np.lexsort((items, -values, rows))
    rows, items, values = rows[order], items[order], values[order]
    starts = np.searchsorted(rows, np.arange(n_rows))
    rank = np.arange(len(rows)) - starts[rows]
    keep = rank < width
    out_items = np.empty((n_rows, width), np.int64)
    out_values = np.empty((n_rows, width), scores.dtype)
    out_items[rows[keep], rank[keep]] = items[keep]
    out_values[rows[keep], rank[keep]] = values[keep]
    return out_items, out_values


class Selector:
    """Everything a top-K query needs besides the scores: ids, seen items, the cold answer.

    ``score_rows(rows) -> float32 [len(rows), n_items]`` scores known users (the served tables'
    product, or a strategy's own ``score`` for the generic path in recommender.py);
    ``cold_scores() -> float32 [n_items]`` scores a user the version has never seen.
    """

    def __init__(self, version: int, user_ids: np.ndarray, item_ids: np.ndarray, pair_keys: np.ndarray,
                 score_rows: Callable[[np.ndarray], np.ndarray],
                 cold_scores: Callable[[], np.ndarray] | None = None) -> None:
        self.version = version
        self.user_ids = user_ids
        self.item_ids = item_ids
        self.n_items = len(item_ids)
        self.user_kind = id_kind(user_ids)
        self.user_row = {uid: row for row, uid in enumerate(user_ids.tolist())}
        self.item_list = item_ids.tolist()              # raw ids as Python values, for answers
        self._item_row: dict | None = None              # raw item id -> row, built on first use
        # Seen items as CSR: the keys are sorted by user, then item (key = user << 32 | item).
        pair_keys = np.asarray(pair_keys, np.int64)
        self.seen_indptr = np.searchsorted(pair_keys >> 32, np.arange(len(user_ids) + 1, dtype=np.int64))
        self.seen_items = pair_keys & 0xFFFFFFFF
        self.popularity = np.bincount(self.seen_items, minlength=self.n_items)
        self.score_rows = score_rows
        self._cold_scores = cold_scores
        self._cold: tuple[np.ndarray, np.ndarray] | None = None      # (items, values), best first
        self.cache: tuple[np.ndarray, np.ndarray] | None = None      # prepare(): [n_users, CACHE_K]

    def item_rows(self, item_ids: Sequence[Any], user: Any = None) -> np.ndarray:
        """Table rows of raw item ids under the ids rule; an id this version does not know is a
        DataError naming it (and ``user``, whose recent items they are)."""
        if self._item_row is None:
            self._item_row = {iid: row for row, iid in enumerate(self.item_list)}
        kind, rows = id_kind(self.item_ids), self._item_row
        out = np.fromiter((rows.get(normalise_query(q, kind), -1) for q in item_ids), dtype=np.int64,
                          count=len(item_ids))
        if (out < 0).any():
            bad = item_ids[int(np.argmax(out < 0))]
            whose = "" if user is None else f" of user {user!r}"
            raise DataError(f"unknown item {bad!r} in the recent items{whose} (not in version {self.version}); "
                            "drop it, or apply the batch that holds it with `smlrec update` first")
        return out

    def lookup(self, user_ids: Sequence[Any]) -> np.ndarray:
        """Table rows of raw user ids (-1 for unknown), under the ids rule (" 42 " finds 42)."""
        kind, rows = self.user_kind, self.user_row
        return np.fromiter((rows.get(normalise_query(q, kind), -1) for q in user_ids), dtype=np.int64,
                           count=len(user_ids))

    def seen_mask(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row in ``users``, item) of every pair each user has: a sparse mask, from the CSR arrays."""
        users = np.asarray(users, dtype=np.int64)
        lo, hi = self.seen_indptr[users], self.seen_indptr[users + 1]
        counts = hi - lo
        rows = np.repeat(np.arange(len(users)), counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return rows, self.seen_items[np.repeat(lo, counts) + offsets]

    def ranked(self, users: np.ndarray, k: int, exclude_seen: bool) -> tuple[np.ndarray, np.ndarray]:
        """(items, values) of the top ``k`` of known table rows ``users`` (excluded items: -inf)."""
        users = np.asarray(users, np.int64)
        if exclude_seen and self.cache is not None and k <= self.cache[0].shape[1]:
            return self.cache[0][users, :k], self.cache[1][users, :k]
        items, values = [], []
        # one block at a time: bounds memory, and how long one numpy call holds the GIL (the
        # server answers /health from another thread meanwhile)
        step = BLOCK
        for lo in range(0, len(users), step):
            part = users[lo:lo + step]
            scores = np.asarray(self.score_rows(part), dtype=np.float32)
            if exclude_seen:
                rows, seen = self.seen_mask(part)
                scores[rows, seen] = -np.inf
            top = select_top(scores, k)
            items.append(top[0])
            values.append(top[1])
        width = min(k, self.n_items)
        if not items:
            return np.zeros((0, width), np.int64), np.zeros((0, width), np.float32)
        return np.concatenate(items), np.concatenate(values)

    def prepare(self, dim: int = 64) -> None:
        """Cache every known user's top ``CACHE_K`` unseen items (tens of ms for thousands of
        users; skipped when the table would pass ``CACHE_ENTRIES`` or the work ``CACHE_WORK``)."""
        n_users = len(self.user_ids)
        if n_users * CACHE_K > CACHE_ENTRIES or n_users * self.n_items * dim > CACHE_WORK:
            return
        self.cache = self.ranked(np.arange(len(self.user_ids)), CACHE_K, exclude_seen=True)
        self.cold(CACHE_K)

    def cold(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(items, values) of the top ``k`` for an unknown user (the cold rule, else popularity)."""
        if self._cold is None or self._cold[0].shape[0] < min(k, self.n_items):
            scores = self._cold_scores() if self._cold_scores is not None else None
            if scores is None:
                scores = self.popularity
            items, values = select_top(np.asarray(scores, np.float32)[None, :], max(k, CACHE_K))
            self._cold = (items[0], values[0])
        return self._cold[0][:k], self._cold[1][:k]

    def check(self, user_ids: Sequence[Any], k: int, strict: bool) -> np.ndarray:
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        index = self.lookup(user_ids)
        if strict and (index < 0).any():
            raise DataError(f"unknown user {user_ids[int(np.argmax(index < 0))]!r} (not in version "
                            f"{self.version}); drop --strict to serve the cold-start rule")
        return index

    def top_k(self, user_ids: Sequence[Any], k: int = 20, exclude_seen: bool = True,
              strict: bool = False) -> list[Answer]:
        """Top-``k`` items per user, in query order. Excluded items never appear, so a user who
        has nearly every item gets fewer than ``k``. An unknown user gets the cold rule
        (``fallback``), or a DataError when ``strict``."""
        user_ids = list(user_ids)
        index = self.check(user_ids, k, strict)
        answers: list[Answer | None] = [None] * len(user_ids)
        known = np.flatnonzero(index >= 0)
        if known.size:
            items, values = self.ranked(index[known], k, exclude_seen)
            values64 = values.astype(np.float64)
            finite = np.isfinite(values64)
            names = self.item_list
            for position, query in enumerate(known.tolist()):
                keep = finite[position]
                answers[query] = Answer(user_ids[query], [names[i] for i in items[position][keep].tolist()],
                                        values64[position][keep].tolist(), False)
        if known.size < len(user_ids):
            items, values = self.cold(k)
            values64 = values.astype(np.float64)
            keep = np.isfinite(values64)
            cold_items = [self.item_list[i] for i in items[keep].tolist()]
            cold_scores = values64[keep].tolist()
            for query in np.flatnonzero(index < 0).tolist():
                answers[query] = Answer(user_ids[query], cold_items, cold_scores, True)
        return answers  # type: ignore[return-value]


class ServedTables(Selector):
    """A version's served tables as numpy arrays, answering top-K queries (no torch)."""

    def __init__(self, version: int, user_ids: np.ndarray, item_ids: np.ndarray, pair_keys: np.ndarray,
                 user_table: np.ndarray, item_table: np.ndarray, cold: np.ndarray | None = None,
                 manifest: dict[str, Any] | None = None) -> None:
        self.user_table = np.ascontiguousarray(user_table, dtype=np.float32)
        self.item_table_t = np.ascontiguousarray(np.asarray(item_table, dtype=np.float32).T)
        self.manifest = manifest or {}
        cold_scores = None if cold is None else (lambda: np.asarray(cold, np.float32))
        super().__init__(version, user_ids, item_ids, pair_keys, self.scores, cold_scores)

    def scores(self, users: np.ndarray) -> np.ndarray:
        """Scores ``[len(users), n_items]`` of every item (fixed-shape blocks)."""
        return block_scores(self.user_table, self.item_table_t, users)


def open_served(registry: str | Path, version: int | None = None) -> ServedTables | None:
    """The served tables of ``version`` (default: LATEST), every file read checked against the
    manifest; None when the version stores none (a strategy without an inner product: use
    recommender.Recommender). A bad file is a CheckpointError naming it."""
    root = Path(registry)
    latest = latest_version(root)
    if latest is None:
        raise CheckpointError(f"{root}: no model registry here (no LATEST file); create one with `smlrec init`")
    if version is None:
        version = latest
    else:                                   # the registry's one rule (committed.py)
        require_committed(root, version)
    folder = root / version_name(version)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: version {version} is missing")
    manifest = read_json(folder / "manifest.json")
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(manifest, dict) or manifest.get("version") != version or not isinstance(files, dict):
        raise CheckpointError(f"{folder / 'manifest.json'}: not a manifest of version {version}")
    if "served.safetensors" not in files:
        return None
    from safetensors import SafetensorError
    from safetensors.numpy import load as load_numpy

    vocab = read_json(folder / "vocab.json", verified(folder / "vocab.json", files.get("vocab.json")))
    tables: dict[str, np.ndarray] = {}
    for name in ("served.safetensors", "weights.safetensors"):
        payload = verified(folder / name, files.get(name))
        try:
            tables.update({f"{name}:{key}": value for key, value in load_numpy(payload).items()})
        except (SafetensorError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{folder / name}: corrupt safetensors file ({err})") from None
    try:
        return ServedTables(version, id_array(vocab["users"]), id_array(vocab["items"]),
                            tables["weights.safetensors:state.cumulative.pair_keys"],
                            tables["served.safetensors:user"], tables["served.safetensors:item"],
                            tables.get("served.safetensors:cold"), manifest)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{folder}: incomplete checkpoint ({type(err).__name__}: {err})") from None
