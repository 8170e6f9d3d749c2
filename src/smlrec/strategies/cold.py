"""Cold-start rules: what a strategy serves for a user or item it has never trained on.

On real logs most scored rows belong to users the model has never trained on (on the bundled
MovieLens split, 93% of test interactions come from users first seen in a test period). An
untrained row is a random vector, so serving it gives a random ranking; and an untrained *item*
row scores about 0 against any user while training pushes sampled negatives below 0, so a
brand-new item wins by accident. Every strategy therefore declares a rule per table, built only
from what the strategy itself has learned or counted. The rules of the embedding strategies:

* ``mean``: the mean of every trained row of the table (the "average user / item");
* ``recent``: the mean of the rows trained in the latest period (interests drift, and new users
  of the next period look more like the users active now than like all users ever seen);
* ``init``: the untrained initial row (the behaviour before cold-start rules; for comparison).

A row is *trained* once its id has appeared in data the strategy trained on; every strategy sees
every period before the one it is scored on, so a scored user is trained exactly when it had an
interaction in an earlier period (the "warm" users of the reports).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import CheckpointError

MF_COLD_RULES = ("mean", "recent", "init")


class TrainedRows:
    """Which rows of one table have been trained, and which were trained in the latest period."""

    def __init__(self, n_rows: int) -> None:
        self.trained = np.zeros(n_rows, dtype=bool)
        self.recent = np.zeros(n_rows, dtype=bool)

    def mark(self, rows: np.ndarray, new_period: bool = True) -> None:
        """Rows of one training period (``new_period`` starts a new "latest period")."""
        if new_period:
            self.recent[:] = False
        self.trained[rows] = True
        self.recent[rows] = True

    def grow(self, n_rows: int) -> None:
        pad = n_rows - len(self.trained)
        self.trained = np.concatenate([self.trained, np.zeros(pad, dtype=bool)])
        self.recent = np.concatenate([self.recent, np.zeros(pad, dtype=bool)])

    def state(self) -> dict[str, np.ndarray]:
        return {"trained": self.trained.copy(), "recent": self.recent.copy()}

    def load(self, state: dict[str, np.ndarray]) -> None:
        trained = np.asarray(state["trained"], dtype=bool)
        recent = np.asarray(state["recent"], dtype=bool)
        if trained.shape != self.trained.shape or recent.shape != self.trained.shape:
            raise CheckpointError(f"trained-row masks of shape {trained.shape}, expected {self.trained.shape}")
        self.trained, self.recent = trained.copy(), recent.copy()


def cold_row(table: torch.Tensor, rows: TrainedRows, rule: str) -> torch.Tensor | None:
    """The row served for an untrained id under ``rule`` (None for ``init``: keep each own row)."""
    if rule == "init":
        return None
    mask = rows.recent if rule == "recent" and rows.recent.any() else rows.trained
    if not mask.any():
        return torch.zeros(table.shape[1], dtype=table.dtype, device=table.device)
    return table[torch.from_numpy(mask).to(table.device)].mean(dim=0)


def with_cold_rows(table: torch.Tensor, rows: TrainedRows, rule: str) -> torch.Tensor:
    """``table`` with every untrained row replaced by the rule's cold row."""
    vector = cold_row(table, rows, rule)
    if vector is None:
        return table
    trained = torch.from_numpy(rows.trained).to(table.device)
    return torch.where(trained[:, None], table, vector[None, :])


def with_cold_rows_reference(table: torch.Tensor, rows: TrainedRows, rule: str) -> torch.Tensor:
    """Slow twin of :func:`with_cold_rows`, one row at a time (tests compare the two)."""
    out = table.clone()
    if rule == "init":
        return out
    source = rows.recent if rule == "recent" and rows.recent.any() else rows.trained
    chosen = [table[r] for r in range(len(table)) if source[r]]
    vector = torch.stack(chosen).mean(dim=0) if chosen else torch.zeros(table.shape[1])
    for r in range(len(table)):
        if not rows.trained[r]:
            out[r] = vector
    return out
