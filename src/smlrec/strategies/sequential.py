"""Sequential recommenders under the replay: GRU4Rec and Caser (sml-method.md section 6).

One strategy class for both networks (``model`` setting; registered as ``gru4rec`` and ``caser``).
The model reads a user's previous items, so the strategy keeps, for every user, the window of
their last ``window`` items as a state array ``windows[n_users, W]`` (right-aligned: most recent
item in the last column, ``-1`` padding in front).

Context of a row = the user's last W items strictly before that row: the stored window followed
by the user's earlier rows of the same period; never the row's own item. Built for a whole
period at once by :func:`sequence_contexts` (sort by user, then shifted gathers)::

    user u, window [-1, a, b], period rows of u: c, d      ->  flat block  [-1 a b | c d]
    context of c = block[0:3] = [-1, a, b];  of d = block[1:4] = [a, b, c];  new window = [b, c, d]

* ``start``: trains the network from scratch on the pretrain periods' sequences (the shared MF
  weights are not used: this is a different model family) for ``start_epochs``.
* ``update(D_t)``: warm start, ``epochs`` passes over D_t's rows that have a context (a user's
  very first interaction has nothing to predict from), one sampled negative each (uniform over the
  training set's items minus the user's items in it), BCE or BPR; then the windows move on.
  ``full = true`` trains on all rows so far instead (contexts rebuilt from the start of the log).
* ``score``: the candidates of a scored row are scored after that row's context.

Cold start (strategies/cold.py): a row whose user has no earlier item at all has nothing to
encode; with ``cold_users = "pop"`` it is scored by the strategy's own decayed item counts over
the rows it has learned from (``cold_decay`` per period), and Caser's user row of a user it never
trained on is the mean trained user row. An item the network never trained on gets the mean
trained output row (and bias) with ``cold_items = "mean"``, not its random initial row. ``"init"``
restores the old behaviour (all-zero scores for an empty history, untrained rows as they are).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..data.periods import Period
from ..data.sampling import SetNegativeSampler, sample_set_negatives
from ..errors import ConfigError
from ..models.caser import Caser
from ..models.gru4rec import GRU4Rec
from ..models.losses import bce_pair_loss, bpr_loss
from ..models.train_loop import train_epochs
from ..random import make_rng, make_torch_generator
from ..models.mf import candidate_scores
from .base import Strategy, StrategyContext, to_tensor
from .cold import TrainedRows, with_cold_rows
from .popularity import decayed_counts

MODELS = ("gru4rec", "caser")
LOSSES = {"bce": bce_pair_loss, "bpr": bpr_loss}
PAD = -1


@dataclass(frozen=True)
class SequentialSettings:
    """Settings of the sequential strategies (GRU4Rec, Caser)."""

    model: str = "gru4rec"      # gru4rec | caser
    window: int = 10            # previous items kept per user (the GRU's input length)
    length: int = 5             # Caser: L, the previous items its convolutions read (<= window)
    dim: int = 64               # item (and Caser user) embedding size
    hidden: int = 64            # GRU4Rec: GRU hidden size
    n_h: int = 16               # Caser: horizontal filters per height 1..L
    n_v: int = 4                # Caser: vertical filters
    dropout: float = 0.0        # GRU4Rec: on the input embeddings; Caser: before its FC layer
    loss: str = "bce"           # bce | bpr, with one sampled negative per positive
    start_epochs: int = 3       # passes over the pretrain periods' sequences in start()
    epochs: int = 1             # passes per update
    lr: float = 1e-3            # Adam, one optimiser for the run
    batch_size: int = 256
    full: bool = False          # True: each update trains on all rows so far, not just D_t
    score_chunk: int = 512      # rows scored at once (bounds the [rows, C, dim] gather)
    cold_users: str = "pop"     # empty history: pop (decayed item counts) | init (all-zero scores)
    cold_items: str = "mean"    # untrained item rows: mean (of trained rows) | init
    cold_decay: float = 0.5     # "pop": counts are multiplied by this after each period

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"sequential model {self.model!r}: expected one of {', '.join(MODELS)}")
        if self.loss not in LOSSES:
            raise ConfigError(f"sequential loss {self.loss!r}: expected one of {', '.join(LOSSES)}")
        for name in ("window", "length", "dim", "hidden", "n_h", "n_v", "batch_size", "score_chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"sequential {name} must be >= 1, got {getattr(self, name)}")
        if self.model == "caser" and self.length > self.window:
            raise ConfigError(f"caser: length L={self.length} exceeds the kept window {self.window}")
        if self.epochs < 0 or self.start_epochs < 0:
            raise ConfigError("sequential epochs must be >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"sequential dropout must be in [0, 1), got {self.dropout}")
        if self.cold_users not in ("pop", "init"):
            raise ConfigError(f"sequential cold_users must be 'pop' or 'init', got {self.cold_users!r}")
        if self.cold_items not in ("mean", "init"):
            raise ConfigError(f"sequential cold_items must be 'mean' or 'init', got {self.cold_items!r}")
        if not 0.0 < self.cold_decay <= 1.0:
            raise ConfigError(f"sequential cold_decay must be in (0, 1], got {self.cold_decay}")


def sequence_contexts(windows: np.ndarray, users: np.ndarray,
                      items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's context and the users' windows after the rows (vectorised, no per-row Python).

    Args:
        windows: ``[n_users, W]`` right-aligned previous items per user (``-1`` = none).
        users, items: the rows, in time order.
    Returns:
        ``contexts[n, W]``: the W items of the row's user before the row (right-aligned);
        ``touched``: the distinct users of the rows; ``new_windows[len(touched), W]``: their
        windows after the last row.
    """
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    width = windows.shape[1]
    n = len(users)
    order = np.argsort(users, kind="stable")                  # by user, time order kept inside
    sorted_items = items[order]
    touched, group_start, group_size = np.unique(users[order], return_index=True, return_counts=True)
    group = np.repeat(np.arange(len(touched)), group_size)
    position = np.arange(n) - group_start[group]               # the row's place in its user's rows
    # Block g = [window of user g (W) | its rows' items]; blocks laid end to end in ``flat``.
    block_start = np.arange(len(touched)) * width + group_start
    flat = np.empty(len(touched) * width + n, dtype=np.int64)
    columns = np.arange(width)
    flat[block_start[:, None] + columns] = windows[touched]
    flat[block_start[group] + width + position] = sorted_items
    contexts = np.empty((n, width), dtype=np.int64)
    contexts[order] = flat[(block_start[group] + position)[:, None] + columns]
    new_windows = flat[(block_start + group_size)[:, None] + columns]
    return contexts, touched, new_windows


