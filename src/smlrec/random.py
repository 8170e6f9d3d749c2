"""Seeded random streams.

Every random function in smlrec takes a generator; this module makes them from a run seed and
a stream name, so that two parts of a run never share (or disturb) each other's randomness and a
rerun with the same seed draws exactly the same numbers.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def _stream_key(part: str | int) -> int:
    if isinstance(part, (int, np.integer)):
        return int(part) & 0xFFFFFFFF
    return zlib.crc32(str(part).encode("utf-8"))


def make_rng(seed: int, *stream: str | int) -> np.random.Generator:
    """A numpy generator for ``stream`` (names or numbers) under ``seed``."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *(_stream_key(p) for p in stream)])


def make_torch_generator(seed: int, *stream: str | int) -> torch.Generator:
    """A CPU torch generator for ``stream`` under ``seed`` (used for weight initialisation)."""
    rng = make_rng(seed, *stream)
    return torch.Generator().manual_seed(int(rng.integers(0, 2**62)))


def rng_state(rng: np.random.Generator) -> dict:
    """The generator's state as plain JSON-able data."""
    return rng.bit_generator.state


def set_rng_state(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = state
