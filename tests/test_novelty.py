"""The new-item prior (strategies/novelty.py): hand-computed values, a per-row twin, no leak of the
scored row or later rows, the wrapper's ranking at weight 0, and production = replay."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from _production_data import tiny_settings
from smlrec.data.pairs import PairIndex
from smlrec.data.periods import Period
from smlrec.errors import ConfigError
from smlrec.strategies import StrategyContext, create_strategy, strategy_settings
from smlrec.strategies.novelty import NEVER, NoveltySettings, NoveltyTracker, zscore_rows
from smlrec.testing import TINY_MF, tiny_timeline
from test_production import HISTORY, check_production_equals_replay


def make_period(users, items, start: int = 0, seen: PairIndex | None = None, index: int = 3) -> Period:
    users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
    n = len(users)
    return Period(index=index, role="test", start=start, users=users, items=items,
                  times=np.arange(n, dtype=np.int64), items_seen=np.arange(1, n + 1, dtype=np.int64),
                  seen=seen if seen is not None else PairIndex.from_log(users, items, start))


def tracker_after(settings: NoveltySettings, n_items: int, periods: list[list[int]]) -> NoveltyTracker:
    tracker = NoveltyTracker(settings, n_items)
    for items in periods:
        tracker.observe(np.asarray(items, np.int64))
    return tracker


def test_hand_computed_prior():
    # Updates: [0, 1, 1] then [1, 2]: item 0 first seen at clock 0, 1 at 0, 2 at 1; clock is 2.
    tracker = tracker_after(NoveltySettings(max_age=1, window=0, carry=1.0), 8, [[0, 1, 1], [1, 2]])
    assert tracker.first_seen.tolist() == [0, 0, 1, NEVER, NEVER, NEVER, NEVER, NEVER] and tracker.clock == 2
    period = make_period(users=[0, 1, 2, 3], items=[5, 5, 2, 5])
    prior = tracker.prior(period, slice(0, 4), np.tile([5, 2, 0, 7], (4, 1)))
    expected = np.array([
        [0.0, math.log(2), 0.0, 0.0],          # row 0: 5 not seen yet; 2 is 1 period old, count 1 last period
        [math.log(2), math.log(2), 0.0, 0.0],  # row 1: 5 seen once before (age 0)
        [math.log(3), math.log(2), 0.0, 0.0],  # row 2: 5 twice; row 2's own item 2 is not counted
        [math.log(3), math.log(3), 0.0, 0.0],  # row 3: 2 once in the period + 1 carried
    ])
    # item 0 is 2 periods old (> max_age 1); item 7 never seen
    np.testing.assert_allclose(prior, expected, rtol=0, atol=1e-12)
    windowed = tracker_after(NoveltySettings(max_age=0, window=1, carry=0.0), 8, [[0, 1, 1], [1, 2]])
    got = windowed.prior(period, slice(0, 4), np.tile([5, 2], (4, 1)))
    # window 1: only the row just before counts; max_age 0: only items new in the scored period
    np.testing.assert_allclose(got, [[0, 0], [math.log(2), 0], [math.log(2), 0], [0, 0]], atol=1e-12)


def slow_prior(tracker: NoveltyTracker, period: Period, r: int, item: int) -> float:
    """The prior of one candidate at one row, by a loop over the period's earlier rows."""
    s = tracker.settings
    count, seen_in_period = 0, False
    for k in range(r):
        recorded = bool(period.seen.contains(period.users[k:k + 1], period.items[k:k + 1],
                                             np.array([period.start + k]))[0])
        if not recorded or period.items[k] != item:
            continue
        seen_in_period = True
        if s.window == 0 or k >= r - s.window:
            count += 1
    first = int(tracker.first_seen[item])
    if first == NEVER and not seen_in_period:
        return 0.0
    age = tracker.clock - first if first != NEVER else 0
    if age > s.max_age:
        return 0.0
    return math.log1p(count + s.carry * tracker.last_counts[item])


@pytest.mark.parametrize("settings", [NoveltySettings(), NoveltySettings(max_age=0, window=7, carry=0.0),
                                      NoveltySettings(max_age=2, window=3, carry=0.5)])
def test_vectorised_prior_equals_the_per_row_twin(settings):
    rng = np.random.default_rng(5)
    n_items = 40
    tracker = tracker_after(settings, n_items, [rng.integers(0, 15, 60).tolist(),
                                                rng.integers(10, 25, 60).tolist(),
                                                rng.integers(20, 30, 60).tolist()])
    users = rng.integers(0, 12, 50)
    items = rng.integers(22, 40, 50)
    period = make_period(users, items, start=180)
    # a foreign pair index: rows (user, 0) it does not hold count for nothing (production's placeholders)
    placeholders = make_period(users, np.where(rng.random(50) < 0.5, 0, items), start=180,
                               seen=PairIndex.from_log(users, items, 180))
    for p in (period, placeholders):
        candidates = rng.integers(0, n_items, (50, 9))
        candidates[:, 0] = p.items
        for rows in (slice(0, 50), slice(13, 31)):
            fast = tracker.prior(p, rows, candidates[rows])
            slow = np.array([[slow_prior(tracker, p, r, int(c)) for c in candidates[r]]
                             for r in range(rows.start, rows.stop)])
            np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)


