"""``python -m smlrec.cli``: the same as the ``smlrec`` command."""

import sys

from . import main

sys.exit(main())
