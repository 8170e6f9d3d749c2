"""Command-line interface: argument parsing only; the work is done by the library.

Each command group is one module that registers its subcommands with ``@command`` (see
common.py) when imported here: replay.py (replay, strategies), data.py, production.py (init,
update, recommend, serve), report.py (report, wins, sweep), tune.py, synth.py. The order of the imports is the
order of the commands in ``smlrec --help``. Nothing outside this package imports it.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import SmlrecError
from . import replay, data, production, report, tune, synth  # noqa: F401  register their commands
from .common import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="smlrec", description="Retrain recommender systems period "
                                     "after period: replay strategies on a log, or run the update.")
    parser.add_argument("--version", action="version", version=f"smlrec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, run) in COMMANDS.items():
        doc = (run.__doc__ or "").strip().splitlines()
        child = sub.add_parser(name, help=doc[0] if doc else None)
        add_arguments(child)
        child.set_defaults(run=run)
    return parser


def entry() -> None:
    """The ``smlrec`` command and ``python -m smlrec``: ``main``, then exit with its status.

    A rank of a torchrun job ends with ``os._exit`` once its output is flushed: gloo's worker
    threads can still hold tensors when the interpreter is torn down, and destroying them then
    aborts the process ("terminate called without an active exception"; seen in ~1 of 4 two-rank
    runs after a clean ``destroy_process_group``), which torchrun would report as a failed job.
    """
    status = main()
    # Only a process that imported the distributed module can have joined a group (importing it
    # just to ask would load torch: seconds for `smlrec recommend`, which never needs it).
    distributed = sys.modules.get("smlrec.models.distributed")
    if distributed is not None and distributed.joined_a_group():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except SmlrecError as err:
        print(f"smlrec {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

