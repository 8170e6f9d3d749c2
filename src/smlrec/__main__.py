"""``python -m smlrec``: the same as the ``smlrec`` command."""

import sys

from .cli import main

sys.exit(main())
