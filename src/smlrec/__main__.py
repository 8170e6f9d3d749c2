"""``python -m smlrec``: the same as the ``smlrec`` command."""

from .cli import entry

entry()
