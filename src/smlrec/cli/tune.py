"""Subcommand ``tune``: argument parsing only (see experiment/tune.py and docs/tuning.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_data_arguments, add_period_arguments, command, settings_layers


def _tune_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    add_period_arguments(parser)
    parser.add_argument("--strategies", required=True,
                        help="comma-separated strategies to tune, e.g. pop-recent,fine-tune")
    parser.add_argument("--budget", type=int, required=True, metavar="N",
                        help="trials per strategy (all processes and machines together)")
    parser.add_argument("--metric", default="recall@20",
                        help="validation metric to maximise (default recall@20; logloss is minimised)")
    parser.add_argument("--protocol", help="the one evaluation protocol the trials score under: sampled "
                                           "(default), full or auc")
    parser.add_argument("--sampler", choices=["tpe", "grid"], default="tpe",
                        help="tpe (Optuna's TPE, seeded with --seed; default) or grid (every "
                             "combination of listed values, e.g. --space fine-tune.epochs=1,3,5)")
    parser.add_argument("--space", action="append", metavar="STRATEGY.SETTING=SPEC",
                        help="add or replace a searched setting: LOW:HIGH (whole numbers: int), "
                             "LOW:HIGH:log, or A,B,C (listed values); repeatable")
    parser.add_argument("--space-file", metavar="TOML",
                        help="search spaces from a TOML file: [strategy] then setting = \"LOW:HIGH\" "
                             "or a list of values (--space overrides it)")
    parser.add_argument("--jobs", type=int, default=1, metavar="J",
                        help="run trials in J worker processes on this machine (default 1)")
    parser.add_argument("--storage", metavar="URL",
                        help="shared Optuna storage for several machines: an RDB URL "
                             "(sqlite:///tune.db, postgresql://...) or a journal file path on a shared "
                             "disk; every machine runs the same command")
    parser.add_argument("--study", default="smlrec-tune",
                        help="study name in --storage (one study per strategy: NAME:STRATEGY)")
    parser.add_argument("--seed", type=int, help="random seed of the replay and the sampler (default 2020)")
    parser.add_argument("--base", choices=["mf", "lightgcn", "ncf"], help="base model (default mf)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="torch device (default cpu)")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores; with --jobs J, "
                                                    "per worker: cores // J)")
    parser.add_argument("--pretrain-epochs", type=int, help="MF pretraining epochs (default 20)")
    parser.add_argument("--cache-dir", help="where shared candidates are cached")
    parser.add_argument("--config", help="TOML settings file (as for replay); flags override it")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override any setting, e.g. mf.lr=0.02")
    parser.add_argument("--out", default="tuned.toml",
                        help="the tuned settings file to write (default tuned.toml; replaced if it exists)")
    parser.add_argument("--no-progress", action="store_true", help="hide the per-trial lines")


@command("tune", _tune_arguments)
def run_tune_command(args: argparse.Namespace) -> int:
    """Tune strategies' key settings with Optuna on validation periods; write a TOML replay takes."""
    from ..experiment.tune import load_space_file, parse_space, run_tune, write_tuned

    overrides: dict = load_space_file(args.space_file) if args.space_file else {}
    for text in args.space or []:
        strategy, setting, spec = parse_space(text)
        overrides.setdefault(strategy, {})[setting] = spec
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    layers = settings_layers(args)
    result = run_tune(layers, strategies, args.budget, args.metric, args.jobs, args.storage, args.study,
                      args.sampler, overrides, progress=not args.no_progress)
    path = write_tuned(result, Path(args.out))
    print(f"\nTuned on validation periods {', '.join(map(str, result.validation_periods))} "
          f"({result.metric}, {result.wall_seconds:.1f} s in all):")
    for t in result.tunings:
        chosen = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        print(f"  {t.strategy:<14} {chosen}  ({result.metric} {t.value:.4f}, best of {t.trials} trials)")
    print(f"\nWritten {path}; replay with: smlrec replay --config {path}")
    return 0
