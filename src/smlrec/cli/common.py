"""What every command group shares: the command registry, flag groups, and flags -> settings layers.

Argument parsing only. The command-group modules (data.py, production.py, replay.py, report.py,
synth.py) import this module, never the package ``smlrec.cli``; the package imports them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Callable

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register a subcommand: ``add_arguments(parser)`` and the decorated ``run(args) -> exit code``."""

    def decorate(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (add_arguments, run)
        return run

    return decorate


# ----------------------------------------------------------------------------------------------
# Shared flag groups

def add_data_arguments(parser: argparse.ArgumentParser, required: bool = False,
                       path_flag: bool = True) -> None:
    group = parser.add_argument_group("data")
    if path_flag:
        group.add_argument("--data", required=required,
                           help="interaction log file, or folder for adressa (default: the bundled "
                                "MovieLens ml-latest-small)")
    group.add_argument("--format", help="auto (default), csv, parquet, movielens, movielens-1m, "
                                        "movielens-100k, recbole, yelp, adressa, ...")
    group.add_argument("--user-col", help="user id column (generic CSV/Parquet)")
    group.add_argument("--item-col", help="item id column")
    group.add_argument("--time-col", help="time column: unix seconds or ISO-8601")
    group.add_argument("--rating-col", help="rating column (for --min-rating)")
    group.add_argument("--sep", help="field separator (default: auto)")
    group.add_argument("--min-rating", type=float, help="keep only rows with rating >= this")
    group.add_argument("--min-user-interactions", type=int,
                       help="k-core: keep users with at least this many interactions (iterated with "
                            "--min-item-interactions until stable; default 0 = keep all)")
    group.add_argument("--min-item-interactions", type=int,
                       help="k-core: keep items with at least this many interactions")
    group.add_argument("--preset", help="named paper setup: yelp or adressa (see docs/datasets.md); it "
                                        "sets --format yelp/adressa, the periods and the plan; "
                                        "--config and flags (e.g. --format parquet) override it")


def add_period_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("periods")
    cut = group.add_mutually_exclusive_group()
    cut.add_argument("--periods", type=int, help="N periods of equal interaction counts (default 20)")
    cut.add_argument("--every", help="calendar windows of this length, e.g. 1D, 8h")
    cut.add_argument("--day-cuts", help="hours inside each day, e.g. 10,17 (3 periods a day)")
    group.add_argument("--timezone", help="timezone for --every/--day-cuts (default UTC)")
    group.add_argument("--drop-empty", action="store_true", default=None,
                       help="skip empty calendar windows instead of failing")
    group.add_argument("--plan", help="P,O,V,T: pretrain, offline, validation, test periods "
                                      "(default 5,8,2,5)")


def explain_preset_format(error: "DataError", args: argparse.Namespace, data_format: str) -> "DataError":
    """``error`` (reading the log) with a note when ``--preset`` chose the format: without it, a
    Parquet file read as Yelp JSON says only "not UTF-8 text"."""
    from ..errors import DataError
    from ..experiment.presets import PRESETS

    preset = PRESETS.get(getattr(args, "preset", None) or "")
    chosen = preset.settings.get("data", {}).get("format") if preset else None
    if chosen is None or getattr(args, "format", None) or data_format != chosen:
        return error
    note = (f" (read as --format {chosen} because --preset {args.preset} chooses that format; "
            "pass --format to read the file otherwise, e.g. --format parquet, or --format auto to "
            "go by its name)")
    return DataError(error.problem + note, path=error.path, line=error.line, column=error.column)


def settings_layers(args: argparse.Namespace) -> list[dict]:
    """Preset < config file < flags < --set, as mappings for ``config.replay_settings``."""
    from ..config import load_toml, merge, parse_assignment
    from ..experiment.presets import preset_layer

    layers: list[dict] = []
    if getattr(args, "preset", None):
        layers.append(preset_layer(args.preset))
    if getattr(args, "config", None):
        layers.append(load_toml(args.config))
    data = {key: value for key, value in {
        "path": getattr(args, "data", None), "format": getattr(args, "format", None),
        "user_col": getattr(args, "user_col", None), "item_col": getattr(args, "item_col", None),
        "time_col": getattr(args, "time_col", None), "rating_col": getattr(args, "rating_col", None),
        "sep": getattr(args, "sep", None), "min_rating": getattr(args, "min_rating", None),
        "min_user_interactions": getattr(args, "min_user_interactions", None),
        "min_item_interactions": getattr(args, "min_item_interactions", None),
        "periods": getattr(args, "periods", None), "every": getattr(args, "every", None),
        "day_cuts": getattr(args, "day_cuts", None), "timezone": getattr(args, "timezone", None),
        "drop_empty": getattr(args, "drop_empty", None)}.items() if value is not None}
    flags: dict = {"data": data} if data else {}
    if data.get("every") or data.get("day_cuts") or data.get("periods"):  # a cut flag replaces any cut
        flags = merge(flags, {"data": {"every": data.get("every"), "day_cuts": data.get("day_cuts")}})
    if getattr(args, "plan", None):
        from ..data.periods import Plan

        plan = Plan.parse(args.plan)
        flags["plan"] = {"pretrain": plan.pretrain, "offline": plan.offline,
                         "validation": plan.validation, "test": plan.test}
    for key in ("seed", "device", "threads", "cache_dir", "base", "precision"):
        if getattr(args, key, None) is not None:
            flags[key] = getattr(args, key)
    if getattr(args, "strategies", None):
        flags["strategies"] = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if getattr(args, "protocol", None):
        flags["protocols"] = [p.strip() for p in args.protocol.split(",") if p.strip()]
    if getattr(args, "bootstrap", None) is not None:
        flags["bootstrap_resamples"] = args.bootstrap
    if getattr(args, "bootstrap_unit", None):
        flags["bootstrap_unit"] = args.bootstrap_unit
    if getattr(args, "pretrain_epochs", None) is not None:
        flags["pretrain"] = {"epochs": args.pretrain_epochs}
    layers.append(flags)
    for assignment in getattr(args, "set", None) or []:
        layers.append(parse_assignment(assignment))
    return layers


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=["fp32", "bf16"],
                        help="arithmetic of SML's transfer networks (default fp32); bf16 runs them under "
                             "autocast where the CPU has bf16 instructions (or on a GPU). Experimental: "
                             "under 1%% accuracy change on the bundled data, but R@20 between -36%% and +0.4%% "
                             "of fp32's at Adressa scale over five benchmark runs (docs/speed.md)")


