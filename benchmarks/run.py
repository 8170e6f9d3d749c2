"""The smlrec benchmark: speed of each phase against the machine's own limits.

Usage::

    python benchmarks/run.py                     # Yelp and Adressa scale: 2 offline + 3 test periods
    python benchmarks/run.py --quick             # small logs, under 2 minutes, no targets asserted
    python benchmarks/run.py --scales yelp --test-periods 0   # the paper's whole plan (hours)
    python benchmarks/run.py --device cuda

What it measures, in this order:

1. the machine: fp32 matrix-multiply GFLOP/s (torch) and memory bandwidth GB/s (a large copy);
2. for each scale: generates the synthetic log (``smlrec synth``), then in a CHILD process (so its
   peak resident memory is the replay's own) loads it, pretrains MF, draws the test candidates and
   replays the strategies, recording every update's seconds; then MF training throughput
   ((user, positive, negative) triples/s, one ``run_trainer_epochs`` pass of MF alone, then the
   torch kernel right after) and evaluation
   throughput (test interactions/s, 1000 candidates each);
3. for each phase a FLOP and byte count (models below) and the achieved fraction of the limit:
   ``bound = max(FLOPs / peak FLOP/s, bytes / peak bandwidth)``, ``fraction = bound / measured``.

Cost models (d = embedding dimension, C = candidates per test interaction):

* MF training, per triple: 40 d FLOPs (two d-dot products forward, their gradients, and a
  row-wise Adam step of ~10 FLOPs per element on 3 rows) and 72 d bytes (read and write the
  parameter, first and second moment of the 3 rows touched, fp32).
* Evaluation, per test interaction: 2 C d FLOPs and C (4 d + 8) bytes (gather C item rows, read
  the ids, write the scores).
* Strategy updates: MF-retrain strategies (full-retrain, fine-tune) are ``epochs x rows`` triples;
  other strategies are counted by running one more update of the last period under torch's
  FlopCounterMode (matrix products only; elementwise work is not counted, so it is a lower bound),
  and another under torch.profiler, whose top operators show what the rest of the time goes to.

Writes BENCHMARKS.md and benchmarks/results.json (``--quick``: under runs/bench-quick/).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from smlrec import WAIT_SETTINGS  # noqa: E402
from smlrec.data.synth import SCALE_PLANS, generate, synth_settings, write_log  # noqa: E402

# ease is not in the default list: at Yelp scale its window holds ~120k items, whose dense
# item x item matrices (~170 GiB) it refuses (max_items); at Adressa scale (21k items, ~5 GiB)
# name it with --strategies.
DEFAULT_STRATEGIES = ("full-retrain", "full-retrain-converged", "fine-tune", "sml", "sml-bf16", "sml-s", "itemknn",
                      "sknn", "no-update", "ials")
# Benchmark-only names: a registered strategy with settings overrides and context overrides (Table
# 2's converged row; SML with its transfer in bf16, under SML's own random streams so that the two
# differ by arithmetic alone).
VARIANTS = {"full-retrain-converged": ("full-retrain", {"converge": True}, {}),
            "sml-bf16": ("sml", {}, {"precision": "bf16", "name": "sml"})}
N_CANDIDATES = 1000
TARGETS = {"mf_triples_per_s": 1_000_000, "eval_interactions_per_s": 30_000, "peak_rss_gb": 3.0,
           "sml_vs_flop_bound": 1.5}
MF_ANALYTIC = ("full-retrain", "full-retrain-converged", "fine-tune")

# Benchmark-only shapes for --quick (small stable, small news).
QUICK_SCALES = {
    "small": {"overrides": {"regime": "stable", "interactions": 8_000, "users": 400, "items": 600,
                            "periods": 8}, "plan": "3,2,1,2"},
    "small-news": {"overrides": {"regime": "news", "interactions": 6_000, "users": 600,
                                 "items": 240, "periods": 6}, "plan": "2,2,1,1"},
}
FULL_SCALES = {"yelp": {"scale": "yelp", "plan": SCALE_PLANS["yelp"]},
               "adressa": {"scale": "adressa", "plan": SCALE_PLANS["adressa"]}}


# ----------------------------------------------------------------------------------------------
# Cost models

def mf_triple_cost(dim: int) -> tuple[float, float]:
    """(FLOPs, bytes) of one (user, positive, negative) training triple."""
    return 40.0 * dim, 72.0 * dim


def eval_cost(dim: int, candidates: int = N_CANDIDATES) -> tuple[float, float]:
    """(FLOPs, bytes) of ranking one test interaction's candidates."""
    return 2.0 * candidates * dim, candidates * (4.0 * dim + 8.0)


def roofline(flops: float, nbytes: float | None, seconds: float, machine: dict) -> dict:
    """The time the machine's limits allow for this work, and the fraction achieved."""
    flop_bound = flops / (machine["matmul_gflops"] * 1e9)
    byte_bound = (nbytes or 0.0) / (machine["bandwidth_gbs"] * 1e9)
    bound = max(flop_bound, byte_bound)
    return {"flops": flops, "bytes": nbytes, "seconds": seconds, "flop_bound_s": flop_bound,
            "byte_bound_s": byte_bound if nbytes is not None else None,
            "bound_by": "memory" if byte_bound > flop_bound else "compute",
            "fraction_of_limit": bound / seconds if seconds > 0 else None}


# ----------------------------------------------------------------------------------------------
# The machine

