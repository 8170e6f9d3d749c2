"""Train MF to convergence on one period's window, as the paper ran Full-retrain.

The paper retrains Full-retrain until it converges (20-100 epochs) rather than for a fixed
number of epochs. The only data an update may look at is its own training window, so::

    held out  = a seeded random slice of the window (``holdout`` of its rows, at most
                ``MAX_HOLDOUT_ROWS``), never trained on in this update
    candidates = each held-out pair's item + ``HOLDOUT_NEGATIVES`` negatives, drawn once, uniform
                 over the window's items minus the user's items in the window
    each epoch: one pass over the rest of the window, then NDCG@20 of the held-out pairs
    stop       after ``patience`` epochs without a better NDCG@20, or ``max_epochs``;
               the user and item rows of the best epoch are kept (Adam's moments run on)

The scored period is never consulted: it is not part of the window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.sampling import SetNegativeSampler, sample_set_negatives
from ..models.mf import MF, candidate_scores
from ..models.train_loop import EpochTrainer, run_trainer_epochs

MAX_HOLDOUT_ROWS = 20_000
HOLDOUT_NEGATIVES = 99
HOLDOUT_K = 20


@dataclass
class ConvergenceResult:
    losses: list[float]       # mean training loss of each epoch run
    scores: list[float]       # held-out NDCG@20 after each epoch
    best_epoch: int           # 1-based epoch whose rows were kept (0: none beat the start)
    kept_score: float = float("nan")   # held-out NDCG@20 of the rows kept (checks the restore)


def held_out_ndcg(model: MF, users: torch.Tensor, candidates: torch.Tensor) -> float:
    """NDCG@20 of column 0 among each row's candidates (ties count against the model)."""
    with torch.no_grad():
        scores = candidate_scores(model.user.weight[users], model.item.weight, candidates)
    positive = scores[:, :1]
    ranks = ((scores[:, 1:] >= positive) | torch.isnan(scores[:, 1:]) | torch.isnan(positive)).sum(1)
    gains = torch.where(ranks < HOLDOUT_K, 1.0 / torch.log2(ranks.double() + 2.0), torch.zeros(()))
    return float(gains.mean())


def train_to_convergence(model: MF, trainer: EpochTrainer, users: np.ndarray, items: np.ndarray,
                         holdout: float, max_epochs: int, patience: int, batch_size: int,
                         rng: np.random.Generator, holdout_rng: np.random.Generator,
                         device: str | torch.device = "cpu") -> ConvergenceResult:
    """Epochs of ``trainer`` on ``users, items`` minus a held-out slice until it stops improving."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    n = len(users)
    n_out = min(MAX_HOLDOUT_ROWS, int(round(holdout * n)))
    if n_out < 1 or n - n_out < 1:
        raise ValueError(f"cannot hold out {holdout:.0%} of a {n}-row window and still train")
    shuffled = holdout_rng.permutation(n)
    out, keep = np.sort(shuffled[:n_out]), np.sort(shuffled[n_out:])
    window = SetNegativeSampler(users, items)       # the whole window's items and pairs
    negatives = np.stack([sample_set_negatives(users[out], window.pool, window.exclude, holdout_rng)
                          for _ in range(HOLDOUT_NEGATIVES)], axis=1)
    candidates = torch.from_numpy(np.concatenate([items[out, None], negatives], axis=1)).to(device)
    out_users = torch.from_numpy(users[out]).to(device)

    train_users, train_items = users[keep], items[keep]
    sampler = SetNegativeSampler(train_users, train_items)
    user_tensor = torch.from_numpy(train_users).to(device)
    item_tensor = torch.from_numpy(train_items).to(device)
    best = held_out_ndcg(model, out_users, candidates)
    best_rows = (model.user.weight.detach().clone(), model.item.weight.detach().clone())
    result = ConvergenceResult([], [], 0)
    since_best = 0
    for epoch in range(1, max_epochs + 1):
        result.losses += run_trainer_epochs(trainer, user_tensor, item_tensor, sampler, 1, batch_size,
                                            rng, device)
        score = held_out_ndcg(model, out_users, candidates)
        result.scores.append(score)
        if score > best:
            best, result.best_epoch, since_best = score, epoch, 0
            best_rows[0].copy_(model.user.weight.detach())
            best_rows[1].copy_(model.item.weight.detach())
        else:
            since_best += 1
            if since_best >= patience:
                break
    with torch.no_grad():
        model.user.weight.copy_(best_rows[0])
        model.item.weight.copy_(best_rows[1])
    result.kept_score = held_out_ndcg(model, out_users, candidates)
    return result
