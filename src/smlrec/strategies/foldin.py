"""History-aware user rows for the MF-family strategies (issue 24 item 1; docs/sml-history.md).

A user's served row is trained on periods <= t; it never saw what the user did earlier in the
scored period. With ``history = "fold-in"`` the row that scores row ``r`` is::

    v(r) = u + g(r) * h(r)

in the final (served) space: ``u`` the user's served row (for SML: the transferred one; the
shared cold row for a user the model never trained), ``h(r)`` a history vector folded from the
served item rows of the user's last ``history_length`` items strictly before ``r`` (rows of
earlier periods and earlier rows of the scored period, never ``r`` or later: sml-method.md
section 6), and ``g(r) = w . x(r)`` a gate on the features ``x = [1, log(1 + history length),
user has no trained row]``.

``h`` is either the recency-weighted mean of the history's item rows (``history_fold = "mean"``,
weight ``history_recency ** k`` for the k-th most recent item) or the ridge least-squares fold-in
``argmin_x sum_k a_k (1 - q_k . x)^2 + history_l2 ||x||^2`` with the same normalised weights
``a_k`` (``"least-squares"``). A user with no history has ``h = 0`` and is served ``u``.

With ``history_map = "linear"`` the history term is ``g(r) * M h(r)``, ``M`` a d x d matrix
fitted with the gate (starting at the identity, penalised by ``history_map_l2 ||M - I||^2``).

The gate starts at ``w = [history_beta, 0, 0]``. SML fits it the SML way (``history_steps`` > 0):
``update(D_{t+1})`` first scores D_{t+1}'s rows with the model served now (trained on periods
<= t) against ``history_negatives`` sampled negatives per row, fits ``w`` on those rows only
(full-batch Adam on the softmax cross-entropy of the positive, ``history_loss = "ce"``, or a
smoothed sampled Recall, ``"recall"``; warm-started from the previous ``w``), and only then runs the inner update and
moves the windows on: the ``w`` that serves period t+2 was fitted on D_{t+1} with the model of
period t. With ``history_steps = 0`` (the retraining baselines) ``g = history_beta`` throughout.

Windows: ``windows[n_users, history_length]``, right-aligned (most recent item last, ``-1``
padding), moved on after every received period by :func:`sequential.sequence_contexts`, which
also builds a scored period's contexts (cached per period object).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import require
from ..data.periods import Period
from ..data.sampling import sample_prefix_negatives
from ..random import make_rng, rng_state, set_rng_state
from .sequential import PAD, ContextCache, sequence_contexts

HISTORY_MODES = ("none", "fold-in")
FOLDS = ("mean", "least-squares")
GATE_LOSSES = ("recall", "ce")
MAPS = ("scalar", "linear")
N_FEATURES = 3
BAKE_ROWS = 8192    # users per block when the fold-in is baked into a whole served table


@dataclass(frozen=True)
class HistorySettings:
    """The ``history*`` settings as a base class of a strategy's settings (SMLSettings and the
    retraining baselines' RetrainSettings)."""

    history: str = "none"               # none | fold-in
    history_fold: str = "mean"          # mean (recency-weighted) | least-squares (ridge)
    history_length: int = 20            # last items kept per user
    history_recency: float = 0.8        # weight of the k-th most recent item: recency ** k
    history_l2: float = 1.0             # least-squares: ridge
    history_beta: float = 1.0           # the gate's starting bias (fixed gate when history_steps = 0)
    history_steps: int = 100            # full-batch Adam steps on the gate per period (0: fixed)
    history_negatives: int = 100        # sampled negatives per row of D_{t+1} in the gate's fit
    history_lr: float = 0.05
    history_loss: str = "ce"            # ce (softmax over the negatives) | recall (smoothed Recall@2%)
    history_map: str = "scalar"         # scalar: g * h | linear: g * M h, M (d x d) fitted with the gate
    history_map_l2: float = 1e-3        # linear: penalty on ||M - I||^2


