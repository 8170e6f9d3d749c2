import json

import numpy as np
import pytest
import torch

from smlrec.errors import CheckpointError
from smlrec.models.mf import MF
from smlrec.production.state import flatten, unflatten


def _trained_optimizer_state(sparse: bool) -> dict:
    model = MF(5, 4, 3, sparse=sparse)
    optimizer = torch.optim.SparseAdam(list(model.parameters()), lr=0.1) if sparse else \
        torch.optim.Adam(model.parameters(), lr=0.1)
    model.score(torch.tensor([0, 1]), torch.tensor([2, 3])).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}


def _assert_same(a, b, where="state"):
    if isinstance(a, dict):  # an OrderedDict comes back as a plain dict, in the same order
        assert isinstance(b, dict), where
    else:
        assert type(a) is type(b), where
    if torch.is_tensor(a):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}.{i}")
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, where


@pytest.mark.parametrize("sparse", [True, False])
def test_round_trip_is_exact_through_json(sparse):
    state = {
        "strategy": _trained_optimizer_state(sparse),
        "rng": np.random.default_rng(3).bit_generator.state,   # 128-bit integers
        "history": np.array([3, 1, 2], dtype=np.int64),
        "mask": np.array([True, False]),
        "half": torch.tensor([1.5, -2.0], dtype=torch.float16),
        "scalar": np.float32(2.5),
        "pair": (1, "a", float("nan"), float("-inf"), None),
        "int_keys": {0: "zero", 7: [1, 2]},
        "empty": np.zeros((0, 4), dtype=np.float32),
        "nested": [{"a": torch.arange(4).view(2, 2).t()}],   # non-contiguous
    }
    tensors, skeleton = flatten(state)
    assert all(t.is_contiguous() for t in tensors.values())
    back = unflatten(tensors, json.loads(json.dumps(skeleton, allow_nan=False)))
    _assert_same(state, back)
    # optimiser state keys stay integers, so the state loads into a fresh optimiser
    assert list(back["strategy"]["optimizer"]["state"]) == [0, 1]


def test_missing_tensor_is_a_checkpoint_error():
    tensors, skeleton = flatten({"w": torch.ones(2)})
    with pytest.raises(CheckpointError, match="not stored"):
        unflatten({}, skeleton, "some/state.json")


def test_unstorable_values_are_refused():
    with pytest.raises(TypeError, match="object"):
        flatten({"ids": np.array(["a", 1], dtype=object)})
    with pytest.raises(TypeError, match="set"):
        flatten({"s": {1, 2}})
    with pytest.raises(TypeError, match="same tensor name"):
        flatten({"a.b": torch.ones(1), "a": {"b": torch.zeros(1)}})