def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _best_seconds(run, device: str, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls of ``run`` after one warm-up call."""
    run()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        _sync(device)
        best = min(best, time.perf_counter() - began)
    return best


def measure_machine(device: str = "cpu", size: int = 2048, copy_mb: int = 512,
                    repeats: int = 5) -> dict:
    """Peak fp32 matmul GFLOP/s and copy bandwidth GB/s (best of ``repeats``)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    gflops = 2.0 * size ** 3 / _best_seconds(lambda: torch.mm(a, b), device, repeats) / 1e9
    # The same product in bf16 (context for --precision bf16; the bounds use fp32's peak).
    a16, b16 = a.bfloat16(), b.bfloat16()
    bf16_gflops = 2.0 * size ** 3 / _best_seconds(lambda: torch.mm(a16, b16), device, repeats) / 1e9
    del a, b, a16, b16
    n = copy_mb * (1 << 20) // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    bandwidth = 2.0 * n * 4 / _best_seconds(lambda: dst.copy_(src), device, repeats) / 1e9  # read + write
    info = {"device": device, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "matmul_gflops": gflops, "matmul_bf16_gflops": bf16_gflops,
            "bandwidth_gbs": bandwidth, "matmul_size": size,
            "copy_mb": copy_mb, "platform": platform.platform(), "torch": torch.__version__}
    if device == "cuda":
        info["card"] = torch.cuda.get_device_name(0)
    return info


# ----------------------------------------------------------------------------------------------
# Phases (each usable on its own; the child process calls them in turn)

def measure_mf_training(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int,
                        mf, device: str = "cpu", epochs: int = 1, seed: int = 2020) -> dict:
    """Throughput of the MF training the strategies use (the one epoch loop + the MF trainer:
    fused lazy Adam when ``mf.sparse``): triples/s over ``epochs`` passes."""
    from smlrec.data.sampling import SetNegativeSampler
    from smlrec.models.fused_mf import make_mf_trainer
    from smlrec.models.mf import MF
    from smlrec.models.train_loop import run_trainer_epochs
    from smlrec.random import make_rng

    model = MF(n_users, n_items, mf.dim, mf.init_std, mf.sparse).to(device)
    trainer = make_mf_trainer(model, mf.lr, mf.sparse, mf.kernel)
    u = torch.from_numpy(np.asarray(users, dtype=np.int64)).to(device)
    i = torch.from_numpy(np.asarray(items, dtype=np.int64)).to(device)
    sampler = SetNegativeSampler(users, items)
    warm = min(len(users), 4096)   # compile (or load the compiled kernel) outside the timing
    run_trainer_epochs(trainer, u[:warm], i[:warm], lambda g: g.integers(0, n_items, warm), 1,
                       mf.batch_size, np.random.default_rng(0), device)

    rng = make_rng(seed, "bench-mf")
    began = time.perf_counter()
    sampler(rng)
    sampling = time.perf_counter() - began
    _sync(device)
    began = time.perf_counter()
    cpu_began = time.process_time()
    run_trainer_epochs(trainer, u, i, sampler, epochs, mf.batch_size, rng, device)
    _sync(device)
    seconds = time.perf_counter() - began
    cpu_seconds = time.process_time() - cpu_began
    triples = len(users) * epochs
    threads = torch.get_num_threads()
    return {"triples": triples, "seconds": seconds, "triples_per_s": triples / seconds,
            "triples_per_s_per_core": triples / seconds / max(threads, 1), "threads": threads,
            "negative_sampling_share": min(1.0, sampling * epochs / seconds), "dim": mf.dim,
            "batch_size": mf.batch_size, "sparse": mf.sparse, "cpu_seconds": cpu_seconds,
            "kernel": getattr(trainer, "kernel", "dense")}


def measure_evaluation(strategy, periods, candidates, batch_size: int, device: str) -> dict:
    """Test interactions ranked per second by ``strategy``'s served model (1000 candidates each)."""
    from smlrec.evaluation.metrics import rank_candidates

    rows, seconds = 0, 0.0
    for period in periods:
        store = candidates.get(period)
        _sync(device)
        began = time.perf_counter()
        rank_candidates(lambda r, c, p=period: strategy.score(p, r, c), store, batch_size, device)
        _sync(device)
        seconds += time.perf_counter() - began
        rows += len(period)
    return {"interactions": rows, "seconds": seconds, "interactions_per_s": rows / seconds}


def measure_evaluation_torch(strategy, periods, candidates, batch_size: int, device: str,
                             max_rows: int) -> dict:
    """The same, with the torch scoring and ranking (the slow twins), on at most ``max_rows``."""
    from unittest import mock

    from smlrec.evaluation import metrics
    from smlrec.models import mf as mf_module

    rows, seconds = 0, 0.0
    with mock.patch.object(mf_module, "_kernel_applies", lambda *a: False), \
            mock.patch.object(metrics.mf_kernels, "AVAILABLE", False):
        for period in periods:
            store = candidates.get(period)[:max_rows]
            began = time.perf_counter()
            metrics.rank_candidates(lambda r, c, p=period: strategy.score(p, r, c), store, batch_size, device)
            seconds += time.perf_counter() - began
            rows += len(store)
    return {"interactions": rows, "seconds": seconds, "interactions_per_s": rows / seconds}


def measure_full_ranking(strategy, period, device: str, rows: int = 4096) -> dict:
    """Full-ranking evaluation (protocol ``full``: every item seen so far, blocks of rows) of the
    first ``rows`` rows of ``period``: interactions per second and the catalogue size."""
    from dataclasses import replace

    from smlrec.evaluation.protocols import full_ranks

    n = min(rows, len(period))
    head = replace(period, users=period.users[:n], items=period.items[:n], times=period.times[:n],
                   items_seen=period.items_seen[:n])
    _sync(device)
    began = time.perf_counter()
    full_ranks(lambda r, c: strategy.score(head, r, c), head, device=device)
    _sync(device)
    seconds = time.perf_counter() - began
    return {"interactions": n, "items": int(head.items_seen[-1]), "seconds": seconds,
            "interactions_per_s": n / seconds}


def proc_status_bytes(field: str) -> int | None:
    """A memory line of /proc/self/status (``VmRSS``, ``VmHWM``) in bytes; None without /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def resident_bytes() -> int:
    """Resident memory of this process now (VmRSS; 0 where /proc is missing)."""
    return proc_status_bytes("VmRSS") or 0


def high_water_bytes() -> int:
    """Peak resident memory of this process so far (VmHWM; ru_maxrss where /proc is missing)."""
    peak = proc_status_bytes("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def count_update_flops(strategy, period, top: int = 12) -> tuple[float, list[dict]]:
    """Matrix-product FLOPs of one more update of ``strategy`` on ``period`` (FlopCounterMode),
    and torch.profiler's ``top`` operators of another update (at most 2 rounds) by their own CPU
    time: what holds the update back from its FLOP bound. Two updates, because the counter's
    Python dispatch would otherwise take a large share of the profile."""
    from dataclasses import replace

    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        strategy.update(period)
    # The profiler keeps every operator event: a whole 10-round SML update at Yelp scale ran the
    # benchmark out of memory (24 GB), so it profiles 2 rounds; every round does the same work.
    settings = strategy.settings
    if getattr(settings, "rounds", 0) > 2:
        strategy.settings = replace(settings, rounds=2)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            strategy.update(period)
    finally:
        strategy.settings = settings
    events = [e for e in profiler.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    ops = [{"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6, "share": e.self_cpu_time_total / total,
            "calls": e.count} for e in events[:top]]
    return float(counter.get_total_flops()), ops


def replay_phase(config: dict) -> dict:
    """Everything measured on one log; run in a child process (see ``main``)."""
    from smlrec.config import replay_settings
    from smlrec.data.candidates import CandidateStore
    from smlrec.data.loading import load_timeline
    from smlrec.experiment.replay import iter_replay
    from smlrec.strategies import STRATEGIES
    from smlrec.strategies.factory import configure_threads, make_strategy
    from smlrec.strategies.pretrain import pretrain_mf

    epochs = config.get("epochs")
    overrides = {name: {"epochs": epochs} for name in MF_ANALYTIC if epochs is not None}
    settings = replay_settings({
        "data": config["data"], "plan": config["plan"], "pretrain": {"epochs": config["pretrain_epochs"]},
        "strategy": overrides,
        "device": config["device"], "cache_dir": config["cache_dir"], "seed": config["seed"],
        **({"threads": config["threads"]} if config.get("threads") else {})})
    configure_threads(settings)
    out: dict = {"notes": []}
    say = (lambda text: print(f"  child: {text}", flush=True)) if config.get("verbose") else (lambda text: None)
    began = time.perf_counter()
    timeline = load_timeline(settings)
    out["load_seconds"] = time.perf_counter() - began
    log = timeline.log
    plan = timeline.plan
    out["log"] = {"interactions": len(log), "users": log.n_users, "items": log.n_items,
                  "periods": len(timeline.periods),
                  "plan": [plan.pretrain, plan.offline, plan.validation, plan.test]}
    names = []
    for name in config["strategies"]:
        if name in STRATEGIES or name in VARIANTS:
            names.append(name)
        else:
            out["notes"].append(f"strategy {name!r} is not registered yet: skipped")

    say(f"log loaded in {out['load_seconds']:.1f} s; pretraining MF on {len(timeline.pretrain_data):,} rows")
    pretrain = timeline.pretrain_data
    began = time.perf_counter()
    initial, losses = pretrain_mf(pretrain, log.n_users, log.n_items, settings.mf,
                                  settings.pretrain.epochs, settings.seed, settings.device)
    seconds = time.perf_counter() - began
    out["pretrain"] = {"rows": len(pretrain), "epochs": settings.pretrain.epochs, "seconds": seconds,
                       "triples_per_s": len(pretrain) * settings.pretrain.epochs / seconds,
                       "losses": losses}

    say(f"pretrained in {seconds:.1f} s; drawing test candidates")
    candidates = CandidateStore(timeline, settings.seed, settings.n_negatives, settings.cache_dir)
    scored = [p for p in timeline.periods if p.role in ("validation", "test")]
    began = time.perf_counter()
    for period in scored:
        candidates.get(period)
    out["candidates"] = {"rows": sum(len(p) for p in scored), "seconds": time.perf_counter() - began}
    say(f"candidates drawn in {out['candidates']['seconds']:.1f} s; replaying")

    # Every strategy is saved to disk when its replay ends and dropped, so the peak memory is the
    # replay's, not the sum of every strategy's tables. After the replay's peak is read they are
    # reloaded one at a time: the first for the throughput passes, the others for their FLOP count
    # and profile (torch.profiler's event buffers stay resident afterwards: read in between,
    # Adressa's figure was 5.85 GB).
    kept: dict = {}
    live: dict = {}
    saved: dict = {}
    epochs_setting: dict = {}
    test_periods = [p for p in timeline.periods if p.role == "test"]
    out["counted_flops"] = {}
    out["profiles"] = {}
    all_updates: dict = {}    # strategy -> [(period, seconds)] of every update, offline ones too
    states = Path(config["cache_dir"]).parent / "strategy-states"
    states.mkdir(parents=True, exist_ok=True)

    from smlrec.data.loading import return_freed_memory

    out["memory_after"] = {}   # strategy -> (VmHWM, VmRSS) when its replay ended: who raises the peak

    def finish(name):
        out["memory_after"][name] = (high_water_bytes(), resident_bytes())
        say(f"{name}: replay done; peak {out['memory_after'][name][0] / 1e9:.2f} GB, "
            f"resident {out['memory_after'][name][1] / 1e9:.2f} GB")
        strategy = live.pop(name)
        epochs_setting[name] = getattr(strategy.settings, "epochs", None)
        if name == names[0] or name not in MF_ANALYTIC:
            saved[name] = states / f"{name}.pt"
            torch.save(strategy.state_dict(), saved[name])
        del strategy
        gc.collect()
        return_freed_memory()

    def build(name):
        from smlrec.strategies import create_strategy
        from smlrec.strategies.base import StrategyContext

        if name in VARIANTS:
            base, overrides, context_overrides = VARIANTS[name]
            context = StrategyContext(**{"n_users": log.n_users, "n_items": log.n_items, "mf": settings.mf,
                                         "seed": settings.seed, "device": settings.device, "name": name,
                                         "pretrain_periods": plan.pretrain, "base": settings.base_settings,
                                         "precision": settings.precision, **context_overrides})
            return create_strategy(base, context, {**settings.strategy.get(base, {}), **overrides})
        return make_strategy(name, timeline, settings)

    def factory(name):
        # The replay calls this when the previous strategy's last period is scored: finish that
        # one first, so its tables are gone before the next strategy allocates its own.
        for previous in list(live):
            finish(previous)
        strategy = build(name)
        update = strategy.update

        def timed_update(period, _update=update, _name=name):
            seconds = _update(period)
            all_updates.setdefault(_name, []).append((period.index, seconds, getattr(strategy, "last_epochs", None)))
            return seconds

        strategy.update = timed_update
        live[name] = strategy
        return strategy

    records = []
    began = time.perf_counter()
    for record in iter_replay(timeline, settings, names, initial, candidates, progress=False,
                              factory=factory):
        say(f"{record.strategy} period {record.period}: update {record.update_seconds:.2f} s")
        records.append({"strategy": record.strategy, "period": record.period, "role": record.role,
                        "interactions": record.interactions, "update_seconds": record.update_seconds,
                        "recall@20": record.metrics["recall@20"], "ndcg@20": record.metrics["ndcg@20"]})
    for name in list(live):
        finish(name)
    out["replay_seconds"] = time.perf_counter() - began
    out["peak_rss_replay_bytes"] = high_water_bytes()
    if names:
        kept[names[0]] = build(names[0])
        kept[names[0]].load_state_dict(torch.load(saved.pop(names[0]), weights_only=False))
    for name, path in saved.items():
        say(f"{name}: two more updates on period {test_periods[-1].index}, counted and profiled")
        strategy = build(name)
        strategy.load_state_dict(torch.load(path, weights_only=False))
        path.unlink()
        out["counted_flops"][name], out["profiles"][name] = count_update_flops(strategy, test_periods[-1])
        del strategy
        gc.collect()
    out["records"] = records
    out["all_updates"] = all_updates

    # Training rows of each timed update, for the MF-retrain cost model.
    first_test = plan.pretrain + plan.offline + plan.validation
    rows_so_far = np.cumsum([len(p) for p in timeline.periods])
    out["update_rows"] = {}
    for name in names:
        epochs = epochs_setting[name]
        per_period = {}
        for rec in records:
            if rec["strategy"] != name or rec["period"] < first_test:
                continue
            t = rec["period"] - 1  # the update before period t+1 trained on period t
            window = int(rows_so_far[t]) if name.startswith("full-retrain") else len(timeline.periods[t])
            per_period[rec["period"]] = window
        epochs_run = {p + 1: e for p, _, e in all_updates.get(name, []) if e is not None}
        out["update_rows"][name] = {"epochs": epochs, "rows": per_period,
                                    "epochs_run": {t: epochs_run.get(t) for t in per_period}}

    # Evaluation throughput with the first strategy's served model; extra FLOP counts.
    say("measuring evaluation and MF training throughput")
    if names:
        out["evaluation"] = measure_evaluation(kept[names[0]], test_periods, candidates,
                                               settings.eval_batch_size, settings.device)
        out["evaluation"]["strategy"] = names[0]
        out["full_ranking"] = {**measure_full_ranking(kept[names[0]], test_periods[-1], settings.device),
                               "strategy": names[0]}
    if names and names[0] not in MF_ANALYTIC:
        out["counted_flops"][names[0]], out["profiles"][names[0]] = count_update_flops(kept[names[0]],
                                                                                      test_periods[-1])

    # MF training throughput: one pass of MF alone over up to 1M rows of the log.
    n = min(len(log), config["mf_rows"])
    out["mf_training"] = measure_mf_training(log.user_idx[:n], log.item_idx[:n], log.n_users,
                                             log.n_items, settings.mf, settings.device)
    # The slow twins, back to back in the same conditions: the torch MF step, torch scoring.
    from dataclasses import replace as _replace

    torch_rows = min(n, config.get("torch_mf_rows", n))   # the same rows: their cache behaviour differs
    out["mf_training_torch"] = measure_mf_training(log.user_idx[:torch_rows], log.item_idx[:torch_rows],
                                                   log.n_users, log.n_items,
                                                   _replace(settings.mf, kernel="torch"), settings.device)
    if names:
        out["evaluation_torch"] = measure_evaluation_torch(kept[names[0]], test_periods[:1], candidates,
                                                           settings.eval_batch_size, settings.device,
                                                           config.get("torch_eval_rows", 20_000))
    out["dim"] = settings.mf.dim
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if settings.device == "cuda":
        out["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    return out


# ----------------------------------------------------------------------------------------------
# Analysis and the report

# A strategy whose FLOP count includes work that is not the method's is set against another's
# bound: sml-bf16 pads its batches with rows of zeros (models/transfer.py), so fp32 SML's count.
FLOP_BOUND_OF = {"sml-bf16": "sml"}


def flop_bound_of(name: str, phases: dict) -> float | None:
    """Seconds of ``name``'s update at the machine's fp32 peak (see ``FLOP_BOUND_OF``)."""
    row = phases.get(f"update:{FLOP_BOUND_OF.get(name, name)}")
    return row["flop_bound_s"] if row else None


def analyse(scale: str, phase: dict, machine: dict) -> dict:
    """Per-period update seconds, ratios, roofline fractions and targets of one scale."""
    dim = phase["dim"]
    records = phase["records"]
    tests = [r for r in records if r["role"] == "test"]
    strategies = sorted({r["strategy"] for r in records}, key=[r["strategy"] for r in records].index)
    # The update timed for record period t is the one on period t-1. A strategy's very first update
    # (SML: round 0's step 1 only) is not its steady-state cost: it is excluded and labelled.
    first_update = {}
    for name, updates_run in phase.get("all_updates", {}).items():
        if updates_run:
            period, seconds = updates_run[0][0], updates_run[0][1]
            first_update[name] = {"period": int(period), "seconds": float(seconds)}
    updates = {s: {r["period"]: r["update_seconds"] for r in tests if r["strategy"] == s
                   and r["update_seconds"] == r["update_seconds"]} for s in strategies}
    steady = {s: {t: v for t, v in updates[s].items()
                  if s not in first_update or t != first_update[s]["period"] + 1} for s in strategies}
    mean_update = {s: (float(np.mean(list(v.values()))) if v else None) for s, v in steady.items()}
    ratios = {}
    for a, b in (("full-retrain", "sml"), ("full-retrain-converged", "sml"), ("fine-tune", "sml-s")):
        if mean_update.get(a) and mean_update.get(b):
            ratios[f"{a}/{b}"] = mean_update[a] / mean_update[b]
        elif a in mean_update or b in mean_update:
            ratios[f"{a}/{b}"] = None
    triple_flops, triple_bytes = mf_triple_cost(dim)
    phases = {}
    mf = phase["mf_training"]
    phases["mf_training"] = roofline(mf["triples"] * triple_flops, mf["triples"] * triple_bytes,
                                     mf["seconds"], machine)
    pre = phase["pretrain"]
    phases["pretrain"] = roofline(pre["rows"] * pre["epochs"] * triple_flops,
                                  pre["rows"] * pre["epochs"] * triple_bytes, pre["seconds"], machine)
    if "evaluation" in phase:
        ev = phase["evaluation"]
        ef, eb = eval_cost(dim)
        phases["evaluation"] = roofline(ev["interactions"] * ef, ev["interactions"] * eb,
                                        ev["seconds"], machine)
    for name in strategies:
        seconds = mean_update[name]
        if seconds is None:
            continue
        if name in MF_ANALYTIC:
            rows = phase["update_rows"][name]
            run = rows.get("epochs_run") or {}
            triples = float(np.mean([n * (run.get(t) or rows["epochs"] or 1) for t, n in rows["rows"].items()]))
            phases[f"update:{name}"] = roofline(triples * triple_flops, triples * triple_bytes,
                                                seconds, machine)
        elif name in phase.get("counted_flops", {}) and steady[name]:
            # The count repeats one update after the last test period's: it is set against the
            # latest timed update, not the mean, whose updates may differ in kind (SML-S's first
            # test update finishes an unfrozen period; later ones are frozen, 20x cheaper).
            latest = steady[name][max(steady[name])]
            phases[f"update:{name}"] = roofline(phase["counted_flops"][name], None, latest, machine)
    targets = {
        "mf_training_triples_per_s": _target(mf["triples_per_s"], TARGETS["mf_triples_per_s"], ">="),
        "evaluation_interactions_per_s": _target(phase.get("evaluation", {}).get("interactions_per_s"),
                                                 TARGETS["eval_interactions_per_s"], ">="),
        "peak_rss_gb": _target(phase.get("peak_rss_replay_bytes", phase["peak_rss_bytes"]) / 1e9,
                               TARGETS["peak_rss_gb"], "<="),
    }
    for name, key in (("sml", "sml_update_vs_flop_bound"),
                      ("sml-bf16", "sml_bf16_update_vs_fp32_flop_bound")):
        sml = phases.get(f"update:{name}")
        bound = flop_bound_of(name, phases)
        if sml or name == "sml":
            targets[key] = _target(sml["seconds"] / bound if sml and bound else None,
                                   TARGETS["sml_vs_flop_bound"], "<=")
    last_test = max((r["period"] for r in tests), default=None)
    return {"scale": scale, "strategies": strategies, "update_seconds": updates, "last_test": last_test,
            "steady_update_seconds": steady, "first_update": first_update,
            "mean_update_seconds": mean_update, "ratios": ratios, "phases": phases, "targets": targets}


def _target(value, target, sense: str) -> dict:
    if value is None:
        return {"value": None, "target": target, "sense": sense, "met": None}
    met = value >= target if sense == ">=" else value <= target
    return {"value": float(value), "target": target, "sense": sense, "met": bool(met)}


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    if isinstance(value, float) and abs(value) >= 1e5:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


MATRIX_PRODUCTS = ("aten::addmm", "aten::mm", "aten::bmm")


def flop_bound_gaps(analysis: dict, phase: dict) -> list[str]:
    """For each profiled autograd strategy: what share of its profile is matrix products (all the
    FLOP bound counts) and how many seconds the rest stands for at the measured update time."""
    lines = []
    for name, ops in phase.get("profiles", {}).items():
        row = analysis["phases"].get(f"update:{name}")
        bound = flop_bound_of(name, analysis["phases"])
        if not row or not bound:
            continue
        products = sum(o["share"] for o in ops if o["op"] in MATRIX_PRODUCTS)
        rest = (1 - products) * row["seconds"]
        of = f" ({FLOP_BOUND_OF[name]}'s)" if name in FLOP_BOUND_OF else ""
        lines.append(f"- {name}: {row['seconds'] / bound:.2f}x its FLOP bound{of}. Matrix products "
                     f"are {products:.0%} of its profile; the other {1 - products:.0%} (activations and their "
                     f"gradients, row gathers and scatters, copies, the optimisers: memory-bound work the "
                     f"bound does not count) stand for ~{rest:.3g} s of its {row['seconds']:.3g} s, "
                     f"{rest / bound:.2f}x the bound by themselves.")
    return lines + [""] if lines else []


def render_markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["# smlrec benchmarks", "",
             f"Written by `{result['command']}` on {result['date']} (UTC)"
             + (f"; analysed again from the same measurements by `python benchmarks/run.py --rerender` "
                f"on {result['rerendered']}." if result.get("rerendered") else "."), "",
             "## Machine limits (measured by the same script)", "",
             f"- device: {m['device']}" + (f" ({m['card']})" if m.get("card") else "")
             + f"; torch {m['torch']}, {m['threads']} intra-op threads, {m['cpu_count']} CPUs; {m['platform']}",
             f"- fp32 matrix multiply ({m['matmul_size']}x{m['matmul_size']}): **{m['matmul_gflops']:.1f} GFLOP/s**"
             + (f" (bf16: {m['matmul_bf16_gflops']:.1f} GFLOP/s, context for sml-bf16; every bound below uses fp32's)"
                if "matmul_bf16_gflops" in m else ""),
             f"- memory bandwidth ({m['copy_mb']} MB copy, read+write): **{m['bandwidth_gbs']:.1f} GB/s**", ""]
    if result.get("note"):
        lines += [result["note"], ""]
    for scale in result["scales"]:
        a, p = scale["analysis"], scale["phase"]
        log = p["log"]
        lines += [f"## {scale['name']}: {log['interactions']:,} interactions, {log['users']:,} users, "
                  f"{log['items']:,} items, {log['periods']} periods (plan {','.join(map(str, log['plan']))})", "",
                  f"Synthetic log ({scale['regime']} regime) generated in {scale['synth_seconds']:.1f} s; "
                  f"loaded and cut in {p['load_seconds']:.1f} s; MF pretraining {p['pretrain']['epochs']} epoch(s) "
                  f"in {p['pretrain']['seconds']:.1f} s; test candidates ({p['candidates']['rows']:,} rows) "
                  f"drawn in {p['candidates']['seconds']:.1f} s; replay {p['replay_seconds']:.1f} s.", ""]
        for note in p["notes"]:
            lines.append(f"- note: {note}")
        if p["notes"]:
            lines.append("")
        periods = sorted({k for v in a["update_seconds"].values() for k in v})
        lines += ["### Update seconds per test period", "",
                  "Steady state: the mean leaves out a strategy's very first update (SML's is round "
                  "0's step 1 only), shown apart in the last column; with 2 or more offline periods "
                  "that update falls on an offline period and every test update is steady.", "",
                  "| strategy | " + " | ".join(f"t={t}" for t in periods)
                  + " | steady mean | R@20 | N@20 | first update (excluded) |",
                  "|---|" + "---|" * (len(periods) + 4)]
        for s in a["strategies"]:
            recs = [r for r in p["records"] if r["strategy"] == s and r["role"] == "test"]
            weights = np.array([r["interactions"] for r in recs], dtype=float)
            recall = float(np.sum([r["recall@20"] for r in recs] * weights) / weights.sum()) if recs else None
            ndcg = float(np.sum([r["ndcg@20"] for r in recs] * weights) / weights.sum()) if recs else None
            first = a.get("first_update", {}).get(s)
            lines.append(f"| {s} | " + " | ".join(_fmt(a["update_seconds"][s].get(t)) for t in periods)
                         + f" | {_fmt(a['mean_update_seconds'][s])} | {_fmt(recall, 4)} | {_fmt(ndcg, 4)} | "
                         + (f"{first['seconds']:.2f} s (period {first['period']})" if first else "n/a") + " |")
        epochs_run = p["update_rows"].get("full-retrain-converged", {}).get("epochs_run")
        if epochs_run:
            lines += ["", "full-retrain-converged: epochs run per update (early stopping on its own "
                      "window's held-out slice): " + ", ".join(f"t={t}: {e}" for t, e in epochs_run.items())]
        lines += ["", "Table 2, ratios of steady-state mean update seconds (paper, on a GPU: ~18x "
                  "full-retrain/sml with Full-retrain converged, >4x fine-tune/sml-s): "
                  + ", ".join(f"{k} = {_fmt(v, 2)}" + ("x" if v else "") for k, v in a["ratios"].items()), ""]
        mf = p["mf_training"]
        lines += ["### Throughput", "",
                  f"- MF training (run_trainer_epochs + MF trainer, kernel {mf.get('kernel', '?')}, MF alone, {mf['triples']:,} triples, d={mf['dim']}, batch "
                  f"{mf['batch_size']}, {'fused lazy Adam' if mf['sparse'] else 'dense Adam'}): **{mf['triples_per_s']:,.0f} "
                  f"triples/s** = {mf['triples_per_s_per_core']:,.0f} per core ({mf['threads']} threads); "
                  f"negative sampling ~{100 * mf['negative_sampling_share']:.0f}% of it",
                  f"- MF pretraining: {p['pretrain']['triples_per_s']:,.0f} triples/s"]
        if "mf_training_torch" in p:
            tw = p["mf_training_torch"]
            lines.append(f"- the same MF training with the torch step (slow twin, `mf.kernel = \"torch\"`, "
                         f"{tw['triples']:,} triples, run right after): {tw['triples_per_s']:,.0f} triples/s "
                         f"({mf['triples_per_s'] / tw['triples_per_s']:.1f}x slower than {mf.get('kernel', '?')}); "
                         f"CPU seconds per wall second of the {mf.get('kernel', '?')} pass: "
                         f"{mf.get('cpu_seconds', float('nan')) / mf['seconds']:.2f}")
        if "evaluation" in p:
            ev = p["evaluation"]
            lines.append(f"- evaluation ({ev['strategy']}, {ev['interactions']:,} test interactions x "
                         f"{N_CANDIDATES} candidates): **{ev['interactions_per_s']:,.0f} interactions/s**")
            if "evaluation_torch" in p:
                et = p["evaluation_torch"]
                lines.append(f"- the same evaluation with torch scoring and ranking (slow twins, "
                             f"{et['interactions']:,} interactions, run right after): "
                             f"{et['interactions_per_s']:,.0f} interactions/s")
        if "full_ranking" in p:
            fr = p["full_ranking"]
            lines.append(f"- full-ranking evaluation ({fr['strategy']}, {fr['interactions']:,} test interactions "
                         f"x {fr['items']:,} items): **{fr['interactions_per_s']:,.0f} interactions/s**")
        if "peak_rss_replay_bytes" in p:
            lines.append(f"- peak resident memory of the replay (loading, pretraining, candidates, every "
                         f"strategy's updates and scoring): **{p['peak_rss_replay_bytes'] / 1e9:.2f} GB**; of the "
                         f"whole process, the throughput passes and profiles above included: {p['peak_rss_bytes'] / 1e9:.2f} GB")
        else:
            lines.append(f"- peak resident memory of the replay process: **{p['peak_rss_bytes'] / 1e9:.2f} GB**")
        if p.get("memory_after"):
            lines.append("  - when each strategy's replay ended (before it was dropped), peak so far / resident: "
                         + "; ".join(f"{name} {peak / 1e9:.2f} / {now / 1e9:.2f} GB"
                                     for name, (peak, now) in p["memory_after"].items()))
        if "peak_cuda_bytes" in p:
            lines.append(f"- peak CUDA memory {p['peak_cuda_bytes'] / 1e9:.2f} GB")
        for name, ops in p.get("profiles", {}).items():
            lines += ["", f"Where one more {name} update on the last test period (SML: 2 of its rounds) "
                      "spends its time: torch.profiler's operators by their own CPU time (the profiler "
                      "slows the run; shares, not seconds, are the point)", "",
                      "| operator | share | calls |", "|---|---|---|"]
            lines += [f"| {o['op']} | {o['share']:.1%} | {o['calls']:,} |" for o in ops]
        lines += ["", "### Work against the machine's limits", "",
                  "| phase | GFLOP | GB moved | seconds | compute-bound s | memory-bound s | bound by | fraction of limit |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, r in a["phases"].items():
            lines.append(f"| {name} | {r['flops'] / 1e9:,.2f} | "
                         + (f"{r['bytes'] / 1e9:,.2f}" if r["bytes"] is not None else "n/a")
                         + f" | {r['seconds']:.3f} | {r['flop_bound_s']:.4f} | "
                         + (f"{r['byte_bound_s']:.4f}" if r["byte_bound_s"] is not None else "n/a")
                         + f" | {r['bound_by']} | {_fmt(r['fraction_of_limit'], 3)} |")
        lines += ["", f"### Targets (issue 13; SML's figure is its update seconds at t={a.get('last_test')} "
                  "above, set against the FLOP count of one more update like it)", "",
                  "| target | measured | goal | met |", "|---|---|---|---|"]
        for name, t in a["targets"].items():
            met = "n/a" if t["met"] is None else ("met" if t["met"] else "**missed**")
            lines.append(f"| {name} | {_fmt(t['value'])} | {t['sense']} {_fmt(float(t['target']))} | {met} |")
        lines += [""] + flop_bound_gaps(a, p)
    if result.get("import_order"):
        io = result["import_order"]
        lines += ["## Import order on a busy machine", "",
                  f"A small SML replay ({io['log']}) run in a fresh interpreter while {io['competitors']} "
                  f"busy-loop processes keep the {io['cores']} cores busy, no OpenMP wait setting in the "
                  "environment:", ""]
        for case in io["cases"]:
            lines.append(f"- `{case['imports']}`: " + (f"{case['seconds']:.1f} s, {case['threads']} torch "
                         f"thread(s)" if case.get("seconds") is not None else f"did not finish in {io['timeout']} s")
                         + (f"; warned: {case['warning']}" if case.get("warning") else ""))
        lines.append("")
        if io.get("waits"):
            settings = list(dict.fromkeys(w["setting"] for w in io["waits"]))
            lines += ["### Waiting threads", "",
                      "The same replay, smlrec imported first, by how torch's OpenMP threads wait and "
                      "how many busy-loop processes compete (seconds; smlrec/__init__.py explains the "
                      "choice):", "", "| busy processes | " + " | ".join(settings) + " |",
                      "|---|" + "---|" * len(settings)]
            for busy in sorted({w["busy"] for w in io["waits"]}):
                row = {w["setting"]: w["seconds"] for w in io["waits"] if w["busy"] == busy}
                lines.append(f"| {busy} | " + " | ".join("timed out" if row.get(name) is None
                                                           else f"{row[name]:.1f}" for name in settings) + " |")
            lines.append("")
    if result.get("previous"):
        prev = result["previous"]
        lines += ["## Against the previous committed results", "",
                  f"`benchmarks/results.json` of {prev['date']} (`{prev['command']}`), per scale and "
                  "strategy: mean update seconds then -> now (now / then; above 1 is a slowdown). The "
                  "previous file's mean may include SML's first update; its plan may differ.", ""]
        for line in prev["lines"]:
            lines.append(f"- {line}")
        lines.append("")
    lines += ["## Cost models", "", (__doc__ or "").split("Cost models")[1].split("Writes")[0].strip(), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------

SERVING_SECTION = "## Serving (benchmarks/load.py)"   # written by benchmarks/load.py, kept here


def with_serving_section(path: Path, text: str) -> str:
    """``text`` followed by the serving section the report at ``path`` already has (load.py
    writes it; a regeneration here must not drop it)."""
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    if SERVING_SECTION not in current:
        return text
    return text.rstrip("\n") + "\n\n" + SERVING_SECTION + current.split(SERVING_SECTION, 1)[1]


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def run_child(config: dict) -> dict:
    """``replay_phase(config)`` in a fresh interpreter, so its peak memory is its own."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg, res = Path(tmp) / "config.json", Path(tmp) / "result.json"
        cfg.write_text(json.dumps(config))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                        os.environ.get("PYTHONPATH")])))
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(cfg), str(res)],
                       check=True, env=env)
        return json.loads(res.read_text())