class ContextCache:
    """The contexts of the period being scored, computed once per (period object, model version).

    The period object itself is the key (a Period compares by identity): production builds a new
    query period per request, with the same index, start and maybe length. ``version`` is what
    moves the windows on (updates received); ``clear`` drops the entry when they change otherwise
    (grow, a loaded state)."""

    def __init__(self) -> None:
        self._entry: tuple[Period, int, np.ndarray] | None = None

    def get(self, windows: np.ndarray, period: Period, version: int, build: Callable | None = None) -> np.ndarray:
        """``build``: the context builder (default :func:`sequence_contexts`; the callers pass
        their module's name for it, so a test can swap it there)."""
        entry = self._entry
        if entry is None or entry[0] is not period or entry[1] != version:
            contexts, _, _ = (build or sequence_contexts)(windows, period.users, period.items)
            entry = self._entry = (period, version, contexts)
        return entry[2]

    def clear(self) -> None:
        self._entry = None


def sequence_contexts_reference(windows: np.ndarray, users: np.ndarray,
                                items: np.ndarray) -> np.ndarray:
    """The slow twin of :func:`sequence_contexts` (contexts only), one row at a time."""
    width = windows.shape[1]
    history = {u: [int(x) for x in windows[u] if x != PAD] for u in set(int(u) for u in users)}
    contexts = np.full((len(users), width), PAD, dtype=np.int64)
    for row, (user, item) in enumerate(zip(users, items)):
        previous = history[int(user)][-width:]
        if previous:
            contexts[row, width - len(previous):] = previous
        history[int(user)].append(int(item))
    return contexts


