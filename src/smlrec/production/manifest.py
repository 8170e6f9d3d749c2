"""Reading a version's files against its manifest, with no torch: the registry (which loads the
strategy) and the torch-free serving path (served.py) read a version the same way. Every problem
is a CheckpointError naming the file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except OSError as err:
        raise CheckpointError(f"{path}: unreadable ({err})") from None


def read_json(path: Path, payload: bytes | None = None) -> Any:
    """``path``'s JSON (or ``payload``'s, already read from it)."""
    try:
        return json.loads((read_bytes(path) if payload is None else payload).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: corrupt or truncated JSON ({err})") from None


def verified(path: Path, expected: Any) -> bytes:
    """``path``'s bytes, after checking their size and sha256 against the manifest's entry."""
    if not isinstance(expected, dict) or "sha256" not in expected:
        raise CheckpointError(f"{path}: not listed in the manifest")
    payload = read_bytes(path)
    if len(payload) != expected.get("bytes") or hashlib.sha256(payload).hexdigest() != expected["sha256"]:
        raise CheckpointError(f"{path}: corrupt or truncated ({len(payload)} bytes, expected "
                              f"{expected.get('bytes')}; sha256 does not match the manifest)")
    return payload


def id_array(values: list) -> np.ndarray:
    """Raw ids from vocab.json: integers stay int64 (object past int64), other numbers float64,
    anything else text."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        try:
            return np.asarray(values, dtype=np.int64)
        except OverflowError:
            return np.asarray(values, dtype=object)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.float64)
    return np.asarray([str(v) for v in values], dtype=object)