def check_history_settings(settings: Any) -> None:
    """Range checks of the ``history*`` fields any settings class that offers a fold-in carries."""
    s = settings
    require(s.history in HISTORY_MODES, "history", f"one of {', '.join(HISTORY_MODES)}", s.history)
    require(s.history_fold in FOLDS, "history_fold", f"one of {', '.join(FOLDS)}", s.history_fold)
    require(s.history_length >= 1, "history_length", ">= 1", s.history_length)
    require(0.0 < s.history_recency <= 1.0, "history_recency", "in (0, 1]", s.history_recency)
    require(s.history_l2 > 0, "history_l2", "> 0", s.history_l2)
    require(np.isfinite(s.history_beta), "history_beta", "finite", s.history_beta)
    require(s.history_steps >= 0, "history_steps", ">= 0", s.history_steps)
    require(s.history_negatives >= 1, "history_negatives", ">= 1", s.history_negatives)
    require(s.history_lr > 0, "history_lr", "> 0", s.history_lr)
    require(s.history_map in MAPS, "history_map", f"one of {', '.join(MAPS)}", s.history_map)
    require(s.history_map_l2 >= 0, "history_map_l2", ">= 0", s.history_map_l2)
    require(s.history_loss in GATE_LOSSES, "history_loss", f"one of {', '.join(GATE_LOSSES)}", s.history_loss)


def recency_weights(contexts: np.ndarray, recency: float) -> np.ndarray:
    """``[n, L]`` weights of right-aligned contexts: ``recency ** k`` for the k-th most recent
    item (k = 0 last column), 0 on padding, each row summing to 1 (all 0 for an empty row)."""
    width = contexts.shape[1]
    raw = np.where(contexts != PAD, recency ** np.arange(width - 1, -1, -1, dtype=np.float64)[None, :], 0.0)
    total = raw.sum(axis=1, keepdims=True)
    return np.divide(raw, total, out=np.zeros_like(raw), where=total > 0)


def history_vectors(item_table: torch.Tensor, contexts: np.ndarray, recency: float, fold: str = "mean",
                    l2: float = 1.0) -> torch.Tensor:
    """``[n, d]`` history vectors of right-aligned contexts over ``item_table`` (module doc)."""
    n, dim = len(contexts), item_table.shape[1]
    out = torch.zeros(n, dim, dtype=item_table.dtype, device=item_table.device)
    for lo in range(0, n, BAKE_ROWS):
        ctx = contexts[lo: lo + BAKE_ROWS]
        weights = torch.from_numpy(recency_weights(ctx, recency)).to(item_table.device)
        rows = item_table[torch.from_numpy(np.maximum(ctx, 0)).to(item_table.device)].double()  # [b, L, d]
        if fold == "mean":
            block = torch.einsum("bl,bld->bd", weights, rows)
        else:
            gram = torch.einsum("bl,bld,ble->bde", weights, rows, rows)
            gram += l2 * torch.eye(dim, dtype=gram.dtype, device=gram.device)
            block = torch.linalg.solve(gram, torch.einsum("bl,bld->bd", weights, rows))
            block = torch.where((weights.sum(dim=1) > 0)[:, None], block, torch.zeros_like(block))
        out[lo: lo + len(ctx)] = block.to(out.dtype)
    return out


def history_vectors_reference(item_table: torch.Tensor, contexts: np.ndarray, recency: float,
                              fold: str = "mean", l2: float = 1.0) -> torch.Tensor:
    """Slow twin of :func:`history_vectors`, one row and one item at a time."""
    table = item_table.double()
    dim = table.shape[1]
    out = torch.zeros(len(contexts), dim, dtype=torch.float64)
    for row, context in enumerate(contexts):
        items = [int(i) for i in context if i != PAD]
        if not items:
            continue
        raw = [recency ** (len(items) - 1 - k) for k in range(len(items))]   # oldest first
        weights = [r / sum(raw) for r in raw]
        if fold == "mean":
            for weight, item in zip(weights, items):
                out[row] += weight * table[item]
        else:
            gram = l2 * torch.eye(dim, dtype=torch.float64)
            rhs = torch.zeros(dim, dtype=torch.float64)
            for weight, item in zip(weights, items):
                gram += weight * torch.outer(table[item], table[item])
                rhs += weight * table[item]
            out[row] = torch.linalg.solve(gram, rhs)
    return out.to(item_table.dtype)


