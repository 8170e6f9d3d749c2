"""The Yelp and Adressa raw readers, and the k-core filter.

The fixture files are written by tests/fixtures/make_fixtures.py; its docstring derives the
numbers asserted here. Each reader is also checked against a slow twin that reads the same file
line by line with the json module.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from smlrec.data import formats
from smlrec.data.filters import filter_k_core
from smlrec.data.log import InteractionLog, ReadOptions, read_log
from smlrec.data.periods import split_day_cuts
from smlrec.errors import ConfigError, DataError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
YELP = FIXTURES / "yelp" / "review_small.json"
ADRESSA = FIXTURES / "adressa" / "three_days"
OSLO_MIDNIGHT = 1483225200  # 2017-01-01 00:00 Europe/Oslo


def slow_yelp(path: Path) -> list[tuple[str, str, int]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            stamp = pd.Timestamp(record["date"], tz="UTC")
            rows.append((record["user_id"], record["business_id"], int(stamp.timestamp())))
    return rows


def slow_adressa(folder: Path) -> tuple[list[tuple[str, str, int]], int]:
    rows, skipped = [], 0
    for file in sorted(folder.iterdir()):
        for line in file.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record.get("id") is None:
                skipped += 1
            else:
                rows.append((record["userId"], record["id"], int(record["time"])))
    return rows, skipped


def as_rows(log: InteractionLog) -> list[tuple[str, str, int]]:
    return list(zip(log.user_ids[log.user_idx].tolist(), log.item_ids[log.item_idx].tolist(),
                    log.time.tolist()))


# ----------------------------------------------------------------------------------------------
# Yelp

def test_yelp_counts_and_rows_match_the_slow_twin():
    log = read_log(YELP, ReadOptions(format="yelp"))
    assert (len(log), log.n_users, log.n_items) == (240, 20, 30)
    assert log.time[0] == 1420070400 and log.time[-1] == 1420070400 + 239 * 6 * 3600
    assert np.all(np.diff(log.time) == 6 * 3600)  # the shuffled file comes out in time order
    expected = sorted(slow_yelp(YELP), key=lambda row: row[2])
    assert as_rows(log) == expected
    assert {"Zoë-ü", "用户七", "ユーザー", "user with space"} <= set(log.user_ids.tolist())
    assert {"café-øst", "餐厅"} <= set(log.item_ids.tolist())
    assert log.metadata["format"] == "yelp"


def test_yelp_small_blocks_give_the_same_log(monkeypatch):
    whole = read_log(YELP, ReadOptions(format="yelp"))
    monkeypatch.setattr(formats, "BLOCK_BYTES", 700)  # ~2 lines a block, blank line included
    blocks = read_log(YELP, ReadOptions(format="yelp"))
    assert as_rows(blocks) == as_rows(whole)


def test_yelp_date_only_and_gzip(tmp_path):
    path = tmp_path / "reviews.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.write('{"user_id": "a", "business_id": "x", "date": "2010-05-02"}\n')
        out.write('{"user_id": "b", "business_id": "x", "date": "2010-05-01 12:00:00", "stars": 5}')
    log = read_log(path, ReadOptions(format="yelp"))
    assert log.time.tolist() == [1272715200, 1272758400]  # 2010-05-01 12:00, 2010-05-02 00:00 UTC
    assert log.user_ids.tolist() == ["b", "a"]


@pytest.mark.parametrize("name, where, problem", [
    ("review_malformed.json", "line 4", "malformed JSON"),
    ("review_missing_business.json", "line 3, column 'business_id'", "missing field 'business_id'"),
    ("review_bad_date.json", "line 2, column 'date'", "unparsable date '01/02/2015'"),
])
def test_yelp_errors_name_file_and_line(name, where, problem):
    path = FIXTURES / "yelp" / name
    with pytest.raises(DataError) as caught:
        read_log(path, ReadOptions(format="yelp"))
    assert str(caught.value).startswith(f"{path}, {where}: ")
    assert problem in str(caught.value)


def test_yelp_error_line_counts_blank_lines_and_blocks(tmp_path, monkeypatch):
    lines = YELP.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[199])  # file line 200 (after the blank line 101)
    del record["user_id"]
    lines[199] = json.dumps(record)
    path = tmp_path / "review.json"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setattr(formats, "BLOCK_BYTES", 1000)
    with pytest.raises(DataError, match=r"review\.json, line 200, column 'user_id': missing field"):
        read_log(path, ReadOptions(format="yelp"))


def test_yelp_wrong_type_and_non_object(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"user_id": "a", "business_id": "x", "date": "2010-05-02"}\n'
                    '{"user_id": 17, "business_id": "x", "date": "2010-05-02"}\n')
    with pytest.raises(DataError, match=r"r\.json, line 2, column 'user_id': field 'user_id' should be text"):
        read_log(path, ReadOptions(format="yelp"))
    path.write_text('{"user_id": "a", "business_id": "x", "date": "2010-05-02"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"r\.json, line 2: expected a JSON object, got list"):
        read_log(path, ReadOptions(format="yelp"))


def test_yelp_rejects_a_folder():
    with pytest.raises(DataError, match="is a folder"):
        read_log(FIXTURES / "yelp", ReadOptions(format="yelp"))


# ----------------------------------------------------------------------------------------------
# Adressa

def test_adressa_folder_counts_skips_and_rows():
    log = read_log(ADRESSA, ReadOptions(format="adressa"))
    assert (len(log), log.n_users, log.n_items) == (165, 14, 26)
    assert log.metadata["skipped_events_without_article_id"] == 33
    assert log.metadata["files"] == 3
    rows, skipped = slow_adressa(ADRESSA)
    assert skipped == 33
    assert as_rows(log) == sorted(rows, key=lambda row: row[2])
    assert {"cx:ø-æ-å:1", "cx:用户"} <= set(log.user_ids.tolist())
    assert "artikkel-æøå" in log.item_ids.tolist()
    assert log.sha256 == ""  # a folder has no single file hash


def test_adressa_cuts_fall_at_10_and_17_oslo_time():
    log = read_log(ADRESSA, ReadOptions(format="adressa"))
    bounds = split_day_cuts(log.time, [10, 17], "Europe/Oslo")
    assert np.diff(bounds).tolist() == [23, 16, 16] * 3
    starts = log.time[bounds[:-1]]
    ends = log.time[bounds[1:] - 1]
    day = 86400
    for d in range(3):
        midnight = OSLO_MIDNIGHT + d * day
        # first events of each period: 00:00:00, 10:00:00, 17:00:00 local (UTC+1 in January)
        assert starts[3 * d: 3 * d + 3].tolist() == [midnight, midnight + 10 * 3600, midnight + 17 * 3600]
        # last events: 09:59:59, 16:59:59, 23:59:59 local
        assert ends[3 * d: 3 * d + 3].tolist() == [midnight + 10 * 3600 - 1, midnight + 17 * 3600 - 1,
                                                   midnight + day - 1]


def test_adressa_cut_in_utc_differs():
    log = read_log(ADRESSA, ReadOptions(format="adressa"))
    bounds = split_day_cuts(log.time, [10, 17], "UTC")
    # Oslo 00:00-00:59 on Jan 1 is Dec 31 in UTC: an extra period of 4 events in front.
    assert len(bounds) - 1 == 10 and bounds[1] == 4


def test_adressa_single_gz_file(tmp_path):
    source = ADRESSA / "20170101"
    path = tmp_path / "20170101.gz"
    with open(source, "rb") as raw, gzip.open(path, "wb") as out:
        shutil.copyfileobj(raw, out)
    log = read_log(path, ReadOptions(format="adressa"))
    assert len(log) == 55 and log.metadata["skipped_events_without_article_id"] == 11


@pytest.mark.parametrize("folder, where, problem", [
    ("bad_json", "line 4", "malformed JSON"),
    ("missing_user", "line 3, column 'userId'", "missing field 'userId'"),
    ("bad_time", "line 2, column 'time'", "should be a number, got 'yesterday'"),
])
def test_adressa_errors_name_file_and_line(folder, where, problem):
    path = FIXTURES / "adressa" / folder
    with pytest.raises(DataError) as caught:
        read_log(path, ReadOptions(format="adressa"))
    assert str(caught.value).startswith(f"{path / '20170101'}, {where}: ")
    assert problem in str(caught.value)


def test_adressa_without_any_article(tmp_path):
    (tmp_path / "day").write_text('{"userId": "a", "time": 5}\n{"userId": "b", "time": 6, "id": null}\n')
    with pytest.raises(DataError, match=r"no event with an article id \(2 events without one\)"):
        read_log(tmp_path, ReadOptions(format="adressa"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="the folder has no event files"):
        read_log(empty, ReadOptions(format="adressa"))


def test_folders_still_rejected_for_csv():
    with pytest.raises(DataError, match="is a folder"):
        read_log(ADRESSA, ReadOptions(format="csv"))


# ----------------------------------------------------------------------------------------------
# k-core

def small_log() -> InteractionLog:
    rows = [("u1", "a"), ("u1", "b"), ("u1", "c"), ("u2", "a"), ("u2", "b"), ("u3", "a"),
            ("u4", "d"), ("u5", "b"), ("u5", "e")]
    users, items = zip(*rows)
    return InteractionLog.from_arrays(np.array(users), np.array(items), np.arange(len(rows)) * 10)


def test_k_core_is_iterated_until_stable():
    # Pass 1 drops u3-a and u4-d (users with 1 row) and u1-c, u5-e (items c, e with 1 row);
    # then u5 has 1 row left, so pass 2 drops u5-b; pass 3 drops nothing. A single pass would
    # have kept u5-b.
    core = filter_k_core(small_log(), 2, 2)
    assert as_rows(core) == [("u1", "a", 0), ("u1", "b", 10), ("u2", "a", 30), ("u2", "b", 40)]
    assert core.user_ids.tolist() == ["u1", "u2"] and core.item_ids.tolist() == ["a", "b"]
    assert core.user_idx.tolist() == [0, 0, 1, 1] and core.item_idx.tolist() == [0, 1, 0, 1]
    assert core.metadata["k_core"] == {"min_user_interactions": 2, "min_item_interactions": 2,
                                       "passes": 3, "removed": 5}


def test_k_core_one_side_and_no_op():
    log = small_log()
    users_only = filter_k_core(log, 3, 0)  # only u1 has 3 rows
    assert as_rows(users_only) == [("u1", "a", 0), ("u1", "b", 10), ("u1", "c", 20)]
    items_only = filter_k_core(log, 0, 3)  # a and b have 3 rows each
    assert [(u, i) for u, i, _ in as_rows(items_only)] == [("u1", "a"), ("u1", "b"), ("u2", "a"),
                                                           ("u2", "b"), ("u3", "a"), ("u5", "b")]
    assert filter_k_core(log, 1, 0) is log


def test_k_core_errors():
    with pytest.raises(DataError, match="no interaction is left after the k-core filter"):
        filter_k_core(small_log(), 4, 4)
    with pytest.raises(ConfigError, match="min_user_interactions must be a whole number >= 0"):
        filter_k_core(small_log(), -1, 0)