class SequentialStrategy(Strategy):
    """GRU4Rec or Caser retrained each period on the users' item sequences."""

    name = "sequential"

    def __init__(self, settings: SequentialSettings, context: StrategyContext) -> None:
        super().__init__(settings, context)
        # Logits only when trained with BCE and no row is scored by item counts (cold_users "pop").
        self.calibrated_scores = settings.loss == "bce" and settings.cold_users == "init"  # type: ignore[misc]
        generator = make_torch_generator(context.seed, "strategy", context.name or self.name, "init")
        if settings.model == "gru4rec":
            self.model = GRU4Rec(context.n_items, settings.dim, settings.hidden, settings.dropout,
                                 generator=generator)
        else:
            self.model = Caser(context.n_users, context.n_items, settings.dim, settings.length,
                               settings.n_h, settings.n_v, settings.dropout, generator=generator)
        self.model.to(self.device)
        self.dropout_generator = torch.Generator(device=self.device).manual_seed(
            int(make_rng(context.seed, "strategy", context.name or self.name, "dropout").integers(2**62)))
        self.model.dropout_generator = self.dropout_generator
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings.lr)
        self.windows = np.full((context.n_users, settings.window), PAD, dtype=np.int64)
        self.history_users = np.zeros(0, dtype=np.int64)     # all rows so far (full = true only)
        self.history_items = np.zeros(0, dtype=np.int64)
        self._scored = ContextCache()       # contexts of the period being scored
        self.item_counts = np.zeros(context.n_items, dtype=np.float64)  # for cold users ("pop")
        self.user_rows = TrainedRows(context.n_users)
        self.item_rows = TrainedRows(context.n_items)
        self._scoring: dict[str, torch.Tensor] | None = None

    # -- training --------------------------------------------------------------------------
    def _start(self, pretrain: Period, initial_state: dict[str, torch.Tensor]) -> None:
        self._learn(pretrain.users, pretrain.items, self.settings.start_epochs)

    def _update(self, period: Period) -> None:
        self._learn(period.users, period.items, self.settings.epochs)

    def _learn(self, users: np.ndarray, items: np.ndarray, epochs: int) -> None:
        """Train on the rows (or on all rows so far when ``full``), then move the windows on."""
        self.item_counts = decayed_counts(self.item_counts, items, self.settings.cold_decay)
        self._scoring = None
        contexts, touched, new_windows = sequence_contexts(self.windows, users, items)
        if self.settings.full:
            self.history_users = np.concatenate([self.history_users, users]).astype(np.int64)
            self.history_items = np.concatenate([self.history_items, items]).astype(np.int64)
            empty = np.full_like(self.windows, PAD)
            train_users, train_items = self.history_users, self.history_items
            train_contexts, _, _ = sequence_contexts(empty, train_users, train_items)
        else:
            train_users, train_items, train_contexts = np.asarray(users), np.asarray(items), contexts
        self._train(train_users, train_items, train_contexts, epochs)
        self.windows[touched] = new_windows
        self._scored.clear()

    def _train(self, users: np.ndarray, items: np.ndarray, contexts: np.ndarray, epochs: int) -> None:
        has_context = contexts[:, -1] != PAD
        if epochs == 0 or not has_context.any():
            return
        negatives_of = SetNegativeSampler(users, items)         # pool: the training set's items
        keep = np.flatnonzero(has_context)
        kept_users = np.asarray(users, dtype=np.int64)[keep]
        if epochs > 0:
            self.user_rows.mark(kept_users)
            self.item_rows.mark(np.asarray(items, dtype=np.int64)[keep])
        user_t = to_tensor(kept_users, self.device)
        item_t = to_tensor(np.asarray(items)[keep], self.device)
        context_t = to_tensor(contexts[keep], self.device)
        model, loss_of = self.model, LOSSES[self.settings.loss]

        def batch_loss(rows: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
            pair = torch.stack([item_t[rows], negatives], dim=1)
            scores = model.score(user_t[rows], context_t[rows], pair)
            return loss_of(scores[:, 0], scores[:, 1])

        def sample_negatives(rng: np.random.Generator) -> np.ndarray:
            return sample_set_negatives(kept_users, negatives_of.pool, negatives_of.exclude, rng)

        model.train()
        self.last_losses = train_epochs(batch_loss, [self.optimizer], len(keep), sample_negatives,
                                        epochs, self.settings.batch_size, self.rng, self.device,
                                        data_parallel=True)
        model.eval()

    # -- serving ---------------------------------------------------------------------------
    def period_contexts(self, period: Period) -> np.ndarray:
        """Contexts of every row of a period about to be scored (cached until the next update)."""
        return self._scored.get(self.windows, period, self.periods_seen, sequence_contexts)

    def _scoring_tables(self) -> dict[str, torch.Tensor]:
        """Output rows (and Caser's biases and user rows) with the cold rules applied."""
        if self._scoring is None:
            s, model = self.settings, self.model
            with torch.no_grad():
                item_rule = "mean" if s.cold_items == "mean" else "init"
                served = {"output": with_cold_rows(model.output.weight.detach(), self.item_rows, item_rule),
                          "counts": torch.from_numpy(self.item_counts).to(self.device)}
                if isinstance(model, Caser):
                    served["bias"] = with_cold_rows(model.bias.weight.detach(), self.item_rows, item_rule)
                    served["user"] = with_cold_rows(model.user.weight.detach(), self.user_rows,
                                                    "mean" if s.cold_users == "pop" else "init")
            self._scoring = served
        return self._scoring

    def _score_chunk(self, users: torch.Tensor, context: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        served = self._scoring_tables()
        user_vectors = served["user"][users] if "user" in served else None
        state = self.model.encode(users, context, user_vectors)
        scores = candidate_scores(state, served["output"], candidates)
        if "bias" in served:
            scores = scores + served["bias"][candidates].squeeze(-1)
        return scores

    def score(self, period: Period, rows: slice, candidates: torch.Tensor) -> torch.Tensor:
        contexts = self.period_contexts(period)[rows]
        users = to_tensor(period.users[rows], self.device)
        context_t = to_tensor(contexts, self.device)
        candidates = candidates.to(self.device)
        self.model.eval()
        chunk = self.settings.score_chunk
        with torch.no_grad():
            scores = torch.cat([self._score_chunk(users[lo: lo + chunk], context_t[lo: lo + chunk],
                                                  candidates[lo: lo + chunk])
                                for lo in range(0, len(users), chunk)]) if len(users) else \
                torch.zeros(candidates.shape, device=self.device)
            no_history = context_t[:, -1] == PAD
            if no_history.any():
                scores[no_history] = self.score_new_users(candidates[no_history]).to(scores.dtype)
        return scores

    def score_new_users(self, candidates: torch.Tensor) -> torch.Tensor:
        """A user with no earlier item: decayed item counts ("pop"), or all zeros ("init")."""
        candidates = candidates.to(self.device)
        if self.settings.cold_users == "init":
            return torch.zeros(candidates.shape, device=self.device)
        return self._scoring_tables()["counts"][candidates]

    # -- state -----------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "dropout_rng": self.dropout_generator.get_state(), "windows": self.windows.copy(), "history_users": self.history_users.copy(),
                "history_items": self.history_items.copy(), "item_counts": self.item_counts.copy(),
                "user_rows": self.user_rows.state(), "item_rows": self.item_rows.state()}

    def _load_state(self, state: dict[str, Any]) -> None:
        windows = np.asarray(state["windows"], dtype=np.int64)
        if windows.shape != self.windows.shape:
            raise ValueError(f"windows of shape {windows.shape}, expected {self.windows.shape}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.dropout_generator.set_state(torch.as_tensor(state["dropout_rng"], dtype=torch.uint8).cpu())
        self.windows = windows.copy()
        self.history_users = np.asarray(state["history_users"], dtype=np.int64)
        self.history_items = np.asarray(state["history_items"], dtype=np.int64)
        self.item_counts = np.asarray(state["item_counts"], dtype=np.float64).copy()
        self.user_rows.load(state["user_rows"])
        self.item_rows.load(state["item_rows"])
        self._scored.clear()
        self._scoring = None
