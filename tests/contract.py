"""The contract every registered strategy must meet, on a tiny timeline.

``tests/test_strategy_contract.py`` runs these checks for every name in
``smlrec.strategies.STRATEGIES``, so a newly registered strategy is covered without edits. To keep a
slow strategy fast here, add an entry to ``FAST_OVERRIDES``: a strategy name (or a name prefix such
as ``"sml"``, which covers ``sml``, ``sml-cnn``, ...) mapped to setting overrides. The longest
matching key wins.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch

from smlrec.data.periods import SCORED_ROLES, Period, Plan, Timeline
from smlrec.data.sampling import sample_candidates
from smlrec.random import make_rng
from smlrec.strategies import Strategy, StrategyContext, create_strategy
from smlrec.strategies.pretrain import pretrain_mf

from helpers import TINY_MF, tiny_timeline

FAST_OVERRIDES: dict[str, dict] = {
    "full-retrain": {"epochs": 1},
    "fine-tune": {"epochs": 1},
    # allow_ncf: the contract checks mechanics on every base; SML on NCF is refused by default
    # for its accuracy (docs/sml-stability.md), not for broken mechanics
    "sml": {"rounds": 2, "hidden": 16, "conv_channels": 2, "conv2_channels": 2, "allow_ncf": True},
    "spmf": {"epochs": 1},
    "asmg": {"epochs": 1},
    "gru4rec": {"start_epochs": 1, "epochs": 1, "dim": 8, "hidden": 8, "batch_size": 64},
    "caser": {"start_epochs": 1, "epochs": 1, "dim": 8, "n_h": 2, "n_v": 2, "batch_size": 64},
}

CONTRACT_PLAN = Plan(pretrain=2, offline=2, validation=1, test=2)
CONTRACT_SEED = 17
N_NEGATIVES = 15


def fast_overrides(name: str) -> dict:
    """The FAST_OVERRIDES entry for ``name``: exact name, else the longest matching prefix."""
    matches = [key for key in FAST_OVERRIDES if name == key or name.startswith(key)]
    return dict(FAST_OVERRIDES[max(matches, key=len)]) if matches else {}


class ContractWorld:
    """A tiny timeline, its pretrained MF weights and candidate lists for the scored periods."""

    def __init__(self) -> None:
        self.timeline: Timeline = tiny_timeline(CONTRACT_PLAN, n_rows=420, seed=4)
        log = self.timeline.log
        self.initial, _ = pretrain_mf(self.timeline.pretrain_data, log.n_users, log.n_items, TINY_MF,
                                      epochs=1, seed=CONTRACT_SEED)
        self.candidates = {
            p.index: sample_candidates(p.users, p.items, p.positions, p.items_seen, p.seen, N_NEGATIVES,
                                       make_rng(CONTRACT_SEED, "contract", p.index))
            for p in self.timeline.periods}

    @property
    def replayed(self) -> list[Period]:
        return self.timeline.periods[CONTRACT_PLAN.pretrain:]

    def context(self, name: str, seed: int = CONTRACT_SEED) -> StrategyContext:
        log = self.timeline.log
        return StrategyContext(n_users=log.n_users, n_items=log.n_items, mf=TINY_MF, seed=seed,
                               name=name)

    def fresh(self, name: str, seed: int = CONTRACT_SEED, start: bool = True) -> Strategy:
        strategy = create_strategy(name, self.context(name, seed), fast_overrides(name))
        if start:
            strategy.start(self.timeline.pretrain_data,
                           {k: v.clone() for k, v in self.initial.items()})
        return strategy

    def score(self, strategy: Strategy, period: Period) -> torch.Tensor:
        """Scores of the period's candidate lists (padding clamped to item 0, as the replay does)."""
        cands = torch.from_numpy(self.candidates[period.index].astype(np.int64)).clamp_min(0)
        with torch.no_grad():
            scores = strategy.score(period, slice(0, len(period)), cands)
        return scores.detach().float().cpu()

    def walk(self, strategy: Strategy, periods: list[Period], is_last: bool = True) -> dict[int, torch.Tensor]:
        """Test-then-train over ``periods``: score scored periods, then update (not on the very last)."""
        scores = {}
        for k, period in enumerate(periods):
            if period.role in SCORED_ROLES:
                scores[period.index] = self.score(strategy, period)
            if not (is_last and k == len(periods) - 1):
                seconds = strategy.update(period)
                assert isinstance(seconds, float) and seconds >= 0
        return scores


def empty_period(period: Period) -> Period:
    empty = np.zeros(0, dtype=np.int64)
    return replace(period, users=empty, items=empty, times=empty, items_seen=empty)


def plain_leaves(value, path: str = "state") -> list[str]:
    """Paths of leaves that are not tensors, arrays or JSON-able values (should be none)."""
    if isinstance(value, dict):
        return [bad for k, v in value.items() for bad in plain_leaves(v, f"{path}.{k}")]
    if isinstance(value, (list, tuple)):
        return [bad for k, v in enumerate(value) for bad in plain_leaves(v, f"{path}[{k}]")]
    if isinstance(value, (torch.Tensor, np.ndarray, str, int, float, bool, type(None), np.generic)):
        return []
    return [f"{path}: {type(value).__name__}"]


def assert_same(a: dict[int, torch.Tensor], b: dict[int, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for index in a:
        torch.testing.assert_close(a[index], b[index], rtol=0, atol=0, equal_nan=True,
                                   msg=lambda m, i=index: f"period {i}: {m}")


__all__ = ["FAST_OVERRIDES", "ContractWorld", "assert_same", "copy", "empty_period", "fast_overrides",
           "plain_leaves"]


def assert_state_round_trip(world: "ContractWorld", name: str) -> None:
    """A strategy rebuilt from ``state_dict`` after two offline updates scores, updates and scores
    again exactly as the original does."""
    periods = world.replayed
    original = world.fresh(name)
    world.walk(original, periods[:2], is_last=False)  # updated on offline periods
    state = original.state_dict()
    assert plain_leaves(state) == []
    restored = world.fresh(name)
    restored.load_state_dict(copy.deepcopy(state))
    nxt, after = periods[2], periods[3]
    assert_same({nxt.index: world.score(original, nxt)}, {nxt.index: world.score(restored, nxt)})
    original.update(nxt)
    restored.update(nxt)
    assert_same({after.index: world.score(original, after)}, {after.index: world.score(restored, after)})
