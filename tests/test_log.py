"""Reading interaction logs: every format, the time order, ids, and clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from smlrec.data.log import InteractionLog, ReadOptions, read_log
from smlrec.errors import DataError

from helpers import write_csv

ROWS = [("a", "x", 30), ("b", "y", 10), ("a", "y", 20), ("c", "x", 10)]
# Stable time sort: (b,y,10), (c,x,10), (a,y,20), (a,x,30)


def _assert_expected(log: InteractionLog) -> None:
    assert len(log) == 4
    assert list(log.time) == [10, 10, 20, 30]
    assert [str(log.user_ids[u]) for u in log.user_idx] == ["b", "c", "a", "a"]
    assert [str(log.item_ids[i]) for i in log.item_idx] == ["y", "x", "y", "x"]
    # first-appearance order after the sort
    assert list(log.user_idx) == [0, 1, 2, 2]
    assert list(log.item_idx) == [0, 1, 0, 1]


def test_generic_csv_comma(tmp_path):
    path = write_csv(tmp_path / "log.csv", "user_id,item_id,timestamp",
                     [f"{u},{i},{t}" for u, i, t in ROWS])
    log = read_log(path)
    _assert_expected(log)
    assert log.source == str(path)
    assert len(log.sha256) == 64


@pytest.mark.parametrize("sep", [";", "|", "\t"])
def test_generic_csv_detects_separator(tmp_path, sep):
    path = write_csv(tmp_path / "log.txt", sep.join(["user", "item", "time"]),
                     [sep.join(map(str, r)) for r in ROWS])
    _assert_expected(read_log(path))


def test_generic_csv_explicit_sep_and_columns(tmp_path):
    path = write_csv(tmp_path / "log.csv", "who;what;when;extra",
                     [f"{u};{i};{t};zz" for u, i, t in ROWS])
    log = read_log(path, ReadOptions(sep=";", user_col="who", item_col="what", time_col="when"))
    _assert_expected(log)


def test_named_columns_override_defaults(tmp_path):
    # 'user' exists but --user-col points at another column.
    path = write_csv(tmp_path / "log.csv", "user,buyer,item,timestamp",
                     [f"zz,{u},{i},{t}" for u, i, t in ROWS])
    _assert_expected(read_log(path, ReadOptions(user_col="buyer")))


def test_tsv(tmp_path):
    path = write_csv(tmp_path / "log.tsv", "user\titem\ttimestamp",
                     [f"{u}\t{i}\t{t}" for u, i, t in ROWS])
    _assert_expected(read_log(path))


def test_parquet_unix_seconds(tmp_path):
    frame = pd.DataFrame({"user": [r[0] for r in ROWS], "item": [r[1] for r in ROWS],
                          "timestamp": [r[2] for r in ROWS]})
    path = tmp_path / "log.parquet"
    frame.to_parquet(path)
    _assert_expected(read_log(path))


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_parquet_datetime_column(tmp_path, unit):
    stamps = pd.to_datetime(["2021-01-01 00:00:30", "2021-01-01 00:00:10",
                             "2021-01-01 00:00:20", "2021-01-01 00:00:10"]).astype(f"datetime64[{unit}]")
    frame = pd.DataFrame({"user": ["a", "b", "a", "c"], "item": ["x", "y", "y", "x"], "time": stamps})
    path = tmp_path / "log.parquet"
    frame.to_parquet(path)
    log = read_log(path)
    base = 1609459200  # 2021-01-01T00:00:00Z
    assert list(log.time) == [base + 10, base + 10, base + 20, base + 30]


def test_movielens_ratings_csv(tmp_path):
    path = write_csv(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp",
                     ["1,10,4.0,30", "2,20,3.5,10", "1,20,5.0,20", "3,10,1.0,10"])
    log = read_log(path)
    assert list(log.time) == [10, 10, 20, 30]
    assert list(log.user_ids) == [2, 3, 1]
    assert list(log.item_ids) == [20, 10]
    assert log.user_ids.dtype.kind == "i"


def test_movielens_min_rating(tmp_path):
    path = write_csv(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp",
                     ["1,10,4.0,30", "2,20,3.5,10", "1,20,5.0,20", "3,10,1.0,10"])
    log = read_log(path, ReadOptions(min_rating=4.0))
    assert list(log.time) == [20, 30]
    assert list(log.user_ids) == [1]
    assert list(log.item_ids) == [20, 10]


def test_movielens_1m_dat(tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text("1::10::4::30\n2::20::3::10\n1::20::5::20\n3::10::1::10\n")
    log = read_log(path)
    assert list(log.time) == [10, 10, 20, 30]
    assert list(log.user_ids[log.user_idx]) == [2, 3, 1, 1]
    assert list(log.item_ids[log.item_idx]) == [20, 10, 20, 10]
    assert len(read_log(path, ReadOptions(min_rating=4))) == 2


def test_movielens_100k_udata(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("1\t10\t4\t30\n2\t20\t3\t10\n1\t20\t5\t20\n3\t10\t1\t10\n")
    log = read_log(path)
    assert list(log.time) == [10, 10, 20, 30]
    assert list(log.user_ids[log.user_idx]) == [2, 3, 1, 1]
    # explicit format name, any file name
    other = tmp_path / "data.tsv"
    other.write_bytes(path.read_bytes())
    assert list(read_log(other, ReadOptions(format="movielens-100k")).time) == [10, 10, 20, 30]


def test_recbole_inter(tmp_path):
    path = write_csv(tmp_path / "ml.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float",
                     ["a\tx\t4\t30", "b\ty\t3\t10", "a\ty\t5\t20", "c\tx\t1\t10"])
    _assert_expected(read_log(path))
    filtered = read_log(path, ReadOptions(min_rating=4))
    assert list(filtered.time) == [20, 30]


def test_iso8601_times(tmp_path):
    path = write_csv(tmp_path / "log.csv", "user,item,time",
                     ["a,x,2021-01-01T00:00:30Z", "b,y,2021-01-01T00:00:10Z",
                      "a,y,2021-01-01T01:00:20+01:00", "c,x,2021-01-01 00:00:10"])
    log = read_log(path)
    base = 1609459200
    assert list(log.time) == [base + 10, base + 10, base + 20, base + 30]
    assert [str(log.user_ids[u]) for u in log.user_idx] == ["b", "c", "a", "a"]


def test_fractional_unix_seconds_are_floored(tmp_path):
    path = write_csv(tmp_path / "log.csv", "user,item,time", ["a,x,10.9", "b,y,5.2"])
    assert list(read_log(path).time) == [5, 10]


def test_min_rating_generic_csv(tmp_path):
    path = write_csv(tmp_path / "log.csv", "user,item,stars,time",
                     ["a,x,1,1", "b,y,4,2", "c,z,5,3", "d,w,3.9,4"])
    log = read_log(path, ReadOptions(min_rating=4))
    assert [str(u) for u in log.user_ids[log.user_idx]] == ["b", "c"]


def test_duplicates_are_kept(tmp_path):
    path = write_csv(tmp_path / "log.csv", "user,item,time", ["a,x,1", "a,x,1", "a,x,2"])
    log = read_log(path)
    assert len(log) == 3
    assert list(log.user_idx) == [0, 0, 0] and list(log.item_idx) == [0, 0, 0]


def test_stable_sort_keeps_file_order_of_equal_times(tmp_path):
    rows = [f"u{k},i{k},{100 - (k % 3)}" for k in range(12)]
    log = read_log(write_csv(tmp_path / "log.csv", "user,item,time", rows))
    # times 98: k=2,5,8,11; 99: 1,4,7,10; 100: 0,3,6,9 -- each group in file order
    order = [int(str(log.user_ids[u])[1:]) for u in log.user_idx]
    assert order == [2, 5, 8, 11, 1, 4, 7, 10, 0, 3, 6, 9]


def test_items_seen_is_a_prefix_count():
    log = InteractionLog.from_arrays(["a", "b", "a", "c", "b"], ["x", "y", "x", "z", "y"],
                                     [1, 2, 3, 4, 5])
    assert list(log.item_idx) == [0, 1, 0, 2, 1]
    assert list(log.items_seen) == [1, 2, 2, 3, 3]


# ---------------------------------------------------------------------------------------------
# Errors: each must be a DataError naming the file and the line or column and the problem.

def _error(path, options=None) -> str:
    with pytest.raises(DataError) as info:
        read_log(path, options)
    message = str(info.value)
    assert str(path) in message
    return message


def test_missing_default_column(tmp_path):
    path = write_csv(tmp_path / "log.csv", "user,product,time", ["a,x,1"])
    message = _error(path)
    assert "item" in message and "--item-col" in message and "product" in message


def test_misnamed_column(tmp_path):
    path = write_csv(tmp_path / "log.csv", "user,item,time", ["a,x,1"])
    message = _error(path, ReadOptions(time_col="when"))
    assert "'when'" in message and "no time column" in message


def test_movielens_missing_column(tmp_path):
    path = write_csv(tmp_path / "ratings.csv", "userId,itemId,rating,timestamp", ["1,2,3,4"])
    assert "movieId" in _error(path)


def test_non_numeric_id_in_movielens(tmp_path):
    path = write_csv(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp",
                     ["1,10,4,30", "2,abc,3,10"])
    message = _error(path)
    assert "line 3" in message and "movieId" in message and "'abc'" in message


def test_non_numeric_id_in_udata(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("1\t10\t4\t30\n2\t20\t3\t10\nx7\t20\t5\t20\n")
    message = _error(path)
    assert "line 3" in message and "non-numeric" in message and "'x7'" in message


def test_unparsable_time(tmp_path):
    path = write_csv(tmp_path / "log.csv", "user,item,time",
                     ["a,x,2021-01-01T00:00:00", "b,y,yesterday", "c,z,2021-01-02"])
    message = _error(path)
    assert "line 3" in message and "'time'" in message and "yesterday" in message


@pytest.mark.parametrize("row, column", [(",x,1", "user"), ("a,,1", "item"), ("a,x,", "time"),
                                         ("NaN,x,1", "user"), ("a,x,NaN", "time")])
def test_empty_or_nan_values(tmp_path, row, column):
    path = write_csv(tmp_path / "log.csv", "user,item,time", ["b,y,1", "c,z,2", row])
    message = _error(path)
    assert "line 4" in message and f"'{column}'" in message and "missing" in message


def test_empty_file(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("")
    assert "empty" in _error(path)


def test_blank_lines_only(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("\n\n")
    assert "empty" in _error(path)


@pytest.mark.parametrize("name, header", [("log.csv", "user,item,time"),
                                          ("ratings.csv", "userId,movieId,rating,timestamp"),
                                          ("x.inter", "user_id:token\titem_id:token\ttimestamp:float")])
def test_header_only(tmp_path, name, header):
    path = tmp_path / name
    path.write_text(header + "\n")
    assert "no rows" in _error(path)


def test_malformed_row(tmp_path):
    path = write_csv(tmp_path / "log.csv", "user,item,time", ["a,x,1", "b,y,2", "c,z,3,4,5"])
    message = _error(path, ReadOptions(sep=","))
    assert "malformed" in message and "line 4" in message


def test_malformed_row_udata_too_few_fields(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("1\t10\t4\n2\t20\t3\n")
    assert "4 fields" in _error(path)


def test_non_numeric_rating_with_min_rating(tmp_path):
    path = write_csv(tmp_path / "log.csv", "user,item,rating,time", ["a,x,4,1", "b,y,good,2"])
    message = _error(path, ReadOptions(min_rating=3))
    assert "line 3" in message and "'rating'" in message and "good" in message


def test_min_rating_removes_everything(tmp_path):
    path = write_csv(tmp_path / "log.csv", "user,item,rating,time", ["a,x,1,1"])
    assert "rating >= 4" in _error(path, ReadOptions(min_rating=4))


@pytest.mark.parametrize("fmt", ["auto", "csv", "movielens", "movielens-1m", "recbole"])
def test_folder(tmp_path, fmt):
    folder = tmp_path / "logs.csv"
    folder.mkdir()
    assert "folder" in _error(folder, ReadOptions(format=fmt))


def test_missing_file(tmp_path):
    assert "no such file" in _error(tmp_path / "nope.csv")


def test_unknown_format(tmp_path):
    path = write_csv(tmp_path / "log.csv", "user,item,time", ["a,x,1"])
    assert "unknown format" in _error(path, ReadOptions(format="excel"))


def test_binary_garbage(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"\xff\xfe\x00\x81\x82\n\x90\x91,\x00\n")
    _error(path)


def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "log.parquet"
    path.write_text("user,item,time\na,x,1\n")
    assert "Parquet" in _error(path)


def test_unparsable_time_among_unix_seconds(tmp_path):
    path = write_csv(tmp_path / "log.csv", "user,item,time", ["a,x,100", "b,y,200", "c,z,soon", "d,w,300"])
    message = _error(path)
    assert "line 4" in message and "'soon'" in message


def test_unix_seconds_among_iso_times(tmp_path):
    path = write_csv(tmp_path / "log.csv", "user,item,time", ["a,x,2021-01-01", "b,y,1600000000"])
    message = _error(path)
    assert "line 3" in message and "1600000000" in message


@pytest.mark.parametrize("name, text, line", [
    ("log.csv", "\nuser,item,time\na,x,1\n\n   \nb,y,2\nc,,3\n", 7),
    ("u.data", "1\t2\t3\t4\n\n1\t2\t3\tlater\n", 3),
    ("ratings.csv", "userId,movieId,rating,timestamp\n\n1,2,3,4\n\n\n1,2.5,3,4\n", 6),
])
def test_error_line_counts_blank_lines(tmp_path, name, text, line):
    path = tmp_path / name
    path.write_text(text)
    assert f"line {line}," in _error(path)


def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item,time\n\na,x,1\n\nb,y,2\n\n")
    assert len(read_log(path)) == 2
