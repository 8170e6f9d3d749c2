"""Nested state dicts <-> flat ``{name: tensor}`` (for safetensors) + a JSON skeleton.

A strategy's ``state_dict()`` nests dicts and lists of torch tensors, numpy arrays, optimiser state
dicts (whose keys are integers) and JSON-able values (numbers, text, booleans, None, the rng state
with its 128-bit integers). ``flatten`` replaces every array by a reference to a named tensor and
returns the rest as JSON-able data; ``unflatten`` puts them back. The round trip is exact: dtypes,
shapes, tensor-vs-array, tuples and integer dict keys are kept. Nothing is pickled.

Skeleton markers (objects with a single key that starts with ``__``):

* ``{"__tensor__": name}`` a torch tensor; ``{"__ndarray__": name}`` a numpy array;
* ``{"__npscalar__": name}`` a numpy scalar (stored as a 0-d array);
* ``{"__tuple__": [...]}`` a tuple; ``{"__dict__": [[key, value], ...]}`` a dict whose keys are
  not all text (optimiser state keys are parameter numbers);
* ``{"__float__": "nan" | "inf" | "-inf"}`` non-finite floats (so the JSON stays standard).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError

_MARKERS = ("__tensor__", "__ndarray__", "__npscalar__", "__tuple__", "__dict__", "__float__")


def flatten(state: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split ``state`` into ``({name: cpu contiguous tensor}, json_skeleton)``."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, prefix.rstrip(".") or "state", tensors)
    return tensors, skeleton


def _flatten(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if torch.is_tensor(value):
        if value.is_sparse:
            raise TypeError(f"{path}: sparse tensors cannot be stored; densify them first")
        _claim(path, tensors)
        # clone: safetensors refuses tensors that share memory with another stored tensor
        tensors[path] = value.detach().to("cpu").contiguous().clone()
        return {"__tensor__": path}
    if isinstance(value, np.ndarray):
        if value.dtype == object or value.dtype.kind in "USV":
            raise TypeError(f"{path}: numpy arrays of dtype {value.dtype} cannot be stored as tensors")
        _claim(path, tensors)
        tensors[path] = torch.from_numpy(np.ascontiguousarray(value).copy())
        return {"__ndarray__": path}
    if isinstance(value, np.generic) and not isinstance(value, (np.str_, np.bytes_)):
        _claim(path, tensors)
        tensors[path] = torch.from_numpy(np.asarray(value).reshape(()).copy())
        return {"__npscalar__": path}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not any(k in _MARKERS for k in value):
            return {k: _flatten(v, f"{path}.{k}", tensors) for k, v in value.items()}
        for key in value:
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise TypeError(f"{path}: dict key {key!r} of type {type(key).__name__} cannot be stored")
        return {"__dict__": [[k, _flatten(v, f"{path}.{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_flatten(v, f"{path}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_flatten(v, f"{path}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{path}: values of type {type(value).__name__} cannot be stored "
                    "(only tensors, arrays, dicts, lists, tuples, numbers, text, booleans, None)")


def _claim(path: str, tensors: dict[str, torch.Tensor]) -> None:
    if path in tensors:  # e.g. keys "a.b" and "a" -> "b" would both be named "a.b"
        raise TypeError(f"{path}: two values of the state map to the same tensor name")


def unflatten(tensors: dict[str, torch.Tensor], skeleton: Any, source: str = "state") -> Any:
    """Rebuild the nested state; a missing tensor or a malformed marker is a CheckpointError."""
    return _unflatten(skeleton, tensors, source)


def _tensor(tensors: dict[str, torch.Tensor], name: Any, source: str) -> torch.Tensor:
    if not isinstance(name, str) or name not in tensors:
        raise CheckpointError(f"{source}: refers to a tensor {name!r} that is not stored")
    return tensors[name]


def _unflatten(node: Any, tensors: dict[str, torch.Tensor], source: str) -> Any:
    if isinstance(node, list):
        return [_unflatten(v, tensors, source) for v in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        (marker, payload), = node.items()
        if marker == "__tensor__":
            return _tensor(tensors, payload, source)
        if marker == "__ndarray__":
            return _tensor(tensors, payload, source).numpy()
        if marker == "__npscalar__":
            return _tensor(tensors, payload, source).numpy()[()]
        if marker == "__tuple__":
            return tuple(_unflatten(v, tensors, source) for v in payload)
        if marker == "__float__":
            return float(payload)
        if marker == "__dict__":
            try:
                return {k: _unflatten(v, tensors, source) for k, v in payload}
            except (TypeError, ValueError):
                raise CheckpointError(f"{source}: malformed __dict__ entry") from None
    return {k: _unflatten(v, tensors, source) for k, v in node.items()}
