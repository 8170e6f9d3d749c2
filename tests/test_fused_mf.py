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
