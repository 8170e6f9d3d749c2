"""Pretraining on the pretrain periods: the one starting model every strategy shares (MF, or
the base model the settings name: models/bases.py)."""

from __future__ import annotations

import torch

from ..config import BaseSettings, MFSettings
from ..data.loading import return_freed_memory
from ..data.periods import Period
from ..data.sampling import PrefixNegativeSampler
from ..models.bases import base_state, init_base_rows, make_base, make_trainer
from ..models.fused_mf import make_mf_trainer
from ..models.growth import init_rows
from ..models.mf import MF
from ..models.train_loop import run_trainer_epochs
from ..random import make_rng
from .base import to_tensor


def pretrain_mf(pretrain: Period, n_users: int, n_items: int, mf: MFSettings, epochs: int,
                seed: int, device: str = "cpu", base: BaseSettings | None = None
                ) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Train MF (or ``base``) on ``pretrain`` with negatives from the items seen so far minus the
    user's history.

    Returns the weights ``{"user": P, "item": Q}`` (plus the base's dense weights by name) and the
    mean loss of each epoch.
    """
    if base is not None and base.kind != "mf":
        return _pretrain_base(pretrain, n_users, n_items, mf, epochs, seed, device, base)
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
    # The model and its optimizer are dropped here, so the tables need no copy.
    state = {"user": model.user.weight.detach(), "item": model.item.weight.detach()}
    del model, trainer, sampler
    return_freed_memory()
    return state, losses


def _pretrain_base(pretrain: Period, n_users: int, n_items: int, mf: MFSettings, epochs: int, seed: int,
                   device: str, base: BaseSettings) -> tuple[dict[str, torch.Tensor], list[float]]:
    """The same pretraining for a non-MF base: counter-based rows, the pretrain data as its graph."""
    model = make_base(base, n_users, n_items, mf, seed, device)
    init_base_rows(model, seed, mf)
    model.set_graph(pretrain.users, pretrain.items)
    trainer = make_trainer(model, mf.lr, mf.sparse)
    users = to_tensor(pretrain.users, model.user.weight.device)
    items = to_tensor(pretrain.items, model.user.weight.device)
    sampler = PrefixNegativeSampler(pretrain.users, pretrain.positions, pretrain.items_seen, pretrain.seen)
    losses = run_trainer_epochs(trainer, users, items, sampler, epochs, mf.batch_size,
                                make_rng(seed, "pretrain"), device)
    return base_state(model), losses


def pretrain_model(pretrain: Period, n_users: int, n_items: int, settings, device: str | None = None
                   ) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Pretraining as ``ReplaySettings`` describe it (base model, MF settings, epochs, seed)."""
    return pretrain_mf(pretrain, n_users, n_items, settings.mf, settings.pretrain.epochs, settings.seed,
                       device or settings.device, settings.base_settings)