def plan_for(periods: int, base_plan: str, test_periods: int | None, offline: int = 2) -> dict:
    """The plan: the scale's own, or (N-K-O pretrain, O offline, 0 validation, K test).

    With O >= 2 offline periods, SML's first update (round 0 only) happens on the first offline
    period, so every update timed for a test period is a steady-state one."""
    if test_periods:
        if not 1 <= test_periods <= periods - offline - 1:
            raise SystemExit(f"--test-periods must be 1..{periods - offline - 1}")
        values = [periods - test_periods - offline, offline, 0, test_periods]
    else:
        values = [int(v) for v in base_plan.split(",")]
    return dict(zip(("pretrain", "offline", "validation", "test"), values))


def benchmark_scale(name: str, spec: dict, args, workdir: Path) -> dict:
    settings = synth_settings(spec.get("scale"), seed=args.seed, **spec.get("overrides", {}))
    print(f"[{name}] generating {settings.interactions:,} interactions ({settings.regime}) ...", flush=True)
    began = time.perf_counter()
    frame = generate(settings)
    synth_seconds = time.perf_counter() - began
    path = write_log(frame, workdir / f"{name}.parquet")
    del frame
    data = {"path": str(path), "format": "parquet"}
    if settings.regime == "news":
        data["day_cuts"] = [10, 17]
    else:
        data["periods"] = settings.periods
    config = {"data": data, "plan": plan_for(settings.periods, spec["plan"], args.test_periods,
                                             args.offline_periods),
              "pretrain_epochs": args.pretrain_epochs, "device": args.device,
              "cache_dir": str(workdir / "cache"), "seed": args.seed, "strategies": args.strategies,
              "threads": args.threads, "mf_rows": args.mf_rows, "epochs": args.epochs, "verbose": True}
    print(f"[{name}] replaying {', '.join(args.strategies)} with plan "
          f"{','.join(map(str, config['plan'].values()))} in a child process ...", flush=True)
    phase = run_child(config)
    return {"name": name, "regime": settings.regime, "synth_seconds": synth_seconds, "config": config,
            "phase": phase}


