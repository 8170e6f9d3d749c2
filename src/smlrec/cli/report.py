"""Subcommands ``report``, ``wins`` and ``sweep``: argument parsing only (see report/ and experiment/)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .common import command, load_plugins, replay_arguments, settings_layers


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="replay results directories; several are combined when their periods match")
    parser.add_argument("--out", help="report directory (default: RUN_DIR/report for one run)")
    parser.add_argument("--reference", help="strategy whose relative improvement (RI) Table 1 shows "
                                            "(default: the one best on most metrics)")


@command("report", _report_arguments)
def run_report(args: argparse.Namespace) -> int:
    """Tables, per-period plots, cost table and old/new breakdown from replay results."""
    from ..errors import ConfigError
    from ..report.document import write_report

    if args.out:
        out = Path(args.out)
    elif len(args.run_dirs) == 1:
        out = Path(args.run_dirs[0]) / "report"
    else:
        raise ConfigError("several RUN_DIRs: give --out REPORT_DIR")
    write_report(args.run_dirs, out, reference=args.reference)
    print(f"Report written to {out}/ (open {out / 'report.html'})")
    return 0


def _wins_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="replay results directories, of one log or several: runs of the same log "
                             "are combined, each log gets its own row of panels")
    parser.add_argument("--out", required=True, help="directory to write (must not exist or be empty)")
    parser.add_argument("--history-buckets", default="0,1,5,20", metavar="E0,E1,...",
                        help="lower edges of the history-length buckets (default 0,1,5,20: "
                             "0, 1-4, 5-19, 20+ earlier rows of the user)")


@command("wins", _wins_arguments)
def run_wins(args: argparse.Namespace) -> int:
    """Who wins where: test R@20 per log and user group (warm/cold, history length), with intervals."""
    from ..atomic import atomic_directory
    from ..errors import ConfigError
    from ..evaluation.groups import parse_edges
    from ..report.runs import load_run
    from ..report.wins import logs_of, winners_line, write_wins

    edges = parse_edges(args.history_buckets)
    logs = logs_of([load_run(path) for path in args.run_dirs])
    missing = [run.shown_path for log in logs for run in log.combined.runs if run.rows is None]
    if len(missing) == len(args.run_dirs):
        raise ConfigError(f"{missing[0]}: no test_rows.csv.gz (written by replays of this version "
                          "on); replay again to get per-row results")
    out = Path(args.out)
    with atomic_directory(out) as tmp:
        table, _ = write_wins(logs, tmp, edges)
        if table.empty:
            raise ConfigError("no test row ranked under a ranking protocol (sampled or full) in "
                              + ", ".join(args.run_dirs))
    for log in dict.fromkeys(table["log"]):
        for protocol in dict.fromkeys(table["protocol"]):
            print(f"{log}, {protocol}: {winners_line(table, log, protocol)}")
    for path in missing:
        print(f"warning: {path} has no test_rows.csv.gz (written before per-row results); its "
              "strategies are left out", file=sys.stderr)
    print(f"Who wins where written to {out}/ (who_wins.csv, .md, .png)")
    return 0


def _sweep_arguments(parser: argparse.ArgumentParser) -> None:
    replay_arguments(parser)
    parser.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2,...",
                        help="a swept setting and its values, e.g. mf.lr=0.005,0.01 or "
                             "strategy.fine-tune.epochs=1,3,5; repeat for a 2-D grid")
    parser.add_argument("--metric", default="ndcg@20",
                        help="validation metric to plot and choose by (default ndcg@20)")


@command("sweep", _sweep_arguments)
def run_sweep_command(args: argparse.Namespace) -> int:
    """Hyper-parameter sensitivity: one replay per grid point, scored on validation periods only."""
    from ..atomic import check_out_dir
    from ..experiment.sweep import parse_grid, run_sweep
    from ..report.sweep import write_sweep

    from ..errors import ConfigError

    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    load_plugins(args)
    axes = [parse_grid(text) for text in args.grid]
    out = Path(args.out) if args.out else Path("runs") / time.strftime("sweep-%Y%m%d-%H%M%S")
    check_out_dir(out)

    def announce(number: int, total: int, point: dict) -> None:
        shown = ", ".join(f"{k}={v}" for k, v in point.items())
        print(f"[{number + 1}/{total}] {shown}", file=sys.stderr, flush=True)

    result = run_sweep(settings_layers(args), axes, args.metric, progress=not args.no_progress,
                       on_point=announce, jobs=args.jobs)
    write_sweep(result, out)
    shown = result.table.drop(columns=["point"]).copy()
    print(f"\nValidation {args.metric} over the grid ({result.wall_seconds:.1f} s in all):")
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for row in result.best().to_dict(orient="records"):
        chosen = ", ".join(f"{k}={row[k]}" for k in result.keys)
        print(f"best for {row['strategy']}: {chosen} ({args.metric} {row[args.metric]:.4f})")
    print(f"\nSweep written to {out}/")
    return 0
