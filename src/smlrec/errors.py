"""Every error smlrec raises on purpose lives here, so callers can catch one family."""

from __future__ import annotations


class SmlrecError(Exception):
    """Base class of all smlrec errors."""


class DataError(SmlrecError, ValueError):
    """An interaction log (or a period of one) is malformed or unusable.

    The message names the file and, where known, the line or column and what is wrong.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 column: str | None = None) -> None:
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column {column!r}")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + message)
        self.problem = message
        self.path = path
        self.line = line
        self.column = column


class ConfigError(SmlrecError, ValueError):
    """A setting is unknown, of the wrong type, or out of range."""


class CheckpointError(SmlrecError):
    """A saved model or registry file is missing, truncated or corrupt."""