def compare_previous(previous: dict, result: dict) -> dict:
    """One line per (scale, strategy): mean update seconds in ``previous`` -> now."""
    lines = []
    before = {sc["name"]: sc["analysis"] for sc in previous.get("scales", [])}
    for scale in result["scales"]:
        old = before.get(scale["name"])
        now = scale["analysis"]["mean_update_seconds"]
        for name, seconds in now.items():
            then = (old or {}).get("mean_update_seconds", {}).get(name)
            if seconds is None:
                continue
            if then:
                lines.append(f"{scale['name']} {name}: {then:.2f} s -> {seconds:.2f} s ({seconds / then:.2f}x)")
            else:
                lines.append(f"{scale['name']} {name}: (not in the previous results) -> {seconds:.2f} s")
        for key, label in (("mf_training", "MF training triples/s"), ("evaluation", "evaluation interactions/s")):
            unit = "triples_per_s" if key == "mf_training" else "interactions_per_s"
            then = (previous_phase(previous, scale["name"]) or {}).get(key, {}).get(unit)
            value = scale["phase"].get(key, {}).get(unit)
            if then and value:
                lines.append(f"{scale['name']} {label}: {then:,.0f} -> {value:,.0f} ({value / then:.2f}x)")
    return {"date": previous.get("date"), "command": previous.get("command"), "lines": lines}


