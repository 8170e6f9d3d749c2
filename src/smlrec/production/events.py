"""Operational events of the production loop (updates, refusals, rollbacks, swaps) as log records.

Every event goes to the ``smlrec.production`` logger with a short message and its fields in
``record.event`` / ``record.fields``, so the CLI can print it as a line of text or as one JSON
object per line (``--log-json``). The library configures no handler: an application embedding
smlrec decides where its logs go.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("smlrec.production")
logger.addHandler(logging.NullHandler())   # a library: silent unless the application configures logging

LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def emit(event: str, message: str, level: str = "info", **fields: Any) -> None:
    """Log ``event`` (a name such as "update" or "swap") with ``message`` and JSON-able ``fields``."""
    logger.log(LEVELS[level], message, extra={"event": event, "fields": fields})
