"""`smlrec data stats`: the dataset table (sizes, span, new users and items per period)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from smlrec.cli import main
from smlrec.data.log import InteractionLog
from smlrec.data.periods import Plan
from smlrec.data.stats import log_summary, period_stats

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def hand_log() -> InteractionLog:
    rows = [("u1", "a"), ("u2", "a"), ("u1", "b"),   # period 0
            ("u3", "a"), ("u1", "c"),                # period 1: u3 and c are new
            ("u3", "d"), ("u4", "d"), ("u2", "b")]   # period 2: u4 and d are new
    users, items = zip(*rows)
    return InteractionLog.from_arrays(np.array(users), np.array(items), 3600 * np.arange(8))


def test_period_stats_by_hand():
    table = period_stats(hand_log(), np.array([0, 3, 5, 8]))
    assert "role" not in table.columns  # no plan given
    assert table["interactions"].tolist() == [3, 2, 3]
    assert table["users"].tolist() == [2, 2, 3]
    assert table["items"].tolist() == [2, 2, 2]
    assert table["new_users"].tolist() == [2, 1, 1]
    assert table["new_items"].tolist() == [2, 1, 1]
    assert table["new_user_share"].tolist() == pytest.approx([1.0, 1 / 2, 1 / 3])
    assert table["new_item_share"].tolist() == pytest.approx([1.0, 1 / 2, 1 / 2])
    assert table["start"].tolist() == [pd.Timestamp(0, unit="s", tz="UTC"),
                                       pd.Timestamp(3 * 3600, unit="s", tz="UTC"),
                                       pd.Timestamp(5 * 3600, unit="s", tz="UTC")]
    assert table["end"].iloc[-1] == pd.Timestamp(7 * 3600, unit="s", tz="UTC")


def test_period_stats_roles_and_timezone():
    table = period_stats(hand_log(), np.array([0, 3, 5, 8]), Plan(1, 1, 0, 1), "Europe/Oslo")
    assert table["role"].tolist() == ["pretrain", "offline", "test"]
    assert str(table["start"].iloc[0]) == "1970-01-01 01:00:00+01:00"
    assert period_stats(hand_log(), np.array([0, 3, 5, 8]), Plan(1, 1, 1, 1)).columns[1] == "start"


def test_log_summary():
    assert log_summary(hand_log()) == {"interactions": 8, "users": 4, "items": 4, "first_time": 0,
                                       "last_time": 7 * 3600, "span_days": 7 / 24}


def test_cli_stats_on_adressa(capsys, tmp_path):
    out_csv = tmp_path / "periods.csv"
    code = main(["data", "stats", str(FIXTURES / "adressa" / "three_days"), "--preset", "adressa",
                 "--csv", str(out_csv)])
    assert code == 0
    text = capsys.readouterr().out
    assert "interactions 165   users 14   items 26" in text
    assert "skipped      33 events without an article id (from 3 files)" in text
    assert "2017-01-01 00:00 .. 2017-01-03 23:59 (Europe/Oslo), 3.0 days" in text
    assert "9 periods (day cuts 10,17h)" in text
    table = pd.read_csv(out_csv)
    assert table["interactions"].tolist() == [23, 16, 16] * 3
    assert table["start"].tolist()[:3] == ["2017-01-01 00:00:00+01:00", "2017-01-01 10:00:00+01:00",
                                          "2017-01-01 17:00:00+01:00"]
    assert table["new_users"].sum() == 14 and table["new_items"].sum() == 26


def test_cli_stats_on_yelp_with_preset_roles(capsys):
    assert main(["data", "stats", str(FIXTURES / "yelp" / "review_small.json"), "--preset", "yelp"]) == 0
    text = capsys.readouterr().out
    assert "interactions 240   users 20   items 30" in text
    assert "40 periods (equal counts)" in text
    assert text.count(" pretrain ") == 10 and text.count(" test ") == 7


def test_cli_stats_error_names_file_and_line(capsys):
    path = FIXTURES / "yelp" / "review_malformed.json"
    assert main(["data", "stats", str(path), "--format", "yelp"]) == 2
    assert f"smlrec data: error: {path}, line 4: malformed JSON" in capsys.readouterr().err
