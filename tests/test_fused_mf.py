"""The fused MF step against its slow twin: autograd BCE + torch.optim.SparseAdam."""

import torch

from smlrec.models.fused_mf import FusedMFTrainer
from smlrec.models.losses import bce_pair_loss
from smlrec.models.mf import MF


def test_fused_step_equals_autograd_with_sparse_adam():
    gen = torch.Generator().manual_seed(0)
    fast = MF(7, 11, dim=5, init_std=0.3, sparse=True, generator=gen)
    slow = MF(7, 11, dim=5, init_std=0.3, sparse=True)
    slow.load_state_dict(fast.state_dict())
    trainer = FusedMFTrainer(fast, lr=0.05)
    optimizer = torch.optim.SparseAdam(list(slow.parameters()), lr=0.05)
    for step in range(6):
        # repeated users and items inside a batch exercise the per-row gradient sums
        u = torch.randint(0, 7, (9,), generator=gen)
        i = torch.randint(0, 11, (9,), generator=gen)
        j = torch.randint(0, 11, (9,), generator=gen)
        fast_loss = trainer.step(u, i, j)
        optimizer.zero_grad()
        loss = bce_pair_loss(slow.score(u, i), slow.score(u, j))
        loss.backward()
        optimizer.step()
        assert abs(fast_loss - float(loss.detach())) < 1e-6
        assert torch.allclose(fast.user.weight, slow.user.weight, atol=1e-6)
        assert torch.allclose(fast.item.weight, slow.item.weight, atol=1e-6)


