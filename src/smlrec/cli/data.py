"""``smlrec data ...``: look at a log before replaying it."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from .common import add_data_arguments, add_period_arguments, command, settings_layers


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    stats = actions.add_parser("stats", help="interactions, users, items, time span, and per period "
                                             "the count and the share of new users and items")
    stats.add_argument("file", help="the log file (or folder, for --format adressa)")
    add_data_arguments(stats, path_flag=False)
    add_period_arguments(stats)
    stats.add_argument("--config", help="TOML settings file; flags override it")
    stats.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting")
    stats.add_argument("--csv", help="also write the per-period table to this CSV file")


@command("data", _data_arguments)
def run_data(args: argparse.Namespace) -> int:
    """Inspect a log: `smlrec data stats FILE` prints the paper's dataset table."""
    from ..config import replay_settings
    from ..data.loading import load_log, period_boundaries
    from ..data.stats import log_summary, period_stats

    args.data = args.file
    settings = replay_settings(*settings_layers(args))
    data = settings.data
    log = load_log(data)
    summary = log_summary(log)
    table = period_stats(log, period_boundaries(log, data), settings.plan, data.timezone)
    first, last = table["start"].iloc[0], table["end"].iloc[-1]
    print(f"{log.source} (format {data.format})")
    print(f"interactions {summary['interactions']:,}   users {summary['users']:,}   "
          f"items {summary['items']:,}")
    print(f"time span    {first:%Y-%m-%d %H:%M} .. {last:%Y-%m-%d %H:%M} ({data.timezone}), "
          f"{summary['span_days']:.1f} days")
    skipped = log.metadata.get("skipped_events_without_article_id")
    if skipped is not None:
        print(f"skipped      {skipped:,} events without an article id "
              f"(from {log.metadata.get('files', '?')} files)")
    core = log.metadata.get("k_core")
    if core:
        print(f"k-core       users >= {core['min_user_interactions']}, items >= "
              f"{core['min_item_interactions']} interactions: {core['removed']:,} interactions "
              f"removed in {core['passes']} passes")
    cut = (f"day cuts {','.join(f'{c:g}' for c in data.day_cuts)}h" if data.day_cuts
           else f"windows of {data.every}" if data.every else "equal counts")
    print(f"\n{len(table)} periods ({cut}):")
    shown = table.copy()
    for column in ("start", "end"):
        shown[column] = shown[column].dt.strftime("%Y-%m-%d %H:%M:%S")
    for column in ("new_user_share", "new_item_share"):
        shown[column] = (100 * shown[column]).map("{:.1f}%".format)
    print(shown.to_string(index=False))
    if args.csv:
        _write_atomic(Path(args.csv), table.to_csv(index=False))
        print(f"\nPer-period table written to {args.csv}")
    return 0


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