def leaks(prior_fn, n_items: int = 30, seed: int = 0) -> bool:
    """Whether the prior of row r changes when row r or any later row is altered."""
    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, 8, 40), rng.integers(0, n_items, 40)
    candidates = np.tile(np.arange(n_items), (40, 1))
    base = prior_fn(make_period(users, items), candidates)
    for r in (0, 5, 20, 39):
        altered = items.copy()
        altered[r:] = rng.integers(0, n_items, 40 - r)
        other = prior_fn(make_period(users, altered), candidates)
        if not np.array_equal(base[: r + 1], other[: r + 1]):
            return True
    return False


def test_the_prior_never_reads_the_scored_row_or_later_and_the_check_catches_a_leak():
    tracker = tracker_after(NoveltySettings(max_age=1), 30, [list(range(10)), list(range(5, 15))])
    assert not leaks(lambda p, c: tracker.prior(p, slice(0, len(p)), c))

    def leaky(period, candidates):
        # the prior of row r computed at row r + 1 (reads rows up to and including r): a leak
        longer = make_period(np.append(period.users, 0), np.append(period.items, 0))
        return tracker.prior(longer, slice(1, len(period) + 1), candidates)

    assert leaks(leaky)


def test_zscore_rows_and_a_flat_row():
    scores = torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.0, 4.0]])
    z = zscore_rows(scores)
    np.testing.assert_allclose(z[0].numpy(), [-1.224745, 0.0, 1.224745], atol=1e-5)
    assert torch.equal(z[1], torch.zeros(3))


def _context() -> StrategyContext:
    timeline = tiny_timeline()
    return StrategyContext(n_users=timeline.log.n_users, n_items=timeline.log.n_items, mf=TINY_MF, seed=3,
                           name="pop-recent+new"), timeline


def test_weight_zero_ranks_as_the_inner_strategy_and_the_prior_lifts_new_items():
    context, timeline = _context()
    plain = create_strategy("pop-recent", StrategyContext(**{**context.__dict__, "name": "pop-recent"}))
    wrapped = create_strategy("pop-recent+new", context, {"weight": 0.0})
    boosted = create_strategy("pop-recent+new", context, {"weight": 5.0, "max_age": 100, "carry": 0.0})
    pretrain, rest = timeline.pretrain_data, timeline.periods[timeline.plan.pretrain:]
    for s in (plain, wrapped, boosted):
        s.start(pretrain, {})
        for p in rest[:-1]:
            s.update(p)
    last = rest[-1]
    candidates = torch.arange(timeline.log.n_items).expand(len(last), -1)
    rows = slice(0, len(last))
    a, b = plain.score(last, rows, candidates), wrapped.score(last, rows, candidates)
    assert torch.equal(torch.argsort(a, dim=1, stable=True), torch.argsort(b, dim=1, stable=True))
    c = boosted.score(last, rows, candidates)
    prior = boosted.tracker.prior(last, rows, candidates.numpy())
    # the tiny log's items are all old: with max_age 100 each gets a prior once counted in the period
    assert (prior[0] == 0).all() and (prior > 0).any()
    assert torch.allclose(c, zscore_rows(a) + 5.0 * torch.from_numpy(prior.astype(np.float32)), atol=1e-5)


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="weight"):
        strategy_settings("pop-recent+new", {"weight": -1.0})
    with pytest.raises(ConfigError, match="max_age"):
        strategy_settings("itemknn+new", {"max_age": -1})
    context, _ = _context()
    with pytest.raises(ConfigError, match="already carries the novelty prior"):
        create_strategy("pop-recent+new", context, {"inner": "itemknn+new"})
    with pytest.raises(ConfigError, match="unknown strategy"):
        create_strategy("pop-recent+new", context, {"inner": "nope"})


@pytest.mark.parametrize("strategy", ["pop-recent+new", "itemknn+new"])
def test_production_serves_the_replay_scores(tmp_path, strategy):
    check_production_equals_replay(tmp_path, strategy, tiny_settings(strategy, HISTORY))


def test_a_new_period_object_of_the_same_shape_is_not_served_from_the_cache():
    tracker = tracker_after(NoveltySettings(max_age=5), 10, [[0, 1]])
    candidates = np.tile(np.arange(10), (3, 1))
    first = tracker.prior(make_period([0, 1, 2], [4, 4, 4]), slice(0, 3), candidates)
    second = tracker.prior(make_period([0, 1, 2], [6, 6, 6]), slice(0, 3), candidates)
    assert first[2, 4] == pytest.approx(math.log(3)) and first[2, 6] == 0.0
    assert second[2, 6] == pytest.approx(math.log(3)) and second[2, 4] == 0.0
