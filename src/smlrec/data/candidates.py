"""The shared test candidates: drawn once per (data, split, seed), cached on disk, memory-mapped."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from ..random import make_rng
from .periods import Period, Timeline
from .sampling import sample_candidates

CANDIDATES_VERSION = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("SMLREC_CACHE", Path.home() / ".cache" / "smlrec"))


def timeline_fingerprint(timeline: Timeline) -> str:
    """A hash of what the candidates depend on: the log's rows, vocabularies and the cuts."""
    digest = hashlib.sha256()
    log = timeline.log
    if log.sha256:
        digest.update(log.sha256.encode())
    for array in (log.user_idx, log.item_idx, log.time, timeline.boundaries):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:24]


class CandidateStore:
    """Candidate lists ``[positive, 999 negatives]`` per scored period, as int32 ``.npy`` files.

    Every strategy reads the same files, so all rank exactly the same lists. A file is written to
    a temporary name and renamed into place, so an interrupted run never leaves a half file.
    """

    def __init__(self, timeline: Timeline, seed: int, n_negatives: int = 999,
                 cache_dir: str | Path | None = None) -> None:
        self.timeline = timeline
        self.seed = seed
        self.n_negatives = n_negatives
        key = f"v{CANDIDATES_VERSION}-{timeline_fingerprint(timeline)}-s{seed}-n{n_negatives}"
        self.directory = Path(cache_dir or default_cache_dir()) / "candidates" / key
        self._loaded: set[int] = set()   # periods whose file load() has read through

    def load(self, period: Period) -> np.ndarray:
        """The period's candidates (drawn if not cached), the file read through once per store so
        that timed scoring finds it in memory rather than paying for the disk."""
        array = self.get(period)
        if period.index not in self._loaded:
            with open(self.path(period), "rb") as handle:
                while handle.read(1 << 24):
                    pass
            self._loaded.add(period.index)
        return array

    def path(self, period: Period) -> Path:
        return self.directory / f"period-{period.index:04d}.npy"

    def get(self, period: Period) -> np.ndarray:
        path = self.path(period)
        if path.exists():
            try:
                array = np.load(path, mmap_mode="r")
                if array.shape == (len(period), self.n_negatives + 1):
                    return array
            except (ValueError, OSError):
                pass  # a damaged cache file is simply regenerated
        array = sample_candidates(period.users, period.items, period.positions, period.items_seen,
                                  period.seen, self.n_negatives,
                                  make_rng(self.seed, "candidates", period.index))
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, array)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return np.load(path, mmap_mode="r")
