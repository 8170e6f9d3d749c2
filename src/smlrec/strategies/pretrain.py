"""MF pretraining on the pretrain periods: the one starting model every strategy shares."""

from __future__ import annotations

import torch

from ..config import MFSettings
from ..data.periods import Period
from ..data.sampling import PrefixNegativeSampler
from ..models.fused_mf import make_mf_trainer
from ..models.growth import init_rows
from ..models.mf import MF
from ..models.train_loop import run_trainer_epochs
from ..random import make_rng
from .base import to_tensor


def pretrain_mf(pretrain: Period, n_users: int, n_items: int, mf: MFSettings, epochs: int,
                seed: int, device: str = "cpu") -> tuple[dict[str, torch.Tensor], list[float]]:
    """Train MF on ``pretrain`` with negatives from the items seen so far minus the user's history.

    Returns the weights ``{"user": P, "item": Q}`` and the mean loss of each epoch.
    """
    model = MF(n_users, n_items, mf.dim, mf.init_std, mf.sparse).to(device)
    with torch.no_grad():  # counter-based rows, so tables grown later get the same rows (models/growth.py)
        model.user.weight.copy_(init_rows(seed, "user", 0, n_users, mf.dim, mf.init_std))
        model.item.weight.copy_(init_rows(seed, "item", 0, n_items, mf.dim, mf.init_std))
    trainer = make_mf_trainer(model, mf.lr, mf.sparse, mf.kernel)
    users = to_tensor(pretrain.users, model.user.weight.device)
    items = to_tensor(pretrain.items, model.user.weight.device)
    sampler = PrefixNegativeSampler(pretrain.users, pretrain.positions, pretrain.items_seen, pretrain.seen)

    losses = run_trainer_epochs(trainer, users, items, sampler, epochs, mf.batch_size,
                                make_rng(seed, "pretrain"), device)
    state = {"user": model.user.weight.detach().clone(), "item": model.item.weight.detach().clone()}
    return state, losses
