"""Interaction logs: reading, validation, id vocabularies and the time order.

An :class:`InteractionLog` is the whole time-stamped log of implicit feedback, sorted by time
with a stable sort. Raw user and item ids are mapped to indices 0..n-1 **in order of first
appearance**, so the items seen up to row ``g`` are exactly the indices ``0..items_seen[g]-1``.
That makes the "items seen so far" pool of the evaluation protocol a prefix of the item table.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..errors import DataError
from ..ids import FLOAT_EXACT, INT64_MAX, WHOLE_TEXT

USER_COLUMNS = ("user", "user_id", "userid", "userId", "user_id:token", "uid")
ITEM_COLUMNS = ("item", "item_id", "itemid", "itemId", "item_id:token", "movieId", "movie_id",
                "business_id", "iid")
TIME_COLUMNS = ("time", "timestamp", "ts", "timestamp:float", "datetime", "date")
RATING_COLUMNS = ("rating", "rating:float", "score", "stars")


@dataclass
class InteractionLog:
    """A time-sorted implicit-feedback log with id vocabularies.

    Attributes:
        user_idx, item_idx: int64 indices (first-appearance order), one per interaction.
        time: int64 unix seconds, non-decreasing.
        user_ids, item_ids: raw ids; ``user_ids[user_idx]`` is the raw id of a row's user.
        source: where the log came from (a path, or a description).
        sha256: hash of the source file's bytes ("" for in-memory logs and folders).
        metadata: JSON-able facts from reading and filtering (e.g. events skipped by a reader).
    """

    user_idx: np.ndarray
    item_idx: np.ndarray
    time: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    source: str = "<memory>"
    sha256: str = ""
    _items_seen: np.ndarray | None = field(default=None, repr=False)
    metadata: dict = field(default_factory=dict)  # what the reader/filters report, e.g. skipped rows

    def __len__(self) -> int:
        return int(self.user_idx.shape[0])

    @property
    def n_users(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_ids.shape[0])

    @property
    def items_seen(self) -> np.ndarray:
        """Number of distinct items seen up to and including each row (int64)."""
        if self._items_seen is None:
            self._items_seen = np.maximum.accumulate(self.item_idx) + 1 if len(self) else \
                np.zeros(0, dtype=np.int64)
        return self._items_seen

    @classmethod
    def from_arrays(cls, users, items, times, *, source: str = "<memory>",
                    sha256: str = "") -> "InteractionLog":
        """Build a log from raw ids and unix-second times (any order; sorted stably here)."""
        users = np.asarray(users)
        items = np.asarray(items)
        times = np.asarray(times, dtype=np.int64)
        if not (len(users) == len(items) == len(times)):
            raise DataError("users, items and times have different lengths", path=source)
        if len(users) == 0:
            raise DataError("the log has no interactions", path=source)
        order = np.argsort(times, kind="stable")
        users, items, times = users[order], items[order], times[order]
        user_idx, user_ids = _first_appearance_codes(users)
        item_idx, item_ids = _first_appearance_codes(items)
        return cls(user_idx, item_idx, times, user_ids, item_ids, source=source, sha256=sha256)

    def subset(self, rows: slice) -> "InteractionLog":
        """Rows ``rows`` of this log with the same vocabularies (for tests and tools)."""
        return InteractionLog(self.user_idx[rows], self.item_idx[rows], self.time[rows],
                              self.user_ids, self.item_ids, self.source, self.sha256)


def _first_appearance_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes 0..n-1 in order of first appearance, and the distinct values in that order."""
    codes, uniques = pd.factorize(pd.Series(values), sort=False)
    return codes.astype(np.int64), np.asarray(uniques)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# Readers. Each returns a DataFrame with columns user, item, time (raw) and optionally rating,
# plus the 1-based file line of its first data row (for error messages).

@dataclass(frozen=True)
class ReadOptions:
    """How to read a log file. Column names default to common spellings."""

    format: str = "auto"
    user_col: str | None = None
    item_col: str | None = None
    time_col: str | None = None
    rating_col: str | None = None
    sep: str | None = None
    min_rating: float | None = None
    # Whether ids must be whole numbers (True) or are kept as stripped text (False); None: the
    # format's own rule (MovieLens: numbers; generic CSV: text). Production sets them from the
    # registry so that every batch is read as the history was.
    numeric_user_ids: bool | None = None
    numeric_item_ids: bool | None = None