def previous_phase(previous: dict, name: str) -> dict | None:
    for scale in previous.get("scales", []):
        if scale["name"] == name:
            return scale["phase"]
    return None


IMPORT_ORDER_SCRIPT = """
{imports}
import json, sys, time, warnings
from smlrec.config import replay_settings
from smlrec.experiment.replay import replay
settings = replay_settings(json.loads(sys.argv[1]))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    began = time.perf_counter()
    replay(settings, progress=False)
    seconds = time.perf_counter() - began
print(json.dumps({{"seconds": seconds, "threads": torch.get_num_threads(),
                  "warning": next((str(w.message) for w in caught if "imported before smlrec" in str(w.message)), None)}}))
"""


WAIT_CASES = {"smlrec's default (GOMP_SPINCOUNT=1000)": {}, "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}}


@contextmanager
def busy_loops(count: int):
    """``count`` busy-loop processes competing for the cores while the block runs."""
    competitors = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for process in competitors:
            process.kill()
            process.wait()


def timed_small_replay(imports: str, config: dict, env: dict, timeout: int) -> dict:
    """IMPORT_ORDER_SCRIPT in a fresh interpreter: seconds (None past ``timeout``), threads, warning."""
    case: dict = {"imports": imports}
    try:
        done = subprocess.run([sys.executable, "-c", IMPORT_ORDER_SCRIPT.format(imports=imports),
                               json.dumps(config)], env=env, capture_output=True, text=True,
                              timeout=timeout, check=True)
        case.update(json.loads(done.stdout.strip().splitlines()[-1]))
    except subprocess.TimeoutExpired:
        case["seconds"] = None
    return case


def measure_import_order(workdir: Path, args) -> dict:
    """A small SML replay in fresh interpreters whose environment sets no OpenMP wait setting:
    with ``import torch`` before ``import smlrec`` and after it while one busy-loop process per core
    competes; then, smlrec imported first, smlrec's bounded spin against OMP_WAIT_POLICY=PASSIVE
    with 0, 1 and one-per-core busy processes (the trade-off smlrec/__init__.py chooses)."""
    from smlrec.strategies.factory import available_cores

    synth = synth_settings(regime="stable", interactions=12_000, users=600, items=900, periods=6, seed=args.seed)
    path = write_log(generate(synth), workdir / "import-order.parquet")
    config = {"data": {"path": str(path), "format": "parquet", "periods": 6},
              "plan": {"pretrain": 2, "offline": 2, "validation": 0, "test": 2},
              "strategies": ["sml"], "pretrain": {"epochs": 1}, "seed": args.seed,
              "cache_dir": str(workdir / "cache-import-order")}
    env = {k: v for k, v in os.environ.items() if k not in WAIT_SETTINGS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    cores = available_cores()
    timeout = 120 if args.quick else 600
    smlrec_first = "import smlrec; import torch"
    # warm the candidate cache and numba's compiled-kernel cache, so every case does the same work
    timed_small_replay(smlrec_first, config, env, timeout)
    cases = []
    with busy_loops(cores):
        for imports in ("import torch; import smlrec", smlrec_first):
            cases.append(timed_small_replay(imports, config, env, timeout))
            print(f"  {imports}: {cases[-1].get('seconds')} s", flush=True)
    waits = []
    for busy in sorted({0, 1, cores}):
        with busy_loops(busy):
            for name, extra in WAIT_CASES.items():
                case = timed_small_replay(smlrec_first, config, {**env, **extra}, timeout)
                waits.append({"busy": busy, "setting": name, "seconds": case.get("seconds")})
                print(f"  {busy} busy, {name}: {case.get('seconds')} s", flush=True)
    return {"log": f"{synth.interactions:,} interactions, plan 2,2,0,2", "cores": cores,
            "competitors": cores, "timeout": timeout, "cases": cases, "waits": waits}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small logs, under 2 minutes (CI)")
    parser.add_argument("--scales", help="comma-separated: yelp,adressa (default both; "
                                         "--quick: small,small-news)")
    parser.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                        help="strategies to replay; names not registered are skipped with a note")
    parser.add_argument("--test-periods", type=int,
                        help="reduced plan: pretrain on all but the last K + offline periods, then the "
                             "offline periods and K test periods (default 3; 0: the paper's plan of "
                             "the scale, hours of SML on 2 cores; --quick: the small logs' own plans)")
    parser.add_argument("--offline-periods", type=int, default=2,
                        help="offline periods of the reduced plan (default 2: SML's first, round-0-only "
                             "update then falls on an offline period, and every timed update is steady)")
    parser.add_argument("--import-order", choices=["on", "off"], default="on",
                        help="also time a small SML replay with torch imported before smlrec, on a "
                             "machine kept busy, against smlrec imported first (default on)")
    parser.add_argument("--pretrain-epochs", type=int, default=None,
                        help="MF pretraining epochs (default 1: speed, not accuracy, is measured)")
    parser.add_argument("--epochs", type=int,
                        help="epochs of full-retrain and fine-tune per period (default: their "
                             "presets, 5; --quick: 1)")
    parser.add_argument("--mf-rows", type=int, default=1_000_000,
                        help="rows of the MF training-throughput pass (default 1M)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--markdown", help="report file (default BENCHMARKS.md; --quick: "
                                           "runs/bench-quick/BENCHMARKS.md)")
    parser.add_argument("--json", help="results file (default benchmarks/results.json; --quick: "
                                       "runs/bench-quick/results.json)")
    parser.add_argument("--rerender", action="store_true",
                        help="re-analyse the results file (--json) and rewrite the report; measures nothing")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if args.pretrain_epochs is None:
        args.pretrain_epochs = 1
    if args.test_periods is None and not args.quick:
        args.test_periods = 3
    if args.quick:
        args.mf_rows = min(args.mf_rows, 5_000)
        if args.epochs is None:
            args.epochs = 1
    return args


def report_paths(args) -> tuple[Path, Path]:
    """The report and results files: --markdown / --json, else the committed ones (--quick:
    under runs/bench-quick/)."""
    quick_dir = ROOT / "runs" / "bench-quick"
    markdown = Path(args.markdown) if args.markdown else (quick_dir / "BENCHMARKS.md" if args.quick
                                                          else ROOT / "BENCHMARKS.md")
    results = Path(args.json) if args.json else (quick_dir / "results.json" if args.quick
                                                 else ROOT / "benchmarks" / "results.json")
    return markdown, results


def rerender(args) -> int:
    """Analyse a results file's raw measurements again and rewrite it and its report; measures
    nothing (for a change of analysis or wording after a long run)."""
    markdown, results = report_paths(args)
    result = json.loads(results.read_text())
    for scale in result["scales"]:
        scale["analysis"] = analyse(scale["name"], scale["phase"], result["machine"])
    result["rerendered"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    write_atomic(results, json.dumps(result, indent=1, default=float))
    write_atomic(markdown, with_serving_section(markdown, render_markdown(result)))
    print(f"wrote {markdown} and {results} from the measurements of {result['date']}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rerender:
        return rerender(args)
    if args.child:
        config = json.loads(Path(args.child[0]).read_text())
        result = replay_phase(config)
        Path(args.child[1]).write_text(json.dumps(result, default=float))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    table = QUICK_SCALES if args.quick else FULL_SCALES
    names = [s.strip() for s in (args.scales or ",".join(table)).split(",") if s.strip()]
    known = {**QUICK_SCALES, **FULL_SCALES}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown scale {unknown[0]!r} (known: {', '.join(known)})")
    markdown, results = report_paths(args)
    previous = json.loads(results.read_text()) if results.exists() else None
    began = time.perf_counter()
    print("measuring the machine ...", flush=True)
    machine = measure_machine(args.device, size=1024 if args.quick else 2048,
                              copy_mb=128 if args.quick else 512)
    print(f"  {machine['matmul_gflops']:.1f} GFLOP/s fp32 matmul, {machine['bandwidth_gbs']:.1f} GB/s copy",
          flush=True)
    command = "python benchmarks/run.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:]))
    result = {"command": command.strip(), "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
              "machine": machine, "scales": [], "targets": TARGETS}
    if args.test_periods:
        result["note"] = (f"Reduced plan (--test-periods {args.test_periods}): pretraining on all but the "
                          f"last {args.test_periods + args.offline_periods} periods, {args.offline_periods} "
                          f"offline periods, {args.test_periods} test periods. Update seconds are per period as in the full plan; the accuracy "
                          "columns are not the paper protocol's. MF pretraining epochs: "
                          f"{args.pretrain_epochs}.")
    with tempfile.TemporaryDirectory(prefix="smlrec-bench-") as tmp:
        for name in names:
            scale = benchmark_scale(name, known[name], args, Path(tmp))
            scale["analysis"] = analyse(name, scale["phase"], machine)
            result["scales"].append(scale)
            for key, value in scale["analysis"]["ratios"].items():
                print(f"  [{name}] {key}: {_fmt(value, 1)}")
        if args.import_order == "on":
            print("timing an SML replay by import order on a busy machine ...", flush=True)
            result["import_order"] = measure_import_order(Path(tmp), args)
    if previous:
        result["previous"] = compare_previous(previous, result)
        for line in result["previous"]["lines"]:
            print(f"  vs previous: {line}")
    result["total_seconds"] = time.perf_counter() - began
    write_atomic(results, json.dumps(result, indent=1, default=float))
    write_atomic(markdown, with_serving_section(markdown, render_markdown(result)))
    print(f"wrote {markdown} and {results} ({result['total_seconds']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
