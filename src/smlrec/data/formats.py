"""Readers for the raw files of the paper's two datasets: Yelp reviews and Adressa news events.

Both are JSON lines (one JSON object per line). The files are large (the Yelp review file is
several GB, mostly review text), so they are read in blocks of bytes that end at a newline and
each block is parsed by pyarrow's JSON reader with an explicit schema that keeps only the needed
fields (every other field is skipped by the parser). No line ever becomes a Python dict on the
fast path. When a block fails to parse, its lines are re-read one by one with :mod:`json` (the
slow twin) to name the first bad line.

* ``--format yelp``: the Yelp Open Dataset review file ``yelp_academic_dataset_review.json``;
  fields ``user_id``, ``business_id`` and ``date`` ("YYYY-MM-DD HH:MM:SS", or "YYYY-MM-DD" in old
  releases, read as UTC: the file carries no timezone). Every review is one interaction.
* ``--format adressa``: a folder of Adressa event files, one JSON-lines file per day (the
  ``one_week/`` or ``three_month/`` folders of the SmartMedia Adressa dataset; ``.gz`` files are
  read too); fields ``userId``, ``id`` (the article) and ``time`` (unix seconds). Events without an
  article ``id`` (front-page and section views) are skipped; their number is stored in the log's
  ``metadata["skipped_events_without_article_id"]``. A single day file may be given instead of
  the folder.

A missing user, item or time, a malformed line or a field of the wrong type is a
:class:`~smlrec.errors.DataError` naming the file and the line.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from ..errors import DataError
from .log import ReadOptions, out_of_range_times, register_reader, time_problem

BLOCK_BYTES = 32 << 20        # bytes handed to the JSON parser at once
PARSER_BLOCK_BYTES = 4 << 20  # pyarrow's own block: must exceed the longest line

YELP_FIELDS = {"user_id": pa.string(), "business_id": pa.string(), "date": pa.string()}
ADRESSA_FIELDS = {"userId": pa.string(), "id": pa.string(), "time": pa.float64()}
SKIPPED_KEY = "skipped_events_without_article_id"


# ----------------------------------------------------------------------------------------------
# Blocks of JSON lines

def _open_binary(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")


def iter_line_blocks(handle: BinaryIO, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[bytes, int]]:
    """Yield ``(block, first_line)``: whole lines of the stream, ~``block_bytes`` at a time.

    ``first_line`` is the 1-based line number of the block's first line.
    """
    carry = b""
    line = 1
    while True:
        chunk = handle.read(block_bytes)
        if not chunk:
            if carry.strip():
                yield carry, line
            return
        data = carry + chunk if carry else chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
            continue
        block, carry = data[: cut + 1], data[cut + 1:]
        yield block, line
        line += block.count(b"\n")


def data_line_numbers(block: bytes, first_line: int) -> np.ndarray:
    """File line numbers of the non-blank lines of ``block`` (the rows the JSON parser returns).

    pyarrow skips blank lines, so row ``r`` of a parsed block is on line ``data_line_numbers[r]``.
    """
    raw = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(raw == ord("\n"))
    if raw.size and raw[-1] != ord("\n"):
        ends = np.append(ends, raw.size)
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    printable = np.concatenate([[0], np.cumsum(~np.isin(raw, np.frombuffer(b" \t\r\n", np.uint8)))])
    has_data = printable[ends] - printable[starts] > 0
    return first_line + np.flatnonzero(has_data)


_KIND = {pa.string(): ("text", (str,)), pa.float64(): ("a number", (int, float))}


def _first_bad_line(block: bytes, first_line: int, fields: dict[str, pa.DataType], path: Path,
                    cause: Exception) -> DataError:
    """Re-read a block that pyarrow rejected line by line and describe its first bad line."""
    for offset, raw in enumerate(block.split(b"\n")):
        if not raw.strip():
            continue
        line = first_line + offset
        try:
            value = json.loads(raw)
        except UnicodeDecodeError:
            return DataError("not UTF-8 text", path=str(path), line=line)
        except json.JSONDecodeError as err:
            return DataError(f"malformed JSON ({err.msg} at character {err.colno})", path=str(path),
                             line=line)
        if not isinstance(value, dict):
            return DataError(f"expected a JSON object, got {type(value).__name__}", path=str(path),
                             line=line)
        for name, dtype in fields.items():
            field_value = value.get(name)
            kind, types = _KIND[dtype]
            if field_value is not None and (isinstance(field_value, bool)
                                            or not isinstance(field_value, types)):
                return DataError(f"field {name!r} should be {kind}, got {field_value!r}",
                                 path=str(path), line=line, column=name)
    last_line = first_line + block.count(b"\n")
    return DataError(f"cannot read the JSON lines {first_line}..{last_line} ({cause})", path=str(path),
                     line=first_line)


def iter_json_tables(path: Path, fields: dict[str, pa.DataType],
                     block_bytes: int | None = None) -> Iterator[tuple[pa.Table, bytes, int]]:
    """Yield ``(table, block, first_line)`` per block of ``path``; the table has exactly ``fields``."""
    block_bytes = block_bytes or BLOCK_BYTES
    schema = pa.schema(list(fields.items()))
    parse = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    read = pa_json.ReadOptions(block_size=PARSER_BLOCK_BYTES)
    try:
        with _open_binary(path) as handle:
            for block, first_line in iter_line_blocks(handle, block_bytes):
                try:
                    table = pa_json.read_json(io.BytesIO(block), read_options=read, parse_options=parse)
                except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
                    raise _first_bad_line(block, first_line, fields, path, err) from None
                yield table.select(list(fields)), block, first_line
    except (OSError, EOFError) as err:  # unreadable file, truncated gzip
        raise DataError(f"cannot read ({err})", path=str(path)) from None


def _require(table: pa.Table, names: tuple[str, ...], block: bytes, first_line: int, path: Path,
             what: str = "missing field") -> None:
    """DataError at the first row of ``table`` where any of ``names`` is null."""
    for name in names:
        column = table.column(name)
        if column.null_count:
            row = int(np.argmax(column.is_null().to_numpy(zero_copy_only=False)))
            line = int(data_line_numbers(block, first_line)[row])
            raise DataError(f"{what} {name!r}", path=str(path), line=line, column=name)


def _frame(users: list, items: list, times: list, metadata: dict) -> pd.DataFrame:
    frame = pd.DataFrame({"user": pa.chunked_array(users, pa.string()).to_pandas(),
                          "item": pa.chunked_array(items, pa.string()).to_pandas(),
                          "time": np.concatenate(times) if times else np.zeros(0, np.int64)})
    frame.attrs["metadata"] = metadata
    return frame


# ----------------------------------------------------------------------------------------------
# Yelp

def _yelp_seconds(dates: pa.ChunkedArray) -> pa.Array:
    """'YYYY-MM-DD HH:MM:SS' (or 'YYYY-MM-DD') as int64 unix seconds, null where unparsable."""
    full = pc.strptime(dates, format="%Y-%m-%d %H:%M:%S", unit="s", error_is_null=True)
    day = pc.strptime(dates, format="%Y-%m-%d", unit="s", error_is_null=True)
    return pc.coalesce(full, day).cast(pa.int64())


@register_reader("yelp")
def read_yelp_reviews(path: Path, opts: ReadOptions) -> tuple[pd.DataFrame, int, bool]:
    """The Yelp Open Dataset review file as (user_id, business_id, date) interactions."""
    if path.is_dir():
        raise DataError("is a folder; give the review file yelp_academic_dataset_review.json",
                        path=str(path))
    users, items, times = [], [], []
    for table, block, first_line in iter_json_tables(path, YELP_FIELDS):
        _require(table, ("user_id", "business_id", "date"), block, first_line, path)
        seconds = _yelp_seconds(table.column("date"))
        if seconds.null_count:
            row = int(np.argmax(seconds.is_null().to_numpy(zero_copy_only=False)))
            line = int(data_line_numbers(block, first_line)[row])
            raise DataError(f"unparsable date {table.column('date')[row].as_py()!r} "
                            "(expected YYYY-MM-DD HH:MM:SS)", path=str(path), line=line, column="date")
        users.append(table.column("user_id"))
        items.append(table.column("business_id"))
        times.append(seconds.to_numpy())
    if not times or sum(len(t) for t in times) == 0:
        raise DataError("the file has no reviews", path=str(path))
    frame = _frame(users, items, times, {"format": "yelp"})
    frame.attrs["columns"] = {"user": "user_id", "item": "business_id", "time": "date"}
    return frame, 1, False


# ----------------------------------------------------------------------------------------------
# Adressa

def adressa_files(path: Path) -> list[Path]:
    """The event files of an Adressa folder (every visible file, by name), or ``[path]``."""
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError("the folder has no event files", path=str(path))
    return files


@register_reader("adressa")
def read_adressa_events(path: Path, opts: ReadOptions) -> tuple[pd.DataFrame, int, bool]:
    """Adressa article views (userId, id, time) from a folder of daily JSON-lines files."""
    users, items, times = [], [], []
    skipped = 0
    files = adressa_files(path)
    for file in files:
        for table, block, first_line in iter_json_tables(file, ADRESSA_FIELDS):
            _require(table, ("userId", "time"), block, first_line, file)
            has_article = pc.is_valid(table.column("id"))
            skipped += int(len(table) - pc.sum(has_article).as_py() if len(table) else 0)
            table = table.filter(has_article)
            users.append(table.column("userId"))
            items.append(table.column("id"))
            seconds = table.column("time").to_numpy()
            absurd = out_of_range_times(seconds)
            if absurd.any():
                row = int(np.argmax(absurd))
                # Rows were filtered on the article id: find the row's line among the block's rows.
                kept = np.flatnonzero(has_article.to_numpy())
                line = int(data_line_numbers(block, first_line)[kept[row]])
                raise DataError(f"time {float(seconds[row])!r} is {time_problem(float(seconds[row]))}",
                                path=str(file), line=line, column="time")
            times.append(np.floor(seconds).astype(np.int64))
    if not times or sum(len(t) for t in times) == 0:
        raise DataError(f"no event with an article id ({skipped} events without one)", path=str(path))
    frame = _frame(users, items, times, {"format": "adressa", "files": len(files), SKIPPED_KEY: skipped})
    frame.attrs["columns"] = {"user": "userId", "item": "id", "time": "time"}
    return frame, 1, False
