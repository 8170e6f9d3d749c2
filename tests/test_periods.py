"""Cutting logs into periods: equal counts, calendar windows, day cuts, and the plan's roles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from smlrec.data.log import InteractionLog
from smlrec.data.periods import (Plan, build_timeline, concat_periods, parse_duration,
                                 split_day_cuts, split_equal_count, split_every)
from smlrec.errors import ConfigError, DataError

from helpers import tiny_log

DAY = 86400
MIDNIGHT = 1_609_459_200  # 2021-01-01T00:00:00Z


@pytest.mark.parametrize("n_rows", [5, 7, 10, 49, 100, 101, 999, 1000, 12345])
@pytest.mark.parametrize("n_periods", [1, 2, 3, 5, 7, 10, 20, 40])
def test_equal_count_partitions_rows(n_rows, n_periods):
    if n_rows < n_periods:
        with pytest.raises(DataError, match="fewer than"):
            split_equal_count(n_rows, n_periods)
        return
    bounds = split_equal_count(n_rows, n_periods)
    assert bounds[0] == 0 and bounds[-1] == n_rows and len(bounds) == n_periods + 1
    sizes = np.diff(bounds)
    assert sizes.min() >= 1
    assert sizes.max() - sizes.min() <= 1
    assert sizes.sum() == n_rows


def test_equal_count_exact_sizes():
    assert list(np.diff(split_equal_count(10, 3))) in ([3, 3, 4], [3, 4, 3], [4, 3, 3])
    assert list(split_equal_count(12, 4)) == [0, 3, 6, 9, 12]
    with pytest.raises(ConfigError):
        split_equal_count(10, 0)


def test_equal_count_timeline_is_time_ordered():
    log = tiny_log(n_rows=103)
    plan = Plan(2, 2, 1, 2)
    timeline = build_timeline(log, split_equal_count(len(log), 7), plan)
    assert [len(p) for p in timeline.periods] and sum(len(p) for p in timeline.periods) == 103
    for before, after in zip(timeline.periods, timeline.periods[1:]):
        assert before.times[-1] <= after.times[0]
        assert after.start == before.start + len(before)
    np.testing.assert_array_equal(np.concatenate([p.users for p in timeline.periods]), log.user_idx)


def test_every_one_day_windows_start_at_midnight():
    times = np.array([MIDNIGHT + 5, MIDNIGHT + DAY - 1, MIDNIGHT + DAY, MIDNIGHT + DAY + 3600,
                      MIDNIGHT + 2 * DAY + 7])
    assert list(split_every(times, "1D")) == [0, 2, 4, 5]


def test_every_eight_hours_boundaries_at_window_edges():
    h = 3600
    times = np.array([MIDNIGHT + 1 * h, MIDNIGHT + 8 * h - 1, MIDNIGHT + 8 * h, MIDNIGHT + 15 * h,
                      MIDNIGHT + 16 * h, MIDNIGHT + 24 * h + 1])
    # windows [0,8h) [8h,16h) [16h,24h) [24h,32h)
    assert list(split_every(times, "8h")) == [0, 2, 4, 5, 6]


def test_every_aligned_to_midnight_of_first_day_not_first_row():
    h = 3600
    times = np.array([MIDNIGHT + 7 * h, MIDNIGHT + 9 * h])
    # windows of 8h from midnight: 7h is in [0,8h), 9h in [8h,16h)
    assert list(split_every(times, "8h")) == [0, 1, 2]


def test_every_in_a_timezone():
    # Oslo is UTC+1 in January: local midnight of Jan 2 is 23:00 UTC on Jan 1.
    times = np.array([MIDNIGHT + 22 * 3600 + 3599, MIDNIGHT + 23 * 3600, MIDNIGHT + 23 * 3600 + 60])
    assert list(split_every(times, "1D", "Europe/Oslo")) == [0, 1, 3]
    assert list(split_every(times, "1D", "UTC")) == [0, 3]


def test_every_empty_window_is_an_error_mentioning_drop_empty():
    times = np.array([MIDNIGHT, MIDNIGHT + 2 * DAY + 1])
    with pytest.raises(DataError, match="--drop-empty") as info:
        split_every(times, "1D")
    assert "2021-01-02" in str(info.value)


def test_every_drop_empty_skips_empty_windows():
    times = np.array([MIDNIGHT, MIDNIGHT + 10, MIDNIGHT + 2 * DAY + 1, MIDNIGHT + 5 * DAY])
    assert list(split_every(times, "1D", drop_empty=True)) == [0, 2, 3, 4]


@pytest.mark.parametrize("text, seconds", [("1D", DAY), ("8h", 8 * 3600), ("30min", 1800),
                                           ("2W", 14 * DAY), ("45s", 45)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "D", "0h", "-1D", "1 fortnight", "1.5h"])
def test_parse_duration_errors(text):
    with pytest.raises(ConfigError, match="window length"):
        parse_duration(text)


def _utc(text: str) -> int:
    return int(pd.Timestamp(text, tz="UTC").timestamp())


def test_day_cuts_utc_at_exact_hours():
    times = np.array([_utc("2021-01-01 09:59:59"), _utc("2021-01-01 10:00:00"),
                      _utc("2021-01-01 16:59:59"), _utc("2021-01-01 17:00:00"),
                      _utc("2021-01-01 23:59:59"), _utc("2021-01-02 00:00:00")])
    assert list(split_day_cuts(times, [10, 17])) == [0, 1, 3, 5, 6]


@pytest.mark.parametrize("day", ["2021-01-15", "2021-07-15"])  # winter (UTC+1) and summer (UTC+2)
def test_day_cuts_in_oslo(day):
    zone = "Europe/Oslo"

    def local(clock: str) -> int:
        return int(pd.Timestamp(f"{day} {clock}", tz=zone).timestamp())

    times = np.array([local("00:00:00"), local("09:59:59"), local("10:00:00"), local("16:59:59"),
                      local("17:00:00"), local("23:59:59")])
    assert list(split_day_cuts(times, [10, 17], zone)) == [0, 2, 4, 6]
    # in UTC the same instants are cut elsewhere (Oslo is ahead of UTC)
    assert list(split_day_cuts(times, [10, 17], "UTC")) != [0, 2, 4, 6]


def test_day_cuts_fractional_hour():
    times = np.array([_utc("2021-01-01 10:29:59"), _utc("2021-01-01 10:30:00")])
    assert list(split_day_cuts(times, [10.5])) == [0, 1, 2]


def test_day_cuts_empty_slot_and_drop_empty():
    times = np.array([_utc("2021-01-01 08:00"), _utc("2021-01-01 18:00")])  # 10-17h slot empty
    with pytest.raises(DataError, match="--drop-empty") as info:
        split_day_cuts(times, [10, 17])
    assert "10h-17h" in str(info.value)
    assert list(split_day_cuts(times, [10, 17], drop_empty=True)) == [0, 1, 2]


@pytest.mark.parametrize("cuts", [[], [0], [24], [10, 10], [-1, 5]])
def test_day_cuts_invalid(cuts):
    with pytest.raises(ConfigError, match="day cuts"):
        split_day_cuts(np.array([MIDNIGHT]), cuts)


def test_unknown_timezone():
    with pytest.raises(ConfigError, match="timezone"):
        split_every(np.array([MIDNIGHT]), "1D", "Mars/Olympus")


def test_plan_roles():
    plan = Plan(2, 3, 1, 2)
    roles = [plan.role(i) for i in range(plan.total)]
    assert roles == ["pretrain"] * 2 + ["offline"] * 3 + ["validation"] + ["test"] * 2
    plan0 = Plan(1, 0, 0, 2)
    assert [plan0.role(i) for i in range(3)] == ["pretrain", "test", "test"]


def test_timeline_roles_and_labels():
    log = tiny_log(n_rows=80)
    plan = Plan(2, 3, 1, 2)
    timeline = build_timeline(log, split_equal_count(len(log), 8), plan)
    assert [p.role for p in timeline.periods] == [plan.role(i) for i in range(8)]
    assert [p.index for p in timeline.periods] == list(range(8))
    assert all(p.label for p in timeline.periods)
    pre = timeline.pretrain_data
    assert len(pre) == len(timeline.periods[0]) + len(timeline.periods[1])
    assert pre.start == 0
    np.testing.assert_array_equal(pre.positions, np.arange(len(pre)))
    np.testing.assert_array_equal(timeline.periods[3].items_seen,
                                  log.items_seen[timeline.periods[3].positions])


def test_first_seen_period():
    log = InteractionLog.from_arrays(["a", "b", "a", "c"], ["x", "x", "y", "z"], [1, 2, 3, 4])
    timeline = build_timeline(log, np.array([0, 1, 2, 3, 4]), Plan(1, 1, 1, 1))
    users, items = timeline.first_seen_period()
    assert list(users) == [0, 1, 3]
    assert list(items) == [0, 2, 3]


def test_plan_needs_more_periods_than_the_log_has():
    log = tiny_log(n_rows=50)
    with pytest.raises(DataError, match="fewer than the plan needs"):
        build_timeline(log, split_equal_count(len(log), 4), Plan(2, 2, 1, 1))


def test_plan_covers_fewer_periods_than_the_log_has():
    log = tiny_log(n_rows=50)
    with pytest.raises(ConfigError, match="plan"):
        build_timeline(log, split_equal_count(len(log), 8), Plan(2, 2, 1, 1))


def test_empty_period_in_boundaries():
    log = tiny_log(n_rows=10)
    with pytest.raises(DataError, match="period 1 is empty"):
        build_timeline(log, np.array([0, 5, 5, 8, 10]), Plan(1, 1, 1, 1))


def test_concat_periods_needs_periods():
    with pytest.raises(ConfigError):
        concat_periods([])


@pytest.mark.parametrize("text", ["5,8,2", "5,8,2,5,1", "a,b,c,d", "5,-1,2,5", "5;8;2;5", "",
                                  "5,8,2.5,5"])
def test_plan_parse_errors(text):
    with pytest.raises(ConfigError, match="P,O,V,T"):
        Plan.parse(text)


def test_plan_parse_and_checks():
    assert Plan.parse("5, 8,2 ,5") == Plan(5, 8, 2, 5)
    with pytest.raises(ConfigError, match="pretrain"):
        Plan.parse("0,1,1,1")
    with pytest.raises(ConfigError, match="validation or test"):
        Plan.parse("1,1,0,0")
    with pytest.raises(ConfigError):
        Plan(1, -1, 1, 1)
