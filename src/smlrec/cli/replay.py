"""Subcommands ``replay`` and ``strategies`` (argument parsing only; see experiment/replay.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (add_plugin_argument, command, explain_preset_format, load_plugins, replay_arguments,
                     settings_layers)


@command("replay", replay_arguments)
def run_replay(args: argparse.Namespace) -> int:
    """Replay strategies period by period on a log (default: the bundled MovieLens) and score them."""
    from ..api import Results, run
    from ..atomic import check_out_dir
    from ..config import replay_settings
    from ..errors import DataError
    from ..experiment.results import default_out_dir, format_summary, summary_frame, write_results

    load_plugins(args)
    settings = replay_settings(*settings_layers(args))
    out = Path(args.out) if args.out else default_out_dir()
    # The API's run: under torchrun every rank replays (MF updates split across ranks); every rank
    # checks --out before any work, and rank 0 alone writes.
    try:
        result = run(settings, jobs=args.jobs, progress=not args.no_progress,
                     before_work=lambda: check_out_dir(out))
    except DataError as err:
        raise explain_preset_format(err, args, settings.data.format) from None
    if not result.leader:
        return 0
    results = Results(result)
    write_results(out, result, extra_files=_report_writers(args, out), tables=results.tables)
    plan = result.timeline.plan
    print(f"\nTest periods {plan.pretrain + plan.offline + plan.validation}"
          f"..{len(result.timeline.periods) - 1}, micro-averaged ({result.wall_seconds:.1f} s in all):")
    print(format_summary(summary_frame(results.periods)))
    print(f"\nResults written to {out}/")
    if (out / "report").is_dir():
        print(f"Report: {out / 'report' / 'report.html'}")
    return 0


def _report_writers(args: argparse.Namespace, out: Path) -> dict:
    """Extra files a replay writes beside its results: the report, unless --no-report."""
    if getattr(args, "no_report", False):
        return {}
    from ..report.document import replay_report_writer

    return {"report": replay_report_writer(out)}


def _strategies_arguments(parser: argparse.ArgumentParser) -> None:
    add_plugin_argument(parser)


@command("strategies", _strategies_arguments)
def run_strategies(args: argparse.Namespace) -> int:
    """List the strategies a replay can run, each with the history a scored row reads."""
    from ..strategies import STRATEGIES, load_entry_points

    load_plugins(args)
    load_entry_points()
    for name, spec in STRATEGIES.items():
        print(f"{name:<16} {'' if spec.in_default else '(opt-in) '}{spec.description}")
        print(f"{'':<16} history: {spec.history or '(not declared)'}")
    return 0
