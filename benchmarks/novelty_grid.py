"""Choose the new-item prior's form and weight (strategies/novelty.py) on validation periods.

    python benchmarks/novelty_grid.py run --strategy pop-recent --out grid.npz            # bundled data
    python benchmarks/novelty_grid.py run --data news.csv --periods 20 --plan 5,8,2,5 \\
        --strategy itemknn --out grid.npz
    python benchmarks/novelty_grid.py table grid.npz [--pick AGE,WINDOW,CARRY,WEIGHT]

``run`` trains the inner strategy once through the replay's periods (same pretraining, same
sampled candidates as ``smlrec replay`` with the default seed) and, on every scored period, ranks
the candidates by ``zscore(inner) + weight * prior`` for a grid of forms (max_age, window, carry)
and weights: the same scores the ``<strategy>+new`` wrapper serves with those settings, so
``smlrec replay --strategies pop-recent+new --set strategy.pop-recent+new.weight=...`` gives the
same R@20. ``table`` prints validation R@20 per form and weight, the validation-best setting,
and test R@20 (all, warm users, cold users, rows whose item is first seen in the scored period)
with and without the prior; ``--pick`` reports a given setting instead of the validation-best.
"""

from __future__ import annotations

import argparse
import itertools
import sys

import numpy as np
import torch

AGES, WINDOWS, CARRIES = (0, 1, 2, 1000), (0, 2000), (0.0, 0.25, 1.0)
WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0)
BLOCK = 1024


def run(args: argparse.Namespace) -> None:
    from smlrec.config import replay_settings
    from smlrec.data.candidates import CandidateStore
    from smlrec.data.loading import load_timeline
    from smlrec.data.periods import SCORED_ROLES, Plan
    from smlrec.evaluation.metrics import positive_ranks
    from smlrec.strategies.factory import configure_threads, make_strategy
    from smlrec.strategies.novelty import NoveltySettings, NoveltyTracker, zscore_rows
    from smlrec.strategies.pretrain import pretrain_model

    layer: dict = {"threads": args.threads}
    if args.data:
        layer["data"] = {"path": args.data, "periods": args.periods}
    if args.plan:
        plan = Plan.parse(args.plan)
        layer["plan"] = {"pretrain": plan.pretrain, "offline": plan.offline, "validation": plan.validation,
                         "test": plan.test}
    settings = replay_settings(layer)
    configure_threads(settings)
    timeline = load_timeline(settings)
    log = timeline.log
    initial, _ = pretrain_model(timeline.pretrain_data, log.n_users, log.n_items, settings)
    candidates = CandidateStore(timeline, settings.seed, settings.n_negatives, settings.cache_dir)
    user_first, item_first = timeline.first_seen_period()
    forms = [NoveltySettings(a, w, c) for a, w, c in itertools.product(AGES, WINDOWS, CARRIES)]
    trackers = [NoveltyTracker(form, log.n_items) for form in forms]
    strategy = make_strategy(args.strategy, timeline, settings)
    strategy.start(timeline.pretrain_data, {k: v.clone() for k, v in initial.items()})
    for tracker in trackers:
        tracker.observe(timeline.pretrain_data.items)
    saved: dict[str, np.ndarray] = {}
    for period in timeline.periods[timeline.plan.pretrain:]:
        if period.role in SCORED_ROLES:
            ids = np.asarray(candidates.get(period), dtype=np.int64)
            valid = torch.from_numpy(ids[:, 1:] >= 0)
            block = np.maximum(ids, 0)
            blocks = [slice(lo, min(len(period), lo + BLOCK)) for lo in range(0, len(period), BLOCK)]
            with torch.no_grad():
                z = torch.cat([zscore_rows(strategy.score(period, rows, torch.from_numpy(block[rows])))
                               for rows in blocks]).numpy()
            ranks = np.zeros((len(forms), len(WEIGHTS), len(period)), np.int32)
            for f, tracker in enumerate(trackers):
                prior = np.concatenate([tracker.prior(period, rows, block[rows]) for rows in blocks])
                for w, weight in enumerate(WEIGHTS):
                    scores = torch.from_numpy((z + weight * prior).astype(np.float32))
                    ranks[f, w] = positive_ranks(scores, valid).numpy()
            key = f"{period.index}_{period.role}"
            saved[f"ranks_{key}"] = ranks
            saved[f"cold_user_{key}"] = user_first[period.users] >= period.index
            saved[f"new_item_{key}"] = item_first[period.items] >= period.index
            print(f"period {period.index} ({period.role}) scored", file=sys.stderr, flush=True)
        if period.index < timeline.periods[-1].index:
            strategy.update(period)
            for tracker in trackers:
                tracker.observe(period.items)
    np.savez_compressed(args.out, forms=np.array([[f.max_age, f.window, f.carry] for f in forms]),
                        weights=np.array(WEIGHTS), **saved)