def history_features(contexts: np.ndarray, cold: np.ndarray) -> torch.Tensor:
    """``[n, N_FEATURES]`` gate features: 1, log(1 + history length), no trained row."""
    length = (contexts != PAD).sum(axis=1)
    return torch.from_numpy(np.stack([np.ones(len(contexts)), np.log1p(length),
                                      np.asarray(cold, dtype=np.float64)], axis=1))


def smoothed_recall(scores: torch.Tensor, top: float, smoothing: float = 0.3) -> torch.Tensor:
    """Mean smooth sampled Recall of column 0 (the positive) among the other columns: its rank is
    ``sum sigmoid((s_neg - s_pos) / smoothing)``, a hit ``sigmoid(top - rank)``."""
    rank = torch.sigmoid((scores[:, 1:] - scores[:, :1]) / smoothing).sum(dim=1)
    return torch.sigmoid(top - rank).mean()


class FoldIn:
    """The per-user windows and the gate of a strategy with ``history = "fold-in"`` (module doc)."""

    def __init__(self, settings: Any, n_users: int, seed: int, name: str) -> None:
        self.settings = settings
        self.windows = np.full((n_users, settings.history_length), PAD, dtype=np.int64)
        self.w = torch.zeros(N_FEATURES, dtype=torch.float64)
        self.w[0] = float(settings.history_beta)
        self.map: torch.Tensor | None = None   # history_map = "linear": M (d x d); None: identity
        self.blocks = 0                     # periods received (pretrain = one)
        self.rng = make_rng(seed, "foldin", name)   # its own stream: the host's sampling is unchanged
        self._cached = ContextCache()
        self.fit_log: list[dict[str, Any]] = []

    # -- history ---------------------------------------------------------------------------
    def receive(self, users: np.ndarray, items: np.ndarray) -> None:
        """Move the windows on past the rows of a received period."""
        _, touched, new_windows = sequence_contexts(self.windows, users, items)
        self.windows[touched] = new_windows
        self.blocks += 1
        self._cached.clear()

    def contexts(self, period: Period) -> np.ndarray:
        """Each row's last items strictly before it (cached for the period object being scored)."""
        return self._cached.get(self.windows, period, self.blocks, sequence_contexts)

    # -- served rows -----------------------------------------------------------------------
    def gate(self, contexts: np.ndarray, cold: np.ndarray) -> torch.Tensor:
        return history_features(contexts, cold) @ self.w

    def history(self, item_table: torch.Tensor, contexts: np.ndarray) -> torch.Tensor:
        s = self.settings
        h = history_vectors(item_table, contexts, s.history_recency, s.history_fold, s.history_l2)
        return h if self.map is None else h @ self.map.to(device=h.device, dtype=h.dtype).T

    def user_rows(self, user_rows: torch.Tensor, item_table: torch.Tensor, contexts: np.ndarray,
                  cold: np.ndarray) -> torch.Tensor:
        """``u + g * h`` for rows whose served rows are ``user_rows`` and histories ``contexts``."""
        h = self.history(item_table, contexts)
        g = self.gate(contexts, cold).to(device=user_rows.device, dtype=user_rows.dtype)
        return user_rows + g[:, None] * h

    def baked_table(self, user_table: torch.Tensor, item_table: torch.Tensor, cold: np.ndarray) -> torch.Tensor:
        """The served user table with every user's fold-in of the windows held now: what a query
        with no history of its own gets (the same row ``score`` gives such a user's next row)."""
        out = user_table.clone()
        for lo in range(0, len(user_table), BAKE_ROWS):
            hi = min(lo + BAKE_ROWS, len(user_table))
            out[lo:hi] = self.user_rows(user_table[lo:hi], item_table, self.windows[lo:hi], cold[lo:hi])
        return out

    # -- the meta-fit ----------------------------------------------------------------------
    def fit(self, period: Period, user_table: torch.Tensor, item_table: torch.Tensor, cold: np.ndarray) -> None:
        """Fit ``w`` on ``period`` (D_{t+1}) scored by the tables served now (module doc); call it
        before the host's update on ``period`` and before :meth:`receive`."""
        s = self.settings
        if s.history_steps == 0:
            return
        users = np.asarray(period.users, dtype=np.int64)
        negatives = np.stack([sample_prefix_negatives(users, period.positions, period.items_seen, period.seen,
                                                      self.rng) for _ in range(s.history_negatives)], axis=1)
        candidates = torch.from_numpy(np.concatenate([np.asarray(period.items, np.int64)[:, None], negatives],
                                                     axis=1)).to(item_table.device)
        contexts = self.contexts(period)
        with torch.no_grad():
            q = item_table[candidates].double()                                    # [n, C, d]
            base = torch.einsum("nd,ncd->nc", user_table[torch.from_numpy(users).to(user_table.device)].double(), q)
            h = history_vectors(item_table, contexts, s.history_recency, s.history_fold, s.history_l2).double()
            # the smoothed Recall compares score differences with a fixed temperature: measured
            # in raw logits it saturated on the bundled data (gate bias 46, validation R@20 below
            # the closed gate's)
            spread = base.std(dim=1, keepdim=True).clamp_min(1e-9)
        x = history_features(contexts, cold[users]).to(base.device)
        w = self.w.clone().to(base.device).requires_grad_(True)
        dim = h.shape[1]
        eye = torch.eye(dim, dtype=torch.float64, device=base.device)
        linear = s.history_map == "linear"
        m = (eye if self.map is None else self.map.to(base.device)).clone().requires_grad_(linear)
        optimizer = torch.optim.Adam([w, m] if linear else [w], lr=s.history_lr)
        extra = None if linear else torch.einsum("nd,ncd->nc", h, q)
        target = torch.zeros(len(users), dtype=torch.long, device=base.device)
        losses = []
        with torch.enable_grad():      # an update may be called under no_grad (serving code)
            for _ in range(s.history_steps):
                optimizer.zero_grad()
                mapped = extra if not linear else torch.einsum("nd,ncd->nc", h @ m.T, q)
                scores = base + (x @ w)[:, None] * mapped
                if s.history_loss == "ce":
                    loss = torch.nn.functional.cross_entropy(scores, target)
                else:   # in units of the row's spread of served scores, as blend.py's z-scores
                    loss = -smoothed_recall(scores / spread, 0.02 * s.history_negatives)
                losses.append(float(loss.detach()))
                if linear:
                    loss = loss + s.history_map_l2 * (m - eye).pow(2).sum()
                loss.backward()
                optimizer.step()
        self.w = w.detach().cpu().clone()
        if linear:
            self.map = m.detach().cpu().clone()
        self.fit_log.append({"period": period.index, "rows": len(users), "blocks": self.blocks,
                             "loss_first": losses[0], "loss_last": losses[-1], "w": self.w.tolist()})

    # -- production ------------------------------------------------------------------------
    def grow(self, n_users: int) -> None:
        extra = n_users - len(self.windows)
        self.windows = np.concatenate([self.windows, np.full((extra, self.windows.shape[1]), PAD, np.int64)])
        self._cached.clear()

    def state(self) -> dict[str, Any]:
        return {"windows": self.windows.copy(), "w": self.w.clone(), "blocks": self.blocks,
                "rng": rng_state(self.rng), "map": None if self.map is None else self.map.clone()}

    def load_state(self, state: dict[str, Any]) -> None:
        windows = np.asarray(state["windows"], dtype=np.int64)
        if windows.shape != self.windows.shape:
            raise ValueError(f"fold-in windows of shape {windows.shape}, expected {self.windows.shape}")
        w = torch.as_tensor(state["w"], dtype=torch.float64)
        if w.shape != (N_FEATURES,):
            raise ValueError(f"fold-in gate of shape {tuple(w.shape)}, expected ({N_FEATURES},)")
        self.windows = windows.copy()
        self.w = w.clone()
        self.map = None if state.get("map") is None else torch.as_tensor(state["map"], dtype=torch.float64).clone()
        self.blocks = int(state["blocks"])
        set_rng_state(self.rng, state["rng"])
        self._cached.clear()
