"""``smlrec synth``: write a synthetic interaction log with planted drift (see data/synth.py)."""

from __future__ import annotations

import argparse
import time

from .common import command


def _synth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True,
                        help="output file: .parquet/.pq writes Parquet, anything else CSV")
    parser.add_argument("--scale", choices=["yelp", "adressa", "small"], default=None,
                        help="preset shape: yelp (3.0M rows, 59k users, 123k items, 40 periods, stable), "
                             "adressa (3.66M, 479k users, 21k items, 63 periods, news), small (50k rows)")
    parser.add_argument("--regime", choices=["stable", "news", "drift"],
                        help="stable: long-lived items, slow drift; news: items live 1-3 periods; "
                             "drift: stable's sizes, fast-turning interests and a rotating topic mix")
    parser.add_argument("--interactions", type=int, help="number of rows")
    parser.add_argument("--users", type=int, help="number of distinct users")
    parser.add_argument("--items", type=int, help="number of distinct items")
    parser.add_argument("--periods", type=int, help="number of generated periods")
    parser.add_argument("--seed", type=int, help="random seed (default 2020)")
    parser.add_argument("--drift", type=float, help="mean angular speed of user interests per period")


@command("synth", _synth_arguments)
def run_synth(args: argparse.Namespace) -> int:
    """Write a synthetic log (user,item,time) with planted drift."""
    from ..data.synth import SCALE_PLANS, generate, synth_settings, write_log

    scale = args.scale
    if scale is None and args.interactions is None:
        scale = "small"
    settings = synth_settings(scale, regime=args.regime, interactions=args.interactions,
                              users=args.users, items=args.items, periods=args.periods,
                              seed=args.seed, drift=args.drift)
    began = time.perf_counter()
    frame = generate(settings)
    generated = time.perf_counter() - began
    path = write_log(frame, args.out)
    print(f"wrote {path}: {len(frame):,} interactions, {frame['user'].nunique():,} users, "
          f"{frame['item'].nunique():,} items, {settings.periods} periods ({settings.regime}) "
          f"in {generated:.1f} s (+{time.perf_counter() - began - generated:.1f} s writing)")
    plan = SCALE_PLANS.get(scale or "", None)
    cut = "--day-cuts 10,17" if settings.regime == "news" else f"--periods {settings.periods}"
    print(f"replay it with: smlrec replay --data {path} {cut}"
          + (f" --plan {plan}" if plan else " --plan P,O,V,T"))
    return 0
