"""How a registry reads its data, fixed once at ``init`` and applied to every batch.

A registry serves one stream of interactions, so every batch must be read exactly as the history
was: same format, columns, separator, id kinds and time unit. ``init`` records them (a
:class:`Reading`, stored in each version's manifest); ``update`` reads the batch with them instead
of guessing from the batch's file name, then checks its times.

Ids, one documented rule:

* whitespace around an id is stripped;
* a **number** id column (the history's ids were all whole numbers, whatever the format) accepts
  any text that reads as a whole number and maps it to that number (``" 339 "``, ``"339.0"`` and
  ``339`` are one user); anything else (``"abc"``, ``"339.5"``) is refused, naming the file, line
  and column. Digits are converted exactly (never through float64): ``9007199254740993`` stays
  itself, and an id beyond int64 (``99999999999999999999``) is refused with its line and column,
  so two raw ids never merge into one row;
* a **text** id column keeps the stripped text, and refuses text that looks like a whole number
  written as a decimal (``"339.0"``): it cannot tell whether that means ``"339"``.

Duplicates: rows repeating an earlier row of the same batch exactly (same user, item and time,
e.g. a file concatenated twice) are refused with their count unless ``--duplicates drop`` (apply
each once) or ``keep`` (apply them as repeated interactions). The replay's log loading keeps them.

Times: numbers are unix seconds; a time that is not finite or overflows int64 seconds is refused
naming its line and value. A batch whose times are in another unit (milliseconds...),
detected by magnitude, is refused. So is a batch ending after now + ``max_future`` (default one
day) unless forced: one wrong clock would otherwise make every later, correct batch look late.
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import ReplaySettings
from ..data.log import InteractionLog, ReadOptions, detect_format, parse_whole_numbers, read_log
from ..errors import ConfigError, DataError
# The ids rule for queries lives with the torch-free reader (recommend and serve import no pandas).
from .served import NUMBER, TEXT, id_kind

# Units whose values smlrec converts to seconds exactly; numbers in any other unit are refused.
SECONDS_UNITS = ("s", "iso", "datetime")
UNIT_NAMES = {"s": "unix seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds",
              "iso": "ISO-8601 text", "datetime": "typed timestamps"}
DEFAULT_MAX_FUTURE = "1D"
_DECIMAL_WHOLE = re.compile(r"^[+-]?\d+\.0+$")


@dataclasses.dataclass(frozen=True)
class Reading:
    """How every file of a registry is read (stored in each version's manifest as ``reading``)."""

    format: str
    user_col: str | None = None
    item_col: str | None = None
    time_col: str | None = None
    rating_col: str | None = None
    sep: str | None = None
    min_rating: float | None = None
    user_ids: str = TEXT          # "number" or "text"
    item_ids: str = TEXT
    time_unit: str = "s"          # as detected in the history: "s", "iso" or "datetime"

    def options(self) -> ReadOptions:
        return ReadOptions(format=self.format, user_col=self.user_col, item_col=self.item_col,
                           time_col=self.time_col, rating_col=self.rating_col, sep=self.sep,
                           min_rating=self.min_rating, numeric_user_ids=self.user_ids == NUMBER,
                           numeric_item_ids=self.item_ids == NUMBER)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Reading":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def reading_of(log: InteractionLog, settings: ReplaySettings) -> Reading:
    """The Reading that reproduces how ``log`` (the history) was read, with its id kinds."""
    meta = log.metadata.get("reading", {})
    columns = meta.get("columns", {})
    unit = meta.get("time_unit", "s")
    if unit not in SECONDS_UNITS:
        raise DataError(f"its times look like {UNIT_NAMES.get(unit, unit)} (largest "
                        f"{int(log.time.max())}); smlrec reads unix seconds or ISO-8601: convert the "
                        "time column to seconds first", path=log.source)
    data = settings.data
    return Reading(format=meta.get("format", data.format), user_col=columns.get("user", data.user_col),
                   item_col=columns.get("item", data.item_col), time_col=columns.get("time", data.time_col),
                   rating_col=columns.get("rating", data.rating_col), sep=meta.get("sep", data.sep),
                   min_rating=data.min_rating, user_ids=id_kind(log.user_ids), item_ids=id_kind(log.item_ids),
                   time_unit=unit)


def legacy_reading(settings: ReplaySettings, history_source: str, user_ids: np.ndarray,
                   item_ids: np.ndarray) -> Reading:
    """The Reading of a registry written before readings were recorded: the format its history
    file's name gave, and the id kinds of its vocabularies."""
    data = settings.data
    fmt = detect_format(Path(history_source)) if data.format == "auto" else data.format
    return Reading(format=fmt, user_col=data.user_col, item_col=data.item_col, time_col=data.time_col,
                   rating_col=data.rating_col, sep=data.sep, min_rating=data.min_rating,
                   user_ids=id_kind(user_ids), item_ids=id_kind(item_ids))


def as_numbers(ids: np.ndarray) -> np.ndarray:
    """``ids`` as int64 when every one is a whole number that fits int64 exactly and no two become
    the same number (e.g. "339" and "339.0"); otherwise unchanged. Order is kept, so table rows do
    not move. Digits are converted exactly (never through float64)."""
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu" or len(ids) == 0:
        return ids
    whole, code = parse_whole_numbers(pd.Series(ids, dtype=object))
    if code.any():
        return ids
    return whole if len(np.unique(whole)) == len(whole) else ids


def read_batch(path: str | Path, reading: Reading) -> InteractionLog:
    """Read a batch exactly as the registry's history was read; refuse ids and time units that do
    not fit (DataError naming the file)."""
    try:
        log = read_log(path, reading.options())
    except ConfigError as err:
        raise DataError(str(err), path=str(path)) from None
    unit = log.metadata.get("reading", {}).get("time_unit", "s")
    if unit not in SECONDS_UNITS:
        raise DataError(f"its times look like {UNIT_NAMES.get(unit, unit)} (e.g. {int(log.time[-1])}) but "
                        f"this registry's times are {UNIT_NAMES['s']}; convert the time column "
                        f"({reading.time_col or 'time'}) to seconds", path=str(path), column=reading.time_col)
    for ids, kind, column in ((log.user_ids, reading.user_ids, reading.user_col),
                              (log.item_ids, reading.item_ids, reading.item_col)):
        if kind == TEXT:
            _refuse_decimal_whole(ids, path, column)
    return log


DUPLICATE_MODES = ("refuse", "drop", "keep")


def exact_duplicates(log: InteractionLog) -> np.ndarray:
    """Rows that repeat an earlier row of ``log`` exactly (same user, item and time)."""
    rows = pd.DataFrame({"user": log.user_idx, "item": log.item_idx, "time": log.time})
    return rows.duplicated(keep="first").to_numpy()


def handle_duplicates(log: InteractionLog, mode: str = "refuse") -> InteractionLog:
    """Apply the batch duplicates rule: ``refuse`` (DataError with the count), ``drop`` (keep each
    row's first occurrence) or ``keep`` (apply repeats as repeated interactions). A whole file
    concatenated twice would otherwise count every interaction twice. The count and the mode are
    recorded in ``log.metadata["duplicates"]``."""
    if mode not in DUPLICATE_MODES:
        raise ConfigError(f"--duplicates {mode!r}: expected one of {', '.join(DUPLICATE_MODES)}")
    repeated = exact_duplicates(log)
    count = int(repeated.sum())
    if count == 0:
        return log
    if mode == "refuse":
        row = int(np.argmax(repeated))
        example = (f"user {log.user_ids[log.user_idx[row]]!r}, item {log.item_ids[log.item_idx[row]]!r} "
                   f"at {stamp(int(log.time[row]))}")
        raise DataError(f"{count} of its {len(log)} rows repeat an earlier row exactly (same user, item and "
                        f"time; e.g. {example}); pass --duplicates drop to apply each once, or --duplicates "
                        "keep to apply them as repeated interactions", path=log.source)
    if mode == "drop":
        kept = ~repeated
        # Dropping later repeats never removes an id's first appearance: the vocabularies stand.
        log = InteractionLog(log.user_idx[kept], log.item_idx[kept], log.time[kept], log.user_ids,
                             log.item_ids, log.source, log.sha256, metadata=dict(log.metadata))
    log.metadata["duplicates"] = {"mode": mode, "rows": count}
    return log


def _refuse_decimal_whole(ids: np.ndarray, path: str | Path, column: str | None) -> None:
    text = pd.Series(np.asarray(ids, dtype=object)).astype(str)
    bad = text.str.match(_DECIMAL_WHOLE.pattern).to_numpy()
    if bad.any():
        value = text.iloc[int(np.argmax(bad))]
        raise DataError(f"id {value!r} looks like a whole number written as a decimal, but this registry's "
                        f"ids are text, so it cannot tell whether it means {value.split('.')[0]!r}; "
                        "write the ids as in the history", path=str(path), column=column)


def parse_horizon(text: str | None) -> float | None:
    """``--max-future`` as seconds (``"1D"``, ``"6h"``); None or "none" turns the check off."""
    if text is None or str(text).strip().lower() in ("none", "off", ""):
        return None
    try:
        seconds = pd.Timedelta(str(text)).total_seconds()
    except ValueError:
        raise ConfigError(f"--max-future {text!r}: expected a duration such as 1D, 6h or 30min") from None
    if seconds < 0:
        raise ConfigError(f"--max-future {text!r}: must not be negative")
    return seconds


def check_not_future(log: InteractionLog, max_future: float | None, now: float | None = None) -> str | None:
    """The problem when the batch ends after now + ``max_future`` seconds, else None."""
    if max_future is None:
        return None
    now = time.time() if now is None else now
    last = int(log.time[-1])
    if last <= now + max_future:
        return None
    return (f"its latest time {stamp(last)} is beyond now + {pd.Timedelta(seconds=max_future)} "
            f"({stamp(int(now + max_future))}): a wrong clock or unit would make every later batch look late")


def stamp(seconds: int) -> str:
    """A unix time as text; never raises (out-of-range times are shown as numbers)."""
    try:
        return f"{pd.Timestamp(int(seconds), unit='s'):%Y-%m-%d %H:%M:%S} UTC"
    except (ValueError, OverflowError, pd.errors.OutOfBoundsDatetime):
        return f"{int(seconds)} (unix seconds, out of the calendar's range)"