def test_rows_outside_the_batch_do_not_move():
    model = MF(4, 4, dim=3, sparse=True, generator=torch.Generator().manual_seed(1))
    before = model.item.weight.detach().clone()
    FusedMFTrainer(model).step(torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    assert torch.equal(model.item.weight[[0, 3]], before[[0, 3]])
    assert not torch.equal(model.item.weight[[1, 2]], before[[1, 2]])


def test_state_round_trip_and_growth():
    model = MF(3, 3, dim=2, sparse=True, generator=torch.Generator().manual_seed(2))
    trainer = FusedMFTrainer(model)
    trainer.step(torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([0, 0]))
    other = FusedMFTrainer(MF(3, 3, dim=2))
    other.load_state_dict(trainer.state_dict())
    assert other.steps == 1 and torch.equal(other.item_v, trainer.item_v)
    trainer.grow(5, 4)
    assert trainer.user_m.shape == (5, 2) and trainer.item_m.shape == (4, 2)
    assert torch.count_nonzero(trainer.user_m[3:]) == 0


# ----------------------------------------------------------------------------------------------
# The compiled epoch kernel (numba) against its slow twin (the torch step, batch by batch)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from smlrec.config import MFSettings  # noqa: E402
from smlrec.errors import ConfigError  # noqa: E402
from smlrec.models import mf_kernels  # noqa: E402
from smlrec.models.fused_mf import make_mf_trainer, resolve_kernel  # noqa: E402
from smlrec.models.growth import grow_embedding  # noqa: E402
from smlrec.models.train_loop import run_trainer_epochs  # noqa: E402

needs_numba = pytest.mark.skipif(not mf_kernels.AVAILABLE, reason="numba is not installed")
# Stated tolerance: float32 sums in another order (SIMD lanes vs torch's kernels) differ by a few
# ulps per step; after tens of lazy-Adam steps on rows of ~0.1 that stays far below 1e-5.
ATOL = 1e-5


def _pair(n_users: int, n_items: int, dim: int, seed: int = 0):
    """Two identical models, one per kernel."""
    models = {}
    for kernel in ("numba", "torch"):
        model = MF(n_users, n_items, dim=dim, init_std=0.3, generator=torch.Generator().manual_seed(seed))
        models[kernel] = (model, FusedMFTrainer(model, lr=0.05, kernel=kernel))
    return models


def _train(pair, users, items, epochs: int, batch_size: int, seed: int):
    losses = {}
    for kernel, (model, trainer) in pair.items():
        n_items = model.item.weight.shape[0]
        losses[kernel] = run_trainer_epochs(
            trainer, torch.as_tensor(users), torch.as_tensor(items),
            lambda rng: rng.integers(0, n_items, len(users)), epochs, batch_size,
            np.random.default_rng(seed))
    return losses


def _assert_same(pair, losses=None):
    (fast, fast_trainer), (slow, slow_trainer) = pair["numba"], pair["torch"]
    assert fast_trainer.steps == slow_trainer.steps
    for a, b in ((fast.user.weight, slow.user.weight), (fast.item.weight, slow.item.weight),
                 (fast_trainer.user_m, slow_trainer.user_m), (fast_trainer.user_v, slow_trainer.user_v),
                 (fast_trainer.item_m, slow_trainer.item_m), (fast_trainer.item_v, slow_trainer.item_v)):
        torch.testing.assert_close(a.detach(), b.detach(), atol=ATOL, rtol=0)
    if losses is not None:
        np.testing.assert_allclose(losses["numba"], losses["torch"], atol=ATOL, rtol=0)


@needs_numba
def test_numba_epochs_equal_torch_steps():
    # few rows and items, so batches repeat users and items (per-row gradient sums), and a last
    # batch shorter than the others
    rng = np.random.default_rng(3)
    users, items = rng.integers(0, 13, 500), rng.integers(0, 17, 500)
    pair = _pair(13, 17, dim=6)
    losses = _train(pair, users, items, epochs=4, batch_size=64, seed=11)
    _assert_same(pair, losses)
    assert pair["numba"][1].steps == 4 * 8
    # the rows really moved: the comparison is not between two untouched tables
    assert not torch.allclose(pair["numba"][0].user.weight,
                              MF(13, 17, dim=6, init_std=0.3,
                                 generator=torch.Generator().manual_seed(0)).user.weight)


@needs_numba
def test_numba_equals_torch_after_growth_and_state_round_trip():
    rng = np.random.default_rng(4)
    pair = _pair(10, 12, dim=8, seed=1)
    _train(pair, rng.integers(0, 10, 300), rng.integers(0, 12, 300), epochs=2, batch_size=32, seed=1)
    for kernel, (model, trainer) in pair.items():   # tables grow for new ids (strategies' _grow)
        grow_embedding(model.user, torch.full((5, 8), 0.05))
        grow_embedding(model.item, torch.full((3, 8), -0.05))
        trainer.grow(15, 15)
    # a state round-trip into fresh trainers (the production loop's resume), then more epochs
    # on rows that include the new ids
    for kernel, (model, trainer) in list(pair.items()):
        fresh = FusedMFTrainer(model, lr=0.05, kernel=kernel)
        fresh.load_state_dict(trainer.state_dict())
        pair[kernel] = (model, fresh)
    losses = _train(pair, rng.integers(0, 15, 300), rng.integers(0, 15, 300), epochs=2, batch_size=32, seed=2)
    _assert_same(pair, losses)
    assert torch.count_nonzero(pair["numba"][1].user_v[10:]) > 0   # the grown rows trained


@needs_numba
def test_numba_kernel_leaves_other_rows_and_works_on_a_single_short_batch():
    model = MF(4, 4, dim=3, generator=torch.Generator().manual_seed(1))
    before = model.item.weight.detach().clone()
    trainer = FusedMFTrainer(model, kernel="numba")
    losses = trainer.train_epoch(torch.tensor([0]), torch.tensor([1]), torch.tensor([2]), 1024)
    assert len(losses) == 1 and trainer.steps == 1
    assert torch.equal(model.item.weight[[0, 3]], before[[0, 3]])
    assert trainer.train_epoch(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                               torch.zeros(0, dtype=torch.long), 8) == []


def test_kernel_setting():
    with pytest.raises(ConfigError):
        MFSettings(kernel="cuda-graph")
    assert resolve_kernel("torch", "cpu") == "torch"
    assert resolve_kernel("auto", "cpu") == ("numba" if mf_kernels.AVAILABLE else "torch")
    assert resolve_kernel("auto", "meta") == "torch"        # any non-CPU device: the torch kernel
    assert make_mf_trainer(MF(2, 2, dim=2), 0.01, True, "torch").kernel == "torch"
