"""The rule for whole-number ids, with no dependency beyond the standard library.

Both the log reader (data/log.py, vectorised over a column) and the torch-free serving path
(production/served.py, one queried id at a time) follow it, so an id means the same number in a
file and in a query: digits are read exactly (``9007199254740993`` stays itself, where a float64
would round it to ...992), a float is accepted only while it is exact (below 2^53), and nothing
outside the int64 range is an id.
"""

from __future__ import annotations

import math
import re

INT64_MAX = 2**63 - 1
FLOAT_EXACT = 2**53          # below this every whole float64 is exact
WHOLE_TEXT = r"[+-]?[0-9]+(?:\.0*)?"   # digits, optionally with a zero fraction ("339", "339.0")


def whole_number(text: str) -> int | None:
    """One id as the exact integer, or None when it is not a whole number the rule accepts."""
    text = str(text).strip()
    if re.fullmatch(WHOLE_TEXT, text):
        number = int(text.split(".")[0])
        return number if abs(number) <= INT64_MAX else None
    try:
        # pandas reads neither "1_000" nor non-ASCII digits, which Python's float accepts
        number = float(text) if text.isascii() and "_" not in text else math.nan
    except ValueError:
        return None
    if not math.isfinite(number) or number != math.floor(number) or abs(number) >= FLOAT_EXACT:
        return None
    return int(number)