def _r20(ranks: np.ndarray, mask: np.ndarray | None = None) -> float:
    ranks = ranks if mask is None else ranks[mask]
    return float(np.mean(ranks < 20)) if ranks.size else float("nan")


def table(args: argparse.Namespace) -> None:
    grid = np.load(args.grid)
    forms, weights = grid["forms"], grid["weights"]
    keys = sorted({k.split("_", 1)[1] for k in grid.files if k.startswith("ranks_")},
                  key=lambda k: int(k.split("_")[0]))

    def role(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        chosen = [k for k in keys if k.endswith(name)]
        return (np.concatenate([grid[f"ranks_{k}"] for k in chosen], axis=2),
                np.concatenate([grid[f"cold_user_{k}"] for k in chosen]),
                np.concatenate([grid[f"new_item_{k}"] for k in chosen]))

    val, val_cold, val_new = role("validation")
    test, test_cold, test_new = role("test")
    recall = (val < 20).mean(axis=2)
    if args.pick:
        age, window, carry, weight = (float(v) for v in args.pick.split(","))
        f = int(np.flatnonzero((forms[:, 0] == age) & (forms[:, 1] == window) & (forms[:, 2] == carry))[0])
        w = int(np.flatnonzero(weights == weight)[0])
    else:
        f, w = np.unravel_index(int(np.argmax(recall)), recall.shape)
    print("validation R@20 by form (max_age, window, carry) and weight:")
    print("form            " + " ".join(f"{x:>6g}" for x in weights))
    for i, (age, window, carry) in enumerate(forms):
        print(f"{int(age):>4} {int(window):>4} {carry:>5g}  " + " ".join(f"{x:.4f}" for x in recall[i]))
    print(f"rows: validation {len(val_new)} ({int(val_new.sum())} new-item), test {len(test_new)} "
          f"({int((~test_cold).sum())} warm, {int(test_cold.sum())} cold, {int(test_new.sum())} new-item)")
    print("| setting | val R@20 | val new-item | test R@20 | test warm | test cold | test new-item |")
    print("|---|---|---|---|---|---|---|")
    a, wnd, c = forms[f]
    for label, (i, j) in (("without the prior", (0, 0)),
                          (f"max_age {int(a)}, window {int(wnd)}, carry {c:g}, weight {weights[w]:g}", (f, w))):
        v, t = val[i, j], test[i, j]
        print(f"| {label} | {_r20(v):.4f} | {_r20(v, val_new):.4f} | {_r20(t):.4f} | {_r20(t, ~test_cold):.4f} "
              f"| {_r20(t, test_cold):.4f} | {_r20(t, test_new):.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--data", help="log file (default: the bundled MovieLens ratings)")
    r.add_argument("--periods", type=int, default=20)
    r.add_argument("--plan", help="P,O,V,T (default: the replay's default plan)")
    r.add_argument("--strategy", required=True, help="the inner strategy, e.g. pop-recent, itemknn, sml")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--out", required=True)
    t = sub.add_parser("table")
    t.add_argument("grid")
    t.add_argument("--pick", help="AGE,WINDOW,CARRY,WEIGHT to report instead of the validation-best")
    args = parser.parse_args()
    run(args) if args.command == "run" else table(args)


if __name__ == "__main__":
    main()