def add_plugin_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", action="append", metavar="MODULE:CLASS",
                        help="register a Strategy subclass from your own code (repeatable), e.g. "
                             "examples.cooccurrence:LastItemCooccurrence; the current directory is "
                             "importable. Installed plug-ins (entry points 'smlrec.strategies') need no flag")


def load_plugins(args: argparse.Namespace) -> list[str]:
    """Register the ``--plugin module:Class`` strategies; returns their names."""
    from ..strategies import load_plugin

    return [load_plugin(target) for target in getattr(args, "plugin", None) or []]


def replay_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    add_period_arguments(parser)
    parser.add_argument("--strategies", help="comma-separated strategy names, or 'all'; 'default' in the "
                                             "list stands for the default set (the strategies `smlrec "
                                             "strategies` does not mark opt-in), e.g. default,ease")
    add_plugin_argument(parser)
    parser.add_argument("--protocol", help="evaluation protocol(s), comma-separated: sampled (1 positive + "
                                           "999 sampled negatives, the default), full (every item seen "
                                           "so far), auc (AUC and LogLoss, one negative per positive); "
                                           "a list scores each one, the strategies trained once")
    parser.add_argument("--bootstrap", type=int, metavar="N",
                        help="bootstrap resamples for 95%% intervals and p-values (default 1000; 0: none)")
    parser.add_argument("--bootstrap-unit", choices=["user", "interaction"],
                        help="what a bootstrap resample draws: whole users (default) or interactions")
    parser.add_argument("--seed", type=int, help="random seed (default 2020)")
    parser.add_argument("--base", choices=["mf", "lightgcn", "ncf"],
                        help="base model every strategy trains and scores (default mf; settings in "
                             "[lightgcn] / [ncf], e.g. --set lightgcn.layers=2)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="torch device (default cpu)")
    add_precision_argument(parser)
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores; with "
                                                    "--jobs K, per worker: cores // K)")
    parser.add_argument("--jobs", type=int, default=1, metavar="K",
                        help="run independent strategies (replay) or grid points (sweep) in K "
                             "worker processes; the results are the same as with 1 (default 1)")
    parser.add_argument("--pretrain-epochs", type=int, help="MF pretraining epochs (default 20)")
    parser.add_argument("--cache-dir", help="where shared test candidates are cached "
                                            "(default ~/.cache/smlrec or $SMLREC_CACHE)")
    parser.add_argument("--config", help="TOML settings file; flags override it")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override any setting, e.g. strategy.sml.rounds=5 or mf.lr=0.02")
    parser.add_argument("--out", help="results directory (default runs/<timestamp>)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--no-report", action="store_true",
                        help="skip writing the report (tables, plots) into <out>/report")


# ----------------------------------------------------------------------------------------------
# Logging of the production commands

class JsonLines(logging.Formatter):
    """One JSON object per record: time, level, logger, event, message and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                 + f".{int(record.msecs):03d}Z", "level": record.levelname.lower(), "logger": record.name,
                 "event": getattr(record, "event", None), "message": record.getMessage()}
        entry.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


_HANDLER_FLAG = "_smlrec_cli_handler"


class _CurrentStderr(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is when a record is emitted.

    A plain ``StreamHandler(sys.stderr)`` keeps the stream it was built with; when that stream is
    replaced and closed (pytest's capture, an application redirecting stderr), every later record
    fails with "I/O operation on closed file"."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:   # StreamHandler.__init__ assigns it; the property ignores it
        pass


def configure_logging(json_lines: bool = False, level: int = logging.INFO) -> logging.Handler:
    """Print smlrec's log records (updates, swaps, fallbacks) on stderr at ``level`` and above.

    Python prints only warnings by default, so without this an info record such as "now serving
    version 7" is lost. Calling it again replaces the handler it installed (tests call main()
    repeatedly).
    """
    logger = logging.getLogger("smlrec")
    for handler in [h for h in logger.handlers if getattr(h, _HANDLER_FLAG, False)]:
        logger.removeHandler(handler)
    handler = _CurrentStderr()
    setattr(handler, _HANDLER_FLAG, True)
    handler.setFormatter(JsonLines() if json_lines else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler
