"""The smlrec benchmark: speed of each phase against the machine's own limits.

Usage::

    python benchmarks/run.py                     # Yelp- and Adressa-scale logs, the paper's plans
    python benchmarks/run.py --quick             # small logs, under 2 minutes, no targets asserted
    python benchmarks/run.py --scales yelp --test-periods 2   # a reduced plan (see --help)
    python benchmarks/run.py --device cuda

What it measures, in this order:

1. the machine: fp32 matrix-multiply GFLOP/s (torch) and memory bandwidth GB/s (a large copy);
2. for each scale: generates the synthetic log (``smlrec synth``), then in a CHILD process (so its
   peak resident memory is the replay's own) loads it, pretrains MF, draws the test candidates and
   replays the strategies, recording every update's seconds; then MF training throughput
   ((user, positive, negative) triples/s, one ``train_epochs`` pass of MF alone) and evaluation
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
  FlopCounterMode (matrix products only; elementwise work is not counted, so it is a lower bound).

Writes BENCHMARKS.md and benchmarks/results.json (``--quick``: under runs/bench-quick/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from smlrec.data.synth import SCALE_PLANS, generate, synth_settings, write_log  # noqa: E402

DEFAULT_STRATEGIES = ("full-retrain", "fine-tune", "sml", "sml-s")
N_CANDIDATES = 1000
TARGETS = {"mf_triples_per_s": 1_000_000, "eval_interactions_per_s": 30_000, "peak_rss_gb": 4.0,
           "sml_vs_flop_bound": 3.0}
MF_ANALYTIC = ("full-retrain", "fine-tune")

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


def measure_machine(device: str = "cpu", size: int = 2048, copy_mb: int = 512,
                    repeats: int = 5) -> dict:
    """Peak fp32 matmul GFLOP/s and copy bandwidth GB/s (best of ``repeats``)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.mm(a, b)
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - began)
    gflops = 2.0 * size ** 3 / best / 1e9
    n = copy_mb * (1 << 20) // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    best_copy = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best_copy = min(best_copy, time.perf_counter() - began)
    bandwidth = 2.0 * n * 4 / best_copy / 1e9  # read + write
    info = {"device": device, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "matmul_gflops": gflops, "bandwidth_gbs": bandwidth, "matmul_size": size,
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
    from smlrec.models.train_loop import run_epochs
    from smlrec.random import make_rng

    model = MF(n_users, n_items, mf.dim, mf.init_std, mf.sparse).to(device)
    trainer = make_mf_trainer(model, mf.lr, mf.sparse)
    u = torch.from_numpy(np.asarray(users, dtype=np.int64)).to(device)
    i = torch.from_numpy(np.asarray(items, dtype=np.int64)).to(device)
    sampler = SetNegativeSampler(users, items)

    def step(rows, negatives):
        return trainer.step(u[rows], i[rows], negatives)

    rng = make_rng(seed, "bench-mf")
    began = time.perf_counter()
    sampler(rng)
    sampling = time.perf_counter() - began
    _sync(device)
    began = time.perf_counter()
    run_epochs(step, len(users), sampler, epochs, mf.batch_size, rng, device)
    _sync(device)
    seconds = time.perf_counter() - began
    triples = len(users) * epochs
    threads = torch.get_num_threads()
    return {"triples": triples, "seconds": seconds, "triples_per_s": triples / seconds,
            "triples_per_s_per_core": triples / seconds / max(threads, 1), "threads": threads,
            "negative_sampling_share": min(1.0, sampling * epochs / seconds), "dim": mf.dim,
            "batch_size": mf.batch_size, "sparse": mf.sparse}


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


def count_update_flops(strategy, period) -> float:
    """Matrix-product FLOPs of one more update of ``strategy`` on ``period`` (FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        strategy.update(period)
    return float(counter.get_total_flops())


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
        if name in STRATEGIES:
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

    kept: dict = {}

    def factory(name):
        kept[name] = make_strategy(name, timeline, settings)
        return kept[name]

    records = []
    per_strategy_seconds: dict = {}
    began = time.perf_counter()
    current = None
    for record in iter_replay(timeline, settings, names, initial, candidates, progress=False,
                              factory=factory):
        if record.strategy != current:
            current = record.strategy
        say(f"{record.strategy} period {record.period}: update {record.update_seconds:.2f} s")
        records.append({"strategy": record.strategy, "period": record.period, "role": record.role,
                        "interactions": record.interactions, "update_seconds": record.update_seconds,
                        "recall@20": record.metrics["recall@20"], "ndcg@20": record.metrics["ndcg@20"]})
    out["replay_seconds"] = time.perf_counter() - began
    out["records"] = records

    # Training rows of each timed update, for the MF-retrain cost model.
    first_test = plan.pretrain + plan.offline + plan.validation
    rows_so_far = np.cumsum([len(p) for p in timeline.periods])
    out["update_rows"] = {}
    for name in names:
        strategy = kept[name]
        epochs = getattr(strategy.settings, "epochs", None)
        per_period = {}
        for rec in records:
            if rec["strategy"] != name or rec["period"] < first_test:
                continue
            t = rec["period"] - 1  # the update before period t+1 trained on period t
            window = int(rows_so_far[t]) if name == "full-retrain" else len(timeline.periods[t])
            per_period[rec["period"]] = window
        out["update_rows"][name] = {"epochs": epochs, "rows": per_period}

    # Evaluation throughput with the first strategy's served model; extra FLOP counts.
    test_periods = [p for p in timeline.periods if p.role == "test"]
    say("measuring evaluation and MF training throughput")
    if names:
        out["evaluation"] = measure_evaluation(kept[names[0]], test_periods, candidates,
                                               settings.eval_batch_size, settings.device)
        out["evaluation"]["strategy"] = names[0]
        out["full_ranking"] = {**measure_full_ranking(kept[names[0]], test_periods[-1], settings.device),
                               "strategy": names[0]}
    out["counted_flops"] = {}
    for name in names:
        if name not in MF_ANALYTIC:
            out["counted_flops"][name] = count_update_flops(kept[name], test_periods[-1])

    # MF training throughput: one pass of MF alone over up to 1M rows of the log.
    n = min(len(log), config["mf_rows"])
    out["mf_training"] = measure_mf_training(log.user_idx[:n], log.item_idx[:n], log.n_users,
                                             log.n_items, settings.mf, settings.device)
    out["dim"] = settings.mf.dim
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if settings.device == "cuda":
        out["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    return out


# ----------------------------------------------------------------------------------------------
# Analysis and the report

def analyse(scale: str, phase: dict, machine: dict) -> dict:
    """Per-period update seconds, ratios, roofline fractions and targets of one scale."""
    dim = phase["dim"]
    records = phase["records"]
    tests = [r for r in records if r["role"] == "test"]
    strategies = sorted({r["strategy"] for r in records}, key=[r["strategy"] for r in records].index)
    updates = {s: {r["period"]: r["update_seconds"] for r in tests if r["strategy"] == s
                   and r["update_seconds"] == r["update_seconds"]} for s in strategies}
    mean_update = {s: (float(np.mean(list(v.values()))) if v else None) for s, v in updates.items()}
    ratios = {}
    for a, b in (("full-retrain", "sml"), ("fine-tune", "sml-s")):
        if mean_update.get(a) and mean_update.get(b):
            ratios[f"{a}/{b}"] = mean_update[a] / mean_update[b]
        else:
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
            epochs = rows["epochs"] or 1
            triples = float(np.mean(list(rows["rows"].values()))) * epochs
            phases[f"update:{name}"] = roofline(triples * triple_flops, triples * triple_bytes,
                                                seconds, machine)
        elif name in phase.get("counted_flops", {}):
            phases[f"update:{name}"] = roofline(phase["counted_flops"][name], None, seconds, machine)
    targets = {
        "mf_training_triples_per_s": _target(mf["triples_per_s"], TARGETS["mf_triples_per_s"], ">="),
        "evaluation_interactions_per_s": _target(phase.get("evaluation", {}).get("interactions_per_s"),
                                                 TARGETS["eval_interactions_per_s"], ">="),
        "peak_rss_gb": _target(phase["peak_rss_bytes"] / 1e9, TARGETS["peak_rss_gb"], "<="),
    }
    sml = phases.get("update:sml")
    targets["sml_update_vs_flop_bound"] = _target(
        sml["seconds"] / sml["flop_bound_s"] if sml and sml["flop_bound_s"] > 0 else None,
        TARGETS["sml_vs_flop_bound"], "<=")
    return {"scale": scale, "strategies": strategies, "update_seconds": updates,
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


def render_markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["# smlrec benchmarks", "",
             f"Written by `{result['command']}` on {result['date']} (UTC).", "",
             "## Machine limits (measured by the same script)", "",
             f"- device: {m['device']}" + (f" ({m['card']})" if m.get("card") else "")
             + f"; torch {m['torch']}, {m['threads']} intra-op threads, {m['cpu_count']} CPUs; {m['platform']}",
             f"- fp32 matrix multiply ({m['matmul_size']}x{m['matmul_size']}): **{m['matmul_gflops']:.1f} GFLOP/s**",
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
                  "| strategy | " + " | ".join(f"t={t}" for t in periods) + " | mean | R@20 | N@20 |",
                  "|---|" + "---|" * (len(periods) + 3)]
        for s in a["strategies"]:
            recs = [r for r in p["records"] if r["strategy"] == s and r["role"] == "test"]
            weights = np.array([r["interactions"] for r in recs], dtype=float)
            recall = float(np.sum([r["recall@20"] for r in recs] * weights) / weights.sum()) if recs else None
            ndcg = float(np.sum([r["ndcg@20"] for r in recs] * weights) / weights.sum()) if recs else None
            lines.append(f"| {s} | " + " | ".join(_fmt(a["update_seconds"][s].get(t)) for t in periods)
                         + f" | {_fmt(a['mean_update_seconds'][s])} | {_fmt(recall, 4)} | {_fmt(ndcg, 4)} |")
        lines += ["", "Ratios of mean update seconds (paper, on a GPU: ~18x and >4x): "
                  + ", ".join(f"{k} = {_fmt(v, 1)}" + ("x" if v else "") for k, v in a["ratios"].items()), ""]
        mf = p["mf_training"]
        lines += ["### Throughput", "",
                  f"- MF training (run_epochs + MF trainer, MF alone, {mf['triples']:,} triples, d={mf['dim']}, batch "
                  f"{mf['batch_size']}, {'fused lazy Adam' if mf['sparse'] else 'dense Adam'}): **{mf['triples_per_s']:,.0f} "
                  f"triples/s** = {mf['triples_per_s_per_core']:,.0f} per core ({mf['threads']} threads); "
                  f"negative sampling ~{100 * mf['negative_sampling_share']:.0f}% of it",
                  f"- MF pretraining: {p['pretrain']['triples_per_s']:,.0f} triples/s"]
        if "evaluation" in p:
            ev = p["evaluation"]
            lines.append(f"- evaluation ({ev['strategy']}, {ev['interactions']:,} test interactions x "
                         f"{N_CANDIDATES} candidates): **{ev['interactions_per_s']:,.0f} interactions/s**")
        if "full_ranking" in p:
            fr = p["full_ranking"]
            lines.append(f"- full-ranking evaluation ({fr['strategy']}, {fr['interactions']:,} test interactions "
                         f"x {fr['items']:,} items): **{fr['interactions_per_s']:,.0f} interactions/s**")
        lines.append(f"- peak resident memory of the replay process: **{p['peak_rss_bytes'] / 1e9:.2f} GB**"
                     + (f"; peak CUDA memory {p['peak_cuda_bytes'] / 1e9:.2f} GB" if "peak_cuda_bytes" in p else ""))
        lines += ["", "### Work against the machine's limits", "",
                  "| phase | GFLOP | GB moved | seconds | compute-bound s | memory-bound s | bound by | fraction of limit |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, r in a["phases"].items():
            lines.append(f"| {name} | {r['flops'] / 1e9:,.2f} | "
                         + (f"{r['bytes'] / 1e9:,.2f}" if r["bytes"] is not None else "n/a")
                         + f" | {r['seconds']:.3f} | {r['flop_bound_s']:.4f} | "
                         + (f"{r['byte_bound_s']:.4f}" if r["byte_bound_s"] is not None else "n/a")
                         + f" | {r['bound_by']} | {_fmt(r['fraction_of_limit'], 3)} |")
        lines += ["", "### Targets (issue 5)", "", "| target | measured | goal | met |", "|---|---|---|---|"]
        for name, t in a["targets"].items():
            met = "n/a" if t["met"] is None else ("met" if t["met"] else "**missed**")
            lines.append(f"| {name} | {_fmt(t['value'])} | {t['sense']} {_fmt(float(t['target']))} | {met} |")
        lines.append("")
    lines += ["## Cost models", "", (__doc__ or "").split("Cost models")[1].split("Writes")[0].strip(), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------

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


def plan_for(periods: int, base_plan: str, test_periods: int | None) -> dict:
    """The plan: the scale's own, or (N-K-1 pretrain, 1 offline, 0 validation, K test)."""
    if test_periods:
        if not 1 <= test_periods <= periods - 2:
            raise SystemExit(f"--test-periods must be 1..{periods - 2}")
        values = [periods - test_periods - 1, 1, 0, test_periods]
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
    config = {"data": data, "plan": plan_for(settings.periods, spec["plan"], args.test_periods),
              "pretrain_epochs": args.pretrain_epochs, "device": args.device,
              "cache_dir": str(workdir / "cache"), "seed": args.seed, "strategies": args.strategies,
              "threads": args.threads, "mf_rows": args.mf_rows, "epochs": args.epochs, "verbose": True}
    print(f"[{name}] replaying {', '.join(args.strategies)} with plan "
          f"{','.join(map(str, config['plan'].values()))} in a child process ...", flush=True)
    phase = run_child(config)
    return {"name": name, "regime": settings.regime, "synth_seconds": synth_seconds, "config": config,
            "phase": phase}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small logs, under 2 minutes (CI)")
    parser.add_argument("--scales", help="comma-separated: yelp,adressa (default both; "
                                         "--quick: small,small-news)")
    parser.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                        help="strategies to replay; names not registered are skipped with a note")
    parser.add_argument("--test-periods", type=int,
                        help="reduced plan: pretrain on all but the last K+1 periods, one offline "
                             "period, K test periods (default: the paper's plan of the scale)")
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
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if args.pretrain_epochs is None:
        args.pretrain_epochs = 1
    if args.quick:
        args.mf_rows = min(args.mf_rows, 5_000)
        if args.epochs is None:
            args.epochs = 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
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
    quick_dir = ROOT / "runs" / "bench-quick"
    markdown = Path(args.markdown) if args.markdown else (quick_dir / "BENCHMARKS.md" if args.quick
                                                          else ROOT / "BENCHMARKS.md")
    results = Path(args.json) if args.json else (quick_dir / "results.json" if args.quick
                                                 else ROOT / "benchmarks" / "results.json")
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
                          f"last {args.test_periods + 1} periods, one offline period, {args.test_periods} "
                          "test periods. Update seconds are per period as in the full plan; the accuracy "
                          "columns are not the paper protocol's. MF pretraining epochs: "
                          f"{args.pretrain_epochs}.")
    with tempfile.TemporaryDirectory(prefix="smlrec-bench-") as tmp:
        for name in names:
            scale = benchmark_scale(name, known[name], args, Path(tmp))
            scale["analysis"] = analyse(name, scale["phase"], machine)
            result["scales"].append(scale)
            for key, value in scale["analysis"]["ratios"].items():
                print(f"  [{name}] {key}: {_fmt(value, 1)}")
    result["total_seconds"] = time.perf_counter() - began
    write_atomic(results, json.dumps(result, indent=1, default=float))
    write_atomic(markdown, render_markdown(result))
    print(f"wrote {markdown} and {results} ({result['total_seconds']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
