"""Production subcommands: ``init``, ``update``, ``versions``, ``rollback``, ``recommend``, ``serve``
(argument parsing only).

Exit status of every command: 0 done (for ``update`` also: the batch is the one the latest version
was built from, an idempotent retry), 2 refused or failed with a message on stderr and nothing
written, 1 only for a bug (a traceback).

Imports are deferred into the commands: ``smlrec recommend`` must not pay for FastAPI, uvicorn or
matplotlib at start-up.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from ..errors import CheckpointError, ConfigError
from .common import (add_data_arguments, add_period_arguments, add_precision_argument, command,
                     configure_logging, settings_layers)


def _log_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-json", action="store_true",
                        help="log events (updates, refusals, rollbacks, swaps) as JSON lines on stderr")


def _version_number(text: str) -> int:
    """A version given as 7, v7 or v000007."""
    digits = text.strip().lower().removeprefix("v")
    if not digits.isdigit() or int(digits) < 1:
        raise argparse.ArgumentTypeError(f"expected a version such as 3 or v000003, got {text!r}")
    return int(digits)


def _init_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser, required=True)
    add_period_arguments(parser)
    parser.add_argument("--registry", required=True, help="registry folder to create")
    parser.add_argument("--strategy", default="sml", help="strategy name (default sml); see `smlrec strategies`")
    parser.add_argument("--seed", type=int, help="random seed (default 2020)")
    parser.add_argument("--base", choices=["mf", "lightgcn", "ncf"], help="base model (default mf)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="torch device (default cpu)")
    add_precision_argument(parser)
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    parser.add_argument("--pretrain-epochs", type=int, help="MF pretraining epochs (default 20)")
    parser.add_argument("--config", help="TOML settings file; flags override it")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override any setting, e.g. strategy.fine-tune.epochs=2")


@command("init", _init_arguments)
def run_init(args: argparse.Namespace) -> int:
    """Create a model registry: pretrain and run a strategy over a history log (version 1)."""
    from ..config import replay_settings
    from ..models.distributed import init_from_environment, is_leader, leave
    from ..production import init_registry

    settings = replay_settings(*settings_layers(args))
    init_from_environment(settings.device)    # under torchrun: every rank trains, rank 0 writes
    leader = is_leader()                      # (asked before leave(): after it every process is "rank 0")
    try:
        version = init_registry(args.data, args.registry, args.strategy, settings)
    finally:
        leave()
    if leader:
        print(f"{args.registry}: version {version} written ({args.strategy})")
    return 0


def _update_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", required=True, help="registry folder")
    parser.add_argument("--data", required=True, help="the new period's interactions (same format as the history)")
    parser.add_argument("--force", action="store_true",
                        help="apply a batch that was already applied, whose times precede the last period "
                             "or end beyond --max-future")
    parser.add_argument("--max-future", default="1D",
                        help="refuse a batch whose latest time is beyond now + this (default 1D; 'none' "
                             "turns the check off)")
    parser.add_argument("--duplicates", choices=["refuse", "drop", "keep"], default="refuse",
                        help="rows repeating an earlier row of the batch exactly (same user, item, time, "
                             "e.g. a file concatenated twice): refuse the batch (default), drop the "
                             "repeats, or keep them as repeated interactions")
    _log_json_argument(parser)


@command("update", _update_arguments)
def run_update(args: argparse.Namespace) -> int:
    """Apply one new period to the latest version and write the next version."""
    from ..models.distributed import init_from_environment, is_leader, leave
    from ..production import update_once

    if args.log_json:           # the plain output below is the human log
        configure_logging(json_lines=True)
    # Under torchrun: every rank reads the batch and trains, rank 0 alone touches the registry.
    init_from_environment(_registry_device(args.registry))
    leader = is_leader()                      # (asked before leave(): after it every process is "rank 0")
    try:
        report = update_once(args.registry, args.data, force=args.force, max_future=args.max_future,
                             duplicates=args.duplicates)
    finally:
        leave()
    if not leader:
        return 0
    if report.already_applied:
        print(f"{args.registry}: already applied: version {report.version} was built from this batch "
              "(same sha256); nothing to do")
        return 0
    for warning in report.warnings:
        print(f"warning (forced): {warning}", file=sys.stderr)
    if report.duplicates:
        done = "dropped" if report.duplicates["mode"] == "drop" else "kept as repeated interactions"
        print(f"note: {report.duplicates['rows']} exact duplicate rows {done} (--duplicates "
              f"{report.duplicates['mode']})", file=sys.stderr)
    print(f"{args.registry}: version {report.version} written (period {report.period}, {report.rows} "
          f"interactions, {report.new_users} new users, {report.new_items} new items, "
          f"update {report.seconds:.2f} s)")
    return 0


def _registry_device(path: str) -> str:
    """The device the registry's latest version trains on (the process group's backend depends on
    it: gloo on the CPU, NCCL on CUDA); "cpu" when there is no readable registry, whose error the
    update itself reports."""
    from ..production.registry import ModelRegistry

    registry = ModelRegistry(path)
    try:
        latest = registry.latest_version()
        return str(registry.manifest(latest)["settings"].get("device") or "cpu") if latest else "cpu"
    except (ConfigError, CheckpointError, KeyError, TypeError, AttributeError):
        return "cpu"


def _versions_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", required=True, help="registry folder")
    parser.add_argument("--json", action="store_true", help="one JSON object per version instead of a table")


@command("versions", _versions_arguments)
def run_versions(args: argparse.Namespace) -> int:
    """List the registry's versions: created, strategy, periods, data range, rows; * marks LATEST."""
    import json

    from ..production.registry import ModelRegistry, version_summary

    registry = ModelRegistry(args.registry)
    latest = registry.latest_version()
    if latest is None:
        raise ConfigError(f"{args.registry}: no model registry here (no LATEST file)")
    rows = [version_summary(registry, v, latest) for v in registry.versions()]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    header = ("", "version", "created", "strategy", "periods", "data from", "data to", "rows", "batch")
    table = [header] + [("*" if r["latest"] else "", str(r["version"]), r["created"], r["strategy"],
                         r["periods"], r["data_from"], r["data_to"], str(r["rows"]), r["source"]) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
    return 0


def _rollback_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", required=True, help="registry folder")
    parser.add_argument("--to", required=True, type=_version_number, help="version to serve again, e.g. 3 or v000003")
    _log_json_argument(parser)


@command("rollback", _rollback_arguments)
def run_rollback(args: argparse.Namespace) -> int:
    """Serve an older version again (LATEST moves atomically; no version is deleted)."""
    from ..production.registry import ModelRegistry

    if args.log_json:
        configure_logging(json_lines=True)
    registry = ModelRegistry(args.registry)
    with registry.lock():
        previous = registry.rollback(args.to)
    print(f"{args.registry}: LATEST is version {args.to} again (was {previous}); the next update builds on it")
    return 0


def _recommend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", required=True, help="registry folder")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="one raw user id")
    who.add_argument("--users", help="file with one raw user id per line (a header 'user' is skipped)")
    parser.add_argument("--k", type=int, default=20, help="items per user (default 20)")
    parser.add_argument("--version", type=_version_number,
                        help="serve this committed version (one that `smlrec versions` lists) instead of the latest")
    parser.add_argument("--include-seen", action="store_true", help="do not exclude items the user already has")
    parser.add_argument("--strict", action="store_true", help="fail on an unknown user instead of serving the cold-start rule")
    recent = parser.add_mutually_exclusive_group()
    recent.add_argument("--recent", metavar="ITEM,ITEM",
                        help="with --user: raw ids of the items the user interacted with since the version's "
                             "data, oldest first, comma-separated; scored as the replay scores a row after the "
                             "user's earlier rows of the period (docs/production.md, 'Recent items')")
    recent.add_argument("--recent-file", metavar="FILE",
                        help="CSV of user,item rows (a header user,item is skipped), oldest first per user: "
                             "the recent items of the queried users")
    parser.add_argument("--out", help="CSV file to write (default: standard output); written to a new "
                                      "temp file beside it, then renamed (a link at OUT is replaced, "
                                      "never written through)")


@command("recommend", _recommend_arguments)
def run_recommend(args: argparse.Namespace) -> int:
    """Top-K items per user from the latest version (CSV: user,rank,item,score,fallback,version)."""
    from ..production.served import open_served

    users = [args.user] if args.user is not None else _read_users(Path(args.users))
    if args.recent is not None and args.user is None:
        raise ConfigError("--recent goes with --user (one user); for a file of users give --recent-file")
    if args.recent is not None or args.recent_file is not None:
        # recent items are read through the strategy's own score (torch), as the replay does
        from ..production.recommender import Recommender

        model = Recommender.from_registry(args.registry, args.version)
        if args.recent is not None:
            recent = [[item.strip() for item in args.recent.split(",") if item.strip()]]
        else:
            recent = _read_recent(Path(args.recent_file), users, model.selector)
        if any(recent) and not model.reads_history:
            print(f"note: strategy {model.checkpoint.strategy!r} reads no history ({model.history_rule}); "
                  "the recent items are only excluded from the answer", file=sys.stderr)
        answers = model.top_k(users, k=args.k, exclude_seen=not args.include_seen, strict=args.strict,
                              recent=recent)
    else:
        # A version with served tables is answered with numpy alone (no torch, no pandas: start-up
        # is a fraction of a second); other strategies rebuild the strategy (torch).
        model = open_served(args.registry, args.version)
        if model is None:
            from ..production.recommender import Recommender

            model = Recommender.from_registry(args.registry, args.version)
        answers = model.top_k(users, k=args.k, exclude_seen=not args.include_seen, strict=args.strict)
    if args.out:
        _write_csv(Path(args.out), lambda handle: _write_answers(handle, answers, model.version))
    else:
        _write_answers(sys.stdout, answers, model.version)
    return 0


def _write_answers(handle, answers, version: int) -> None:
    """CSV user,rank,item,score,fallback,version (what pandas' to_csv writes for the same frame)."""
    import csv

    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(("user", "rank", "item", "score", "fallback", "version"))
    for answer in answers:
        writer.writerows((answer.user, rank, item, repr(float(score)), answer.fallback, version)
                         for rank, (item, score) in enumerate(zip(answer.items, answer.scores), start=1))


def _write_csv(out: Path, write) -> None:
    """Write ``out`` with ``write(handle)`` through a uniquely named temp file beside it (created
    with O_EXCL, so a planted link is never followed) renamed into place; a link at ``out`` itself
    is replaced, its target left alone. The file gets the umask's usual permissions."""
    import os
    import tempfile

    try:
        fd, temp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as err:
        raise ConfigError(f"{out}: cannot write there ({err.strerror})") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            write(handle)
        os.replace(temp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _read_users(path: Path) -> list[str]:
    from ..errors import DataError

    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read user ids ({err})", path=str(path)) from None
    users = [line.split(",")[0].strip() for line in lines if line]
    if users and users[0].lower() in ("user", "user_id", "userid"):
        users = users[1:]
    if not users:
        raise DataError("no user ids in the file", path=str(path))
    return users


def _read_recent(path: Path, users: list, selector) -> list[list[str]]:
    """Per queried user, the items of its rows in ``path`` (user,item CSV, file order = oldest
    first); users are matched under the ids rule (" 42 " is 42). Rows of users not queried are
    ignored."""
    import csv

    from ..errors import DataError
    from ..production.served import normalise_query

    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read recent items ({err})", path=str(path)) from None
    if rows and [cell.strip().lower() for cell in rows[0][:2]] == ["user", "item"]:
        rows = rows[1:]
        first_line = 2
    else:
        first_line = 1
    kind = selector.user_kind
    items_of: dict = {}
    for line, row in enumerate(rows, start=first_line):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise DataError("expected user,item (two non-empty columns)", path=str(path), line=line)
        items_of.setdefault(normalise_query(row[0], kind), []).append(row[1].strip())
    return [items_of.get(normalise_query(user, kind), []) for user in users]


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds such as 2 or 0.5, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0 (the server checks LATEST that "
                                         f"often), got {text!r}")
    return value


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", required=True, help="registry folder")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; any other address gets a warning: the "
                             "server has no authentication)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--poll", type=_positive_seconds, default=2.0,
                        help="seconds between checks for a new version (> 0; default 2)")
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS/torch threads for scoring (default 1: requests run side by side instead)")
    parser.add_argument("--max-k", type=int, default=1_000, help="most items per user a request may ask (default 1000)")
    parser.add_argument("--max-users", type=int, default=10_000, help="most users per batch request (default 10000)")
    parser.add_argument("--max-results", type=int, default=200_000,
                        help="most users x k per request (default 200000)")
    parser.add_argument("--max-recent", type=int, default=1_000,
                        help="most recent items per user a request may carry (default 1000)")
    parser.add_argument("--max-body", type=int, default=1_000_000,
                        help="largest request body in bytes (default 1000000); larger ones get a 413")
    parser.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")
    _log_json_argument(parser)


@command("serve", _serve_arguments)
def run_serve(args: argparse.Namespace) -> int:
    """Serve top-K recommendations over HTTP; picks up new versions as they land."""
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be 1..65535, got {args.port}")
    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    configure_logging(json_lines=args.log_json)      # swaps and fallbacks print by default
    from ..production.serve import Limits, create_app, host_warning

    limits = Limits(max_k=args.max_k, max_users=args.max_users, max_results=args.max_results,
                    max_body=args.max_body, max_recent=args.max_recent)
    warning = host_warning(args.host)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    import threadpoolctl
    import torch
    import uvicorn

    torch.set_num_threads(args.threads)
    threadpoolctl.threadpool_limits(args.threads)      # numpy's BLAS scores the served tables
    app = create_app(args.registry, poll_seconds=args.poll, limits=limits)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=args.access_log)
    return 0