Reader = Callable[[Path, ReadOptions], tuple[pd.DataFrame, int, bool]]
READERS: dict[str, Reader] = {}


def register_reader(name: str) -> Callable[[Reader], Reader]:
    """Register a reader for ``--format name``. A reader returns (frame, first_line, numeric_ids)."""

    def decorate(reader: Reader) -> Reader:
        READERS[name] = reader
        return reader

    return decorate


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if name == "ratings.csv":
        return "movielens"
    if name.endswith(".dat"):
        return "movielens-1m"
    if name == "u.data":
        return "movielens-100k"
    if name.endswith(".inter"):
        return "recbole"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    return "csv"


def _read_text(path: Path, **kwargs) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise DataError("the file is empty", path=str(path)) from None
    except pd.errors.ParserError as err:
        raise DataError(f"malformed row: {str(err).strip()}", path=str(path)) from None
    except UnicodeDecodeError as err:
        raise DataError(f"not a text file ({err.reason})", path=str(path)) from None
    except IsADirectoryError:
        raise DataError("is a folder, not a log file", path=str(path)) from None


def _pick(frame: pd.DataFrame, given: str | None, defaults: tuple[str, ...], what: str,
          path: Path, flag: str) -> str:
    if given is not None:
        if given not in frame.columns:
            raise DataError(f"no {what} column {given!r} (columns: {', '.join(map(str, frame.columns))})",
                            path=str(path), column=given)
        return given
    lowered = {str(c).lower(): c for c in frame.columns}
    for name in defaults:
        if name in frame.columns:
            return name
        if name.lower() in lowered:
            return lowered[name.lower()]
    raise DataError(f"no {what} column found (columns: {', '.join(map(str, frame.columns))}); "
                    f"name it with {flag}", path=str(path))


def _select(frame: pd.DataFrame, path: Path, opts: ReadOptions, rating_required: bool) -> pd.DataFrame:
    user = _pick(frame, opts.user_col, USER_COLUMNS, "user", path, "--user-col")
    item = _pick(frame, opts.item_col, ITEM_COLUMNS, "item", path, "--item-col")
    time = _pick(frame, opts.time_col, TIME_COLUMNS, "time", path, "--time-col")
    out = pd.DataFrame({"user": frame[user], "item": frame[item], "time": frame[time]})
    out.attrs["columns"] = {"user": user, "item": item, "time": time}
    if opts.min_rating is not None or rating_required:
        rating = _pick(frame, opts.rating_col, RATING_COLUMNS, "rating", path, "--rating-col")
        out["rating"] = frame[rating]
        out.attrs["columns"]["rating"] = rating
    return out


SEPARATORS = (",", "\t", ";", "|")


def _detect_separator(path: Path) -> str:
    """The separator occurring most often in the header line (comma when none occurs).

    pandas' sniffer guesses letters as separators on short files (``user|item|time`` -> ``e``),
    so only the usual separators are considered.
    """
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as handle:
            header = next((line for line in handle if line.strip()), "")
    except OSError:
        return ","
    counts = [header.count(sep) for sep in SEPARATORS]
    return SEPARATORS[counts.index(max(counts))] if max(counts) > 0 else ","


@register_reader("csv")
def _read_csv(path: Path, opts: ReadOptions) -> tuple[pd.DataFrame, int, bool]:
    sep = opts.sep
    if sep is None:
        sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else _detect_separator(path)
    frame = _read_text(path, sep=sep, engine="python" if len(sep) > 1 else "c", dtype=str,
                       keep_default_na=True, skipinitialspace=True)
    if frame.empty:
        raise DataError("the file has a header but no rows", path=str(path))
    out = _select(frame, path, opts, False)
    out.attrs["sep"] = sep
    return out, 2, False


@register_reader("movielens")
def _read_movielens_csv(path: Path, opts: ReadOptions) -> tuple[pd.DataFrame, int, bool]:
    frame = _read_text(path, dtype=str)
    if frame.empty:
        raise DataError("the file has a header but no rows", path=str(path))
    opts = ReadOptions(user_col=opts.user_col or "userId", item_col=opts.item_col or "movieId",
                       time_col=opts.time_col or "timestamp", rating_col=opts.rating_col or "rating",
                       min_rating=opts.min_rating)
    return _select(frame, path, opts, False), 2, True


def _headerless(path: Path, sep: str, opts: ReadOptions) -> tuple[pd.DataFrame, int, bool]:
    frame = _read_text(path, sep=sep, header=None, dtype=str, engine="python" if len(sep) > 1 else "c")
    if frame.shape[1] < 4:
        raise DataError(f"expected 4 fields (user, item, rating, time) per line, found {frame.shape[1]}",
                        path=str(path))
    frame = frame.iloc[:, :4]
    frame.columns = ["user", "item", "rating", "time"]
    return _select(frame, path, ReadOptions(min_rating=opts.min_rating), False), 1, True


@register_reader("movielens-1m")
def _read_movielens_dat(path: Path, opts: ReadOptions) -> tuple[pd.DataFrame, int, bool]:
    return _headerless(path, "::", opts)


@register_reader("movielens-100k")
def _read_movielens_udata(path: Path, opts: ReadOptions) -> tuple[pd.DataFrame, int, bool]:
    return _headerless(path, "\t", opts)


@register_reader("recbole")
def _read_recbole(path: Path, opts: ReadOptions) -> tuple[pd.DataFrame, int, bool]:
    frame = _read_text(path, sep="\t", dtype=str)
    if frame.empty:
        raise DataError("the file has a header but no rows", path=str(path))
    frame.columns = [str(c) for c in frame.columns]
    opts = ReadOptions(user_col=opts.user_col or _recbole_col(frame, "user_id", path),
                       item_col=opts.item_col or _recbole_col(frame, "item_id", path),
                       time_col=opts.time_col or _recbole_col(frame, "timestamp", path),
                       rating_col=opts.rating_col or (_recbole_col(frame, "rating", path)
                                                      if opts.min_rating is not None else None),
                       min_rating=opts.min_rating)
    return _select(frame, path, opts, False), 2, False


def _recbole_col(frame: pd.DataFrame, field_name: str, path: Path) -> str:
    for column in frame.columns:
        if column.split(":")[0] == field_name:
            return column
    raise DataError(f"RecBole header has no {field_name}:<type> field "
                    f"(header: {' '.join(frame.columns)})", path=str(path))


@register_reader("parquet")
def _read_parquet(path: Path, opts: ReadOptions) -> tuple[pd.DataFrame, int, bool]:
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a bad file
        raise DataError(f"cannot read as Parquet ({err})", path=str(path)) from None
    if frame.empty:
        raise DataError("the Parquet file has no rows", path=str(path))
    return _select(frame, path, opts, False), 1, False


def _to_seconds(values: pd.Series, path: Path, first_line: int, column: str) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = pd.to_datetime(values, utc=True)
        bad = parsed.isna().to_numpy()
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError("missing time", path=str(path), line=first_line + row, column=column)
        # Parquet keeps the stored unit (s, ms, us or ns); count nanoseconds before dividing.
        return (parsed.astype("datetime64[ns, UTC]").astype("int64") // 10**9).to_numpy()
    numeric = pd.to_numeric(values, errors="coerce")
    missing = values.isna().to_numpy()
    if missing.any():
        row = int(np.argmax(missing))
        raise DataError("missing time (empty or NaN)", path=str(path), line=first_line + row, column=column)
    not_number = numeric.isna().to_numpy()
    if not not_number.any():
        seconds = numeric.to_numpy(dtype=np.float64)
        absurd = out_of_range_times(seconds)
        if absurd.any():
            row = int(np.argmax(absurd))
            raise DataError(f"time {_plain(values.iloc[row])!r} is {time_problem(seconds[row])}", path=str(path),
                            line=first_line + row, column=column)
        return np.floor(seconds).astype(np.int64)
    if not not_number[0]:
        # A unix-seconds column with a bad value: name that value, not the first number
        # (which would fail the ISO-8601 parse below).
        row = int(np.argmax(not_number))
        raise DataError(f"unparsable time {values.iloc[row]!r} (expected unix seconds, like the "
                        "first row, or ISO-8601)", path=str(path), line=first_line + row, column=column)
    try:
        parsed = pd.to_datetime(values.astype(str), utc=True, errors="coerce", format="ISO8601")
    except (ValueError, TypeError):
        parsed = pd.Series(pd.NaT, index=values.index)
    bad = parsed.isna().to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(f"unparsable time {values.iloc[row]!r} (expected unix seconds or ISO-8601)",
                        path=str(path), line=first_line + row, column=column)
    as_ns = parsed.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    return (as_ns.astype("int64") // 10**9).to_numpy()


# Times are int64 seconds: a time that is not finite or whose seconds overflow int64 cannot be one
# (casting it would give garbage and a numpy warning instead of an error naming the row).
TIME_LIMIT = 2.0**63


def out_of_range_times(seconds: np.ndarray) -> np.ndarray:
    """Rows whose time (float seconds) is NaN, infinite or beyond int64."""
    with np.errstate(invalid="ignore"):
        return ~(np.abs(seconds) < TIME_LIMIT)


def time_problem(value: float) -> str:
    """Why ``value`` (an out-of-range time) is refused, for the error message."""
    if not math.isfinite(value):
        return "not a finite number (expected unix seconds or ISO-8601)"
    return "beyond the range of 64-bit seconds (expected unix seconds or ISO-8601)"


TIME_UNITS = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


def time_unit(values: pd.Series) -> str:
    """The unit a time column is written in: "s", "ms", "us" or "ns" for numbers (by magnitude),
    "iso" for ISO-8601 text, "datetime" for typed timestamps (Parquet).

    Unix seconds stay below 1e11 until the year 5138 and milliseconds pass 1e11 in 1973, so the
    largest magnitude tells the units apart for any log after 1973.
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        return "datetime"
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.isna().all():
        return "iso"
    largest = float(np.nanmax(np.abs(numeric.to_numpy(dtype=np.float64))))
    for unit, limit in (("s", 1e11), ("ms", 1e14), ("us", 1e17)):
        if largest < limit:
            return unit
    return "ns"


# Whole-number ids are parsed exactly: never through float64, which rounds ids of 2^53 or more
# (9007199254740993 -> ...992) and turns ids beyond int64 into one value, merging distinct users.
ID_OK, ID_NOT_NUMBER, ID_NOT_WHOLE, ID_INEXACT, ID_TOO_LARGE = range(5)



def parse_whole_numbers(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Exact int64 values of ids written as whole numbers, and a problem code per row.

    Codes: ``ID_OK``; ``ID_NOT_NUMBER`` ("abc", "inf"); ``ID_NOT_WHOLE`` ("339.5");
    ``ID_INEXACT``: a float (or text such as "1e20") of 2^53 or more, whose digits are already
    lost; ``ID_TOO_LARGE``: digits beyond int64 (|id| > 2^63 - 1). Values of rows with a problem
    are 0. Text of digits is converted digit by digit (no float), so every int64 id is exact.
    """
    n = len(values)
    out = np.zeros(n, dtype=np.int64)
    code = np.full(n, ID_OK, dtype=np.int8)
    if pd.api.types.is_bool_dtype(values):
        code[:] = ID_NOT_NUMBER
        return out, code
    if pd.api.types.is_integer_dtype(values):
        if pd.api.types.is_unsigned_integer_dtype(values):
            raw = values.to_numpy(dtype=np.uint64)
            big = raw > np.uint64(INT64_MAX)
            code[big] = ID_TOO_LARGE
            out[~big] = raw[~big].astype(np.int64)
            return out, code
        return values.to_numpy(dtype=np.int64), code
    if pd.api.types.is_float_dtype(values):
        return _whole_floats(values.to_numpy(dtype=np.float64), out, code)
    text = values.astype(str).str.strip()
    whole = text.str.fullmatch(WHOLE_TEXT).to_numpy(dtype=bool)
    if whole.any():
        digits = text[whole].str.replace(r"\.0*$", "", regex=True)
        magnitude = digits.str.lstrip("+-").str.lstrip("0")
        lengths = magnitude.str.len().to_numpy()
        limit = str(INT64_MAX)
        # Compare digit strings of equal length lexically: no number is built before it is known to fit.
        over = (lengths > len(limit)) | ((lengths == len(limit)) & (magnitude.to_numpy(dtype=object) > limit))
        rows = np.flatnonzero(whole)
        code[rows[over]] = ID_TOO_LARGE
        fits = rows[~over]
        out[fits] = digits.to_numpy(dtype=str)[~over].astype(np.int64)
    if not whole.all():
        rows = np.flatnonzero(~whole)
        numbers = pd.to_numeric(text.iloc[rows], errors="coerce").to_numpy(dtype=np.float64)
        sub_out, sub_code = _whole_floats(numbers, np.zeros(len(rows), np.int64),
                                          np.full(len(rows), ID_OK, np.int8))
        out[rows], code[rows] = sub_out, sub_code
    return out, code


def _whole_floats(numbers: np.ndarray, out: np.ndarray, code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    finite = np.isfinite(numbers)
    code[~finite] = ID_NOT_NUMBER
    safe = np.where(finite, numbers, 0.0)
    code[finite & (np.floor(safe) != safe)] = ID_NOT_WHOLE
    code[(code == ID_OK) & (np.abs(safe) >= FLOAT_EXACT)] = ID_INEXACT
    ok = code == ID_OK
    out[ok] = safe[ok].astype(np.int64)
    return out, code


def _plain(value: object) -> object:
    """A numpy scalar as the Python value (messages show ``1e+18``, not ``np.float64(1e+18)``)."""
    return value.item() if isinstance(value, np.generic) else value


def id_problem(value: object, code: int) -> str:
    """What is wrong with id ``value`` whose parse gave ``code`` (for error messages)."""
    return {ID_NOT_NUMBER: f"non-numeric id {value!r} (ids here must be whole numbers)",
            ID_NOT_WHOLE: f"id {value!r} is not a whole number",
            ID_INEXACT: (f"id {value!r} is a floating-point number of 2^53 or more, whose exact digits "
                         "are lost; write the id as digits (or store the column as integers or text)"),
            ID_TOO_LARGE: (f"id {value!r} does not fit a 64-bit integer (whole-number ids must lie "
                           f"within +-{INT64_MAX}); refused so that no two ids merge into one"),
            }.get(code, f"bad id {value!r}")


def _check_ids(values: pd.Series, path: Path, first_line: int, column: str, numeric: bool) -> np.ndarray:
    missing = values.isna().to_numpy()
    if missing.any():
        row = int(np.argmax(missing))
        raise DataError("missing id (empty or NaN)", path=str(path), line=first_line + row, column=column)
    if not numeric:
        if pd.api.types.is_numeric_dtype(values):
            return values.to_numpy()
        return values.astype(str).str.strip().to_numpy()
    whole, code = parse_whole_numbers(values)
    if code.any():
        row = int(np.argmax(code != ID_OK))
        raise DataError(id_problem(_plain(values.iloc[row]), int(code[row])), path=str(path),
                        line=first_line + row, column=column)
    return whole


def read_log(path: str | Path, options: ReadOptions | None = None) -> InteractionLog:
    """Read and validate an interaction log file.

    Raises:
        DataError: naming the file (and the line or column) when the file is missing, empty,
            lacks a column, or has a missing, non-numeric or unparsable value.
    """
    options = options or ReadOptions()
    path = Path(path)
    if not path.exists():
        raise DataError("no such file", path=str(path))
    if path.is_dir():
        if options.format not in READERS or options.format in ("csv", "auto"):
            raise DataError("is a folder, not a log file (a folder of Adressa day files needs "
                            "--format adressa)", path=str(path))
    elif path.stat().st_size == 0:
        raise DataError("the file is empty", path=str(path))
    fmt = detect_format(path) if options.format == "auto" else options.format
    if fmt not in READERS:
        raise DataError(f"unknown format {fmt!r} (known: {', '.join(sorted(READERS))})", path=str(path))
    frame, first_line, numeric_ids = READERS[fmt](path, options)
    numeric = (numeric_ids if options.numeric_user_ids is None else options.numeric_user_ids,
               numeric_ids if options.numeric_item_ids is None else options.numeric_item_ids)
    try:
        log = _validated_log(frame, path, options, first_line, numeric)
        # How the file was read, so that later files can be read the same way (production).
        log.metadata["reading"] = {"format": fmt, "sep": frame.attrs.get("sep"),
                                   "columns": dict(frame.attrs.get("columns", {})),
                                   "numeric_ids": list(numeric), "time_unit": time_unit(frame["time"])}
        return log
    except DataError as err:
        if err.line is None or fmt not in TEXT_FORMATS or not path.is_file():
            raise
        line = _physical_line(path, first_line, err.line)
        raise DataError(err.problem, path=err.path, line=line, column=err.column) from None


def log_from_frame(frame: pd.DataFrame, options: ReadOptions | None = None,
                   source: str = "<DataFrame>") -> InteractionLog:
    """Validate an in-memory table of interactions as ``read_log`` validates a file.

    Columns are found as in a CSV file (``user``/``item``/``time`` and the usual spellings, or
    the names in ``options``); ids keep their type (numbers stay numbers, text is stripped);
    times are unix seconds, ISO-8601 text or datetimes. Errors name ``source`` and the 1-based row.
    """
    options = options or ReadOptions()
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"expected a pandas DataFrame, got {type(frame).__name__}", path=source)
    if frame.empty:
        raise DataError("the log has no rows", path=source)
    selected = _select(frame.reset_index(drop=True), Path(source), options, False)
    numeric = (bool(options.numeric_user_ids), bool(options.numeric_item_ids))
    log = _validated_log(selected, Path(source), options, 1, numeric)
    log.metadata["reading"] = {"format": "dataframe", "sep": None,
                               "columns": dict(selected.attrs.get("columns", {})),
                               "numeric_ids": list(numeric), "time_unit": time_unit(selected["time"])}
    return log


TEXT_FORMATS = ("csv", "movielens", "movielens-1m", "movielens-100k", "recbole")


def _physical_line(path: Path, first_line: int, line: int) -> int:
    """The file line of a data row numbered as if no blank lines preceded it.

    pandas skips blank lines, so row k of the frame is the (first_line - 1 + k)-th non-blank line.
    Only called on the error path: it reads the file up to that line.
    """
    wanted = line - 1  # 0-based index among the file's non-blank lines
    seen = -1
    with open(path, "r", encoding="utf-8", errors="replace") as handle:
        for number, text in enumerate(handle, start=1):
            if text.strip():
                seen += 1
                if seen == wanted:
                    return number
    return line


def _validated_log(frame: pd.DataFrame, path: Path, options: ReadOptions, first_line: int,
                   numeric_ids: tuple[bool, bool]) -> InteractionLog:
    names = frame.attrs.get("columns", {})
    users = _check_ids(frame["user"], path, first_line, names.get("user", "user"), numeric_ids[0])
    items = _check_ids(frame["item"], path, first_line, names.get("item", "item"), numeric_ids[1])
    times = _to_seconds(frame["time"], path, first_line, names.get("time", "time"))
    keep = np.ones(len(frame), dtype=bool)
    if options.min_rating is not None:
        rating = pd.to_numeric(frame["rating"], errors="coerce")
        bad = rating.isna().to_numpy()
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(f"non-numeric rating {frame['rating'].iloc[row]!r}", path=str(path),
                            line=first_line + row, column=names.get("rating", "rating"))
        keep = rating.to_numpy() >= options.min_rating
        if not keep.any():
            raise DataError(f"no interaction has rating >= {options.min_rating}", path=str(path))
    sha = file_sha256(path) if path.is_file() else ""
    log = InteractionLog.from_arrays(users[keep], items[keep], times[keep], source=str(path), sha256=sha)
    log.metadata.update(frame.attrs.get("metadata", {}))
    return log


def bundled_movielens_path() -> Path:
    """The MovieLens ml-latest-small ratings file shipped with smlrec (see its README.txt)."""
    return Path(__file__).resolve().parent.parent / "datasets" / "ml-latest-small" / "ratings.csv"
