"""The strategy contract, importable: check your own Strategy subclass with the suite every
built-in strategy passes (smlrec's own tests/test_strategy_contract.py runs these same checks).

In a plug-in's tests::

    from smlrec.testing import check_strategy
    from mypackage import MyStrategy

    def test_my_strategy_meets_the_contract():
        check_strategy(MyStrategy, overrides={"epochs": 1})   # raises AssertionError on a breach

What the contract asks, on a tiny synthetic timeline (420 rows, 20 users, 30 items, 7 periods):

* ``start`` then test-then-train over the periods: ``score`` gives finite floats of shape
  ``[rows, candidates]`` and is read-only (scoring twice gives the same scores); ``update``
  returns its seconds;
* the same seed gives the same scores, exactly;
* ``state_dict`` holds only tensors, arrays and JSON-able values, and a strategy restored from it
  scores, updates and scores again exactly as the original;
* an empty period, or indices beyond the tables, is a DataError (the base class checks this).

Each check is also a function of its own (``check_scores``, ``check_deterministic``, ...)
taking a :class:`ContractWorld` and a registered name, for parametrised tests.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from .config import MFSettings
from .data.log import InteractionLog
from .data.periods import SCORED_ROLES, Period, Plan, Timeline, build_timeline, split_equal_count
from .data.sampling import sample_candidates
from .errors import DataError
from .random import make_rng
from .strategies import Strategy, StrategyContext, create_strategy, register_class
from .strategies.pretrain import pretrain_mf

T0 = 1_600_000_000  # 2020-09-13 12:26:40 UTC

TINY_MF = MFSettings(dim=8, lr=0.05, batch_size=64)
"""The base model of the tiny timeline: 8 dimensions, so a check takes milliseconds."""

FAST_OVERRIDES: dict[str, dict] = {
    "full-retrain": {"epochs": 1},
    "fine-tune": {"epochs": 1},
    "no-update": {"epochs": 1},
    # allow_ncf: the contract checks mechanics on every base; SML on NCF is refused by default
    # for its accuracy (docs/sml-stability.md), not for broken mechanics
    "sml": {"rounds": 2, "hidden": 16, "conv_channels": 2, "conv2_channels": 2, "allow_ncf": True},
    "spmf": {"epochs": 1},
    "asmg": {"epochs": 1},
    "gru4rec": {"start_epochs": 1, "epochs": 1, "dim": 8, "hidden": 8, "batch_size": 64},
    "sml+new": {"inner_settings": {"rounds": 2, "hidden": 16, "conv_channels": 2, "conv2_channels": 2,
                                   "allow_ncf": True}},
    "caser": {"start_epochs": 1, "epochs": 1, "dim": 8, "n_h": 2, "n_v": 2, "batch_size": 64},
}
"""Settings that keep the built-in strategies fast here, by name or name prefix ("sml" covers
"sml-cnn"); the longest matching key wins."""

CONTRACT_PLAN = Plan(pretrain=2, offline=2, validation=1, test=2)
CONTRACT_SEED = 17
N_NEGATIVES = 15


def random_rows(n_rows: int = 400, n_users: int = 20, n_items: int = 30, seed: int = 0,
                step: int = 600) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw (user, item, unix-second time) rows, time-sorted, users/items drawn with skew."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n_rows)
    items = np.minimum(rng.geometric(1.0 / (n_items / 3), n_rows) - 1, n_items - 1)
    times = T0 + np.arange(n_rows, dtype=np.int64) * step
    return users, items, times


def tiny_log(n_rows: int = 400, n_users: int = 20, n_items: int = 30, seed: int = 0) -> InteractionLog:
    """A small random log (``random_rows``) as an InteractionLog."""
    users, items, times = random_rows(n_rows, n_users, n_items, seed)
    return InteractionLog.from_arrays(users, items, times)


def tiny_timeline(plan: Plan = Plan(2, 1, 1, 2), n_rows: int = 360, seed: int = 0) -> Timeline:
    """``tiny_log`` cut into ``plan.total`` periods of equal counts."""
    log = tiny_log(n_rows=n_rows, seed=seed)
    return build_timeline(log, split_equal_count(len(log), plan.total), plan)


def fast_overrides(name: str) -> dict:
    """The FAST_OVERRIDES entry for ``name``: exact name, else the longest matching prefix."""
    matches = [key for key in FAST_OVERRIDES if name == key or name.startswith(key)]
    return dict(FAST_OVERRIDES[max(matches, key=len)]) if matches else {}


def _expect(ok: bool, message: str) -> None:
    if not ok:   # not ``assert``: the checks must also run under ``python -O``
        raise AssertionError(message)


class ContractWorld:
    """A tiny timeline, its pretrained MF weights and candidate lists for the scored periods.

    ``overrides`` maps a strategy name to its settings for the checks (default: FAST_OVERRIDES).
    """

    def __init__(self, overrides: dict[str, dict] | None = None) -> None:
        self.overrides = overrides or {}
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
        settings = self.overrides[name] if name in self.overrides else fast_overrides(name)
        strategy = create_strategy(name, self.context(name, seed), settings)
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
                _expect(isinstance(seconds, float) and seconds >= 0,
                        f"update returned {seconds!r}, expected its seconds (a float >= 0)")
        return scores


def empty_period(period: Period) -> Period:
    empty = np.zeros(0, dtype=np.int64)
    return replace(period, users=empty, items=empty, times=empty, items_seen=empty)


def plain_leaves(value: Any, path: str = "state") -> list[str]:
    """Paths of leaves that are not tensors, arrays or JSON-able values (should be none)."""
    if isinstance(value, dict):
        return [bad for k, v in value.items() for bad in plain_leaves(v, f"{path}.{k}")]
    if isinstance(value, (list, tuple)):
        return [bad for k, v in enumerate(value) for bad in plain_leaves(v, f"{path}[{k}]")]
    if isinstance(value, (torch.Tensor, np.ndarray, str, int, float, bool, type(None), np.generic)):
        return []
    return [f"{path}: {type(value).__name__}"]


def assert_same(a: dict[int, torch.Tensor], b: dict[int, torch.Tensor]) -> None:
    """The same scores, exactly, period by period (NaN equal to NaN)."""
    _expect(a.keys() == b.keys(), f"scored periods differ: {sorted(a)} vs {sorted(b)}")
    for index in a:
        torch.testing.assert_close(a[index], b[index], rtol=0, atol=0, equal_nan=True,
                                   msg=lambda m, i=index: f"period {i}: {m}")


# ----------------------------------------------------------------------------------------------
# The checks

def check_scores(world: ContractWorld, name: str) -> None:
    """Test-then-train: finite float scores of shape [rows, candidates]; scoring is read-only."""
    strategy = world.fresh(name)
    scores = world.walk(strategy, world.replayed)
    scored = [p for p in world.replayed if p.role in SCORED_ROLES]
    _expect(sorted(scores) == [p.index for p in scored], "not every scored period was scored")
    for period in scored:
        s = scores[period.index]
        shape = (len(period), world.candidates[period.index].shape[1])
        _expect(tuple(s.shape) == shape, f"{name}: period {period.index} scores of shape "
                                         f"{tuple(s.shape)}, expected {shape}")
        _expect(s.dtype.is_floating_point, f"{name}: scores of dtype {s.dtype}, expected floats")
        _expect(bool(torch.isfinite(s).all()), f"{name}: period {period.index} has non-finite scores")
    last = scored[-1]
    assert_same({last.index: scores[last.index]}, {last.index: world.score(strategy, last)})


def check_deterministic(world: ContractWorld, name: str) -> None:
    """Two strategies built with the same seed give the same scores, exactly."""
    assert_same(world.walk(world.fresh(name), world.replayed), world.walk(world.fresh(name), world.replayed))


def check_state_round_trip(world: ContractWorld, name: str) -> None:
    """A strategy rebuilt from ``state_dict`` after two offline updates scores, updates and scores
    again exactly as the original does."""
    periods = world.replayed
    original = world.fresh(name)
    world.walk(original, periods[:2], is_last=False)  # updated on offline periods
    state = original.state_dict()
    bad = plain_leaves(state)
    _expect(bad == [], f"{name}: state_dict holds values that are not tensors, arrays or JSON-able: {bad}")
    restored = world.fresh(name)
    restored.load_state_dict(copy.deepcopy(state))
    nxt, after = periods[2], periods[3]
    assert_same({nxt.index: world.score(original, nxt)}, {nxt.index: world.score(restored, nxt)})
    original.update(nxt)
    restored.update(nxt)
    assert_same({after.index: world.score(original, after)}, {after.index: world.score(restored, after)})


def check_empty_period_refused(world: ContractWorld, name: str) -> None:
    """An update on a period without rows is a DataError."""
    strategy = world.fresh(name)
    try:
        strategy.update(empty_period(world.replayed[0]))
    except DataError as err:
        _expect("no interactions" in str(err), f"{name}: unexpected message {err}")
        return
    raise AssertionError(f"{name}: an update on an empty period was accepted")


def check_indices_beyond_tables_refused(world: ContractWorld, name: str, column: str = "users") -> None:
    """An update with a user (``column="users"``) or item index beyond the tables is a DataError."""
    strategy = world.fresh(name)
    period = world.replayed[0]
    limit = world.timeline.log.n_users if column == "users" else world.timeline.log.n_items
    values = getattr(period, column).copy()
    values[len(values) // 2] = limit
    try:
        strategy.update(replace(period, **{column: values}))
    except DataError as err:
        _expect("beyond" in str(err), f"{name}: unexpected message {err}")
        return
    raise AssertionError(f"{name}: an update with {column} beyond the tables was accepted")


CHECKS = (check_scores, check_deterministic, check_state_round_trip, check_empty_period_refused,
          check_indices_beyond_tables_refused)


def check_strategy(strategy: type[Strategy] | str, overrides: dict | None = None,
                   world: ContractWorld | None = None) -> str:
    """Run every contract check on a Strategy subclass (registered on the way) or a registered
    name, with settings ``overrides``; raises AssertionError naming the first breach. Returns
    the strategy's registered name."""
    name = strategy if isinstance(strategy, str) else register_class(strategy)
    world = world or ContractWorld()
    if overrides is not None:
        world.overrides = {**world.overrides, name: dict(overrides)}
    for check in CHECKS:
        check(world, name)
    check_indices_beyond_tables_refused(world, name, "items")
    return name


__all__ = ["CHECKS", "CONTRACT_PLAN", "CONTRACT_SEED", "ContractWorld", "FAST_OVERRIDES", "TINY_MF",
           "assert_same", "check_deterministic", "check_empty_period_refused",
           "check_indices_beyond_tables_refused", "check_scores", "check_state_round_trip",
           "check_strategy", "empty_period", "fast_overrides", "plain_leaves", "random_rows",
           "tiny_log", "tiny_timeline"]
