"""Subcommands ``replay`` and ``strategies`` (argument parsing only; see experiment/replay.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import command, replay_arguments, settings_layers


@command("replay", replay_arguments)
def run_replay(args: argparse.Namespace) -> int:
    """Replay strategies period by period on a log (default: the bundled MovieLens) and score them."""
    from ..atomic import check_out_dir
    from ..config import replay_settings
    from ..data.loading import load_timeline
    from ..errors import ConfigError
    from ..models.distributed import barrier, init_from_environment, is_leader, leave
    from ..experiment.replay import replay
    from ..experiment.results import (default_out_dir, format_summary, periods_frame, summary_frame,
                                      write_results)

    settings = replay_settings(*settings_layers(args))
    out = Path(args.out) if args.out else default_out_dir()
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    # Under torchrun: every rank replays (MF updates split across ranks), rank 0 alone writes.
    distributed = init_from_environment(settings.device)
    if distributed and args.jobs > 1:
        raise ConfigError("--jobs runs strategies in worker processes; under torchrun give --jobs 1")
    leader = is_leader()
    check_out_dir(out)
    barrier()  # every rank has checked --out before rank 0 can write it
    timeline = load_timeline(settings)  # fails on bad data before any work or any file
    runner = None
    if args.jobs > 1:
        from ..experiment.parallel import pool_runner

        runner = pool_runner(args.jobs)
    try:
        result = replay(settings, progress=not args.no_progress and leader, timeline=timeline,
                        runner=runner)
    finally:
        leave()
    if not leader:
        return 0
    write_results(out, result, extra_files=_report_writers(args, out))
    print(f"\nTest periods {result.timeline.plan.pretrain + result.timeline.plan.offline + result.timeline.plan.validation}"
          f"..{len(result.timeline.periods) - 1}, micro-averaged ({result.wall_seconds:.1f} s in all):")
    print(format_summary(summary_frame(periods_frame(result.records))))
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
    pass


@command("strategies", _strategies_arguments)
def run_strategies(args: argparse.Namespace) -> int:
    """List the strategies a replay can run, each with the history a scored row reads."""
    from ..strategies import STRATEGIES

    for name, spec in STRATEGIES.items():
        print(f"{name:<16} {'' if spec.in_default else '(opt-in) '}{spec.description}")
        print(f"{'':<16} history: {spec.history or '(not declared)'}")
    return 0
