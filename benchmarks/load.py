"""Load test of `smlrec serve` on the bundled MovieLens data: requests/s and latency at fixed
concurrency, with a version swap in the middle of every run.

    python benchmarks/load.py                      # builds the registry once, measures, writes results
    python benchmarks/load.py --duration 10 --levels 1,8
    python benchmarks/load.py --src /tmp/old/src --label before   # serve another source tree

What it does (wrk-style, loopback 127.0.0.1 only):

1. Builds (once, into ``--registry``) an SML registry: ``init`` on the first 95% of the bundled
   ratings (by time; 19 equal-count periods, plan 5,13,0,1), then ``update`` with the last 5%:
   versions 1 and 2. LATEST is put back on version 1 before the runs.
2. Starts ``smlrec serve`` in a subprocess (``--src`` chooses the source tree, to compare with an
   older commit under the same conditions).
3. For each concurrency level: that many client threads, each with one keep-alive connection,
   send ``GET /recommend?user=U&k=20`` back to back for ``--duration`` seconds (at most
   ``--max-requests`` in all), U drawn uniformly from the registry's users (``--cold`` of them
   unknown). Halfway through, LATEST is moved to the other version (a swap the server picks up by
   polling); every answer's version is recorded, so the run shows the swap and whether any
   request failed across it.
4. Writes ``--out`` (JSON) and, with ``--markdown``, replaces its own section at the end of
   BENCHMARKS.md (the rest of that file belongs to benchmarks/run.py).

The client runs on the same machine as the server and competes with it for the CPUs; the results
record the core count and the load average before and after each run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
SECTION = "## Serving: load test (benchmarks/load.py)"
HOST = "127.0.0.1"   # loopback only: this script never talks to another machine


def build_registry(root: Path, strategy: str) -> None:
    """Versions 1 (history: first 95% of the ratings) and 2 (the last 5% as one batch)."""
    import pandas as pd

    sys.path.insert(0, str(SRC))
    from smlrec.data.log import bundled_movielens_path
    from smlrec.production import init_registry, update_once

    ratings = pd.read_csv(bundled_movielens_path()).sort_values("timestamp", kind="stable")
    cut = int(len(ratings) * 0.95)
    data = root.parent / f"{root.name}-data"
    data.mkdir(parents=True, exist_ok=True)
    ratings.iloc[:cut].to_csv(data / "ratings.csv", index=False)
    ratings.iloc[cut:].to_csv(data / "batch.csv", index=False)
    init_registry(data / "ratings.csv", root, strategy, {"data": {"periods": 19}}, plan="5,13,0,1")
    update_once(root, data / "batch.csv")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_healthy(port: int, process: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        try:
            connection = http.client.HTTPConnection(HOST, port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not become healthy")


def set_latest(registry: Path, version: int) -> None:
    """Point LATEST at ``version`` atomically (what `smlrec rollback` does; also works on trees
    whose registry has no rollback)."""
    temp = registry / f".LATEST.tmp-load-{os.getpid()}"
    temp.write_text(f"v{version:06d}\n")
    os.replace(temp, registry / "LATEST")


def run_level(port: int, users: list[str], concurrency: int, duration: float, max_requests: int,
              k: int, registry: Path, swap_to: int, seed: int) -> dict:
    """``concurrency`` threads hammering /recommend for ``duration`` s; LATEST moves halfway."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    versions: list[list[int]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    budget = [max_requests]
    budget_lock = threading.Lock()
    stop = threading.Event()
    start_barrier = threading.Barrier(concurrency + 1)

    def worker(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        connection = http.client.HTTPConnection(HOST, port, timeout=30)
        start_barrier.wait()
        while not stop.is_set():
            with budget_lock:
                if budget[0] <= 0:
                    break
                budget[0] -= 1
            path = f"/recommend?user={rng.choice(users)}&k={k}"
            began = time.perf_counter()
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                body = response.read()
                elapsed = time.perf_counter() - began
                if response.status != 200:
                    errors[index] += 1
                    continue
                latencies[index].append(elapsed)
                versions[index].append(json.loads(body)["version"])
            except (OSError, http.client.HTTPException, ValueError):
                errors[index] += 1
                connection.close()
                connection = http.client.HTTPConnection(HOST, port, timeout=30)
        connection.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    load_before = os.getloadavg()[0]
    cpu_before = os.times()
    start_barrier.wait()
    began = time.perf_counter()
    swapped_at = None
    while time.perf_counter() - began < duration and any(t.is_alive() for t in threads):
        if swapped_at is None and time.perf_counter() - began >= duration / 2:
            set_latest(registry, swap_to)
            swapped_at = time.perf_counter() - began
        time.sleep(0.01)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    wall = time.perf_counter() - began
    cpu_after = os.times()
    every = sorted(x for per in latencies for x in per)
    n = len(every)

    def pct(q: float) -> float:
        return round(1000 * every[min(n - 1, int(q * n))], 2) if n else float("nan")

    # each client thread must see the old version, then the new one, never back
    ordered = all(seq == sorted(seq, key=lambda v: v == swap_to) for seq in versions)
    seen = {str(v): sum(seq.count(v) for seq in versions) for v in sorted({v for s in versions for v in s})}
    return {"concurrency": concurrency, "seconds": round(wall, 2), "requests": n,
            "requests_per_s": round(n / wall, 1), "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99),
            "max_ms": round(1000 * every[-1], 2) if n else None,
            "mean_ms": round(1000 * statistics.fmean(every), 2) if n else None,
            "errors": sum(errors), "swap_to": swap_to, "swap_at_s": round(swapped_at or -1, 2),
            "answers_by_version": seen, "versions_in_order": ordered,
            "client_cpu_s": round((cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system), 2),
            "load_average_before": round(load_before, 2), "load_average_after": round(os.getloadavg()[0], 2)}


def run_batch_level(port: int, users: list[str], concurrency: int, duration: float, batch: int, k: int) -> dict:
    """POST /recommend/batch with ``batch`` users per request: users answered per second."""
    done = [0] * concurrency
    errors = [0] * concurrency
    stop = threading.Event()

    def worker(index: int) -> None:
        rng = random.Random(index)
        connection = http.client.HTTPConnection(HOST, port, timeout=30)
        while not stop.is_set():
            body = json.dumps({"users": [rng.choice(users) for _ in range(batch)], "k": k})
            try:
                connection.request("POST", "/recommend/batch", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                if response.status == 200:
                    done[index] += batch
                else:
                    errors[index] += 1
            except (OSError, http.client.HTTPException):
                errors[index] += 1
                connection.close()
                connection = http.client.HTTPConnection(HOST, port, timeout=30)
        connection.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(duration)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    wall = time.perf_counter() - began
    return {"concurrency": concurrency, "batch": batch, "users_per_s": round(sum(done) / wall, 1),
            "errors": sum(errors)}


def recommend_startup(registry: Path, src: Path, repeats: int = 3) -> dict:
    """Wall seconds of `smlrec recommend --user U --k 20` (a fresh process each time)."""
    env = dict(os.environ, PYTHONPATH=str(src))
    user = "1"
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "smlrec", "recommend", "--registry", str(registry), "--user", user,
                        "--k", "20"], env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - began)
    probe = subprocess.run([sys.executable, "-c", "import sys, smlrec.cli; print(sorted(m for m in "
                            "('matplotlib', 'fastapi', 'uvicorn', 'starlette') if m in sys.modules))"],
                           env=env, capture_output=True, text=True)
    return {"seconds": [round(t, 2) for t in times], "median_s": round(statistics.median(times), 2),
            "heavy_modules_at_cli_import": probe.stdout.strip()}


def markdown(results: dict) -> str:
    lines = [SECTION, "",
             "Written by `python benchmarks/load.py --markdown` (results in benchmarks/results-serve.json); "
             "`benchmarks/run.py` does not touch this section.", ""]
    for label, run in results["runs"].items():
        cond = run["conditions"]
        lines += [f"### {label}: {run['description']}", "",
                  f"{cond['registry']}; {cond['cores']} cores ({cond['cpu']}), server and client on the same "
                  f"machine, loopback; {cond['duration_s']} s per level, k = {cond['k']}, "
                  f"{int(100 * cond['cold'])}% unknown users; a swap (LATEST moved to the other version) "
                  f"halfway through each level; load average {cond['load_average_start']} at start "
                  f"(other jobs were running); command: `{run['command']}`.", "",
                  "| concurrency | requests/s | p50 ms | p95 ms | p99 ms | max ms | errors | answers by version "
                  "(swap) | client CPU s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for level in run["levels"]:
            versions = ", ".join(f"v{v}: {n}" for v, n in level["answers_by_version"].items())
            order = "in order" if level["versions_in_order"] else "OUT OF ORDER"
            lines.append(f"| {level['concurrency']} | {level['requests_per_s']:,.0f} | {level['p50_ms']} | "
                         f"{level['p95_ms']} | {level['p99_ms']} | {level['max_ms']} | {level['errors']} | "
                         f"{versions} ({order}) | {level['client_cpu_s']} |")
        if run.get("batch"):
            b = run["batch"]
            lines += ["", f"Batch endpoint: {b['users_per_s']:,.0f} users/s (POST /recommend/batch, {b['batch']} "
                          f"users per request, concurrency {b['concurrency']}, {b['errors']} errors)."]
        if run.get("recommend_startup"):
            s = run["recommend_startup"]
            lines += ["", f"`smlrec recommend --user 1 --k 20` (fresh process): median {s['median_s']} s "
                          f"({', '.join(map(str, s['seconds']))}); heavy modules loaded by importing the CLI: "
                          f"{s['heavy_modules_at_cli_import']}."]
        lines.append("")
    if results.get("notes"):
        lines += [results["notes"], ""]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replace (or append) this script's section at the end of BENCHMARKS.md; the rest is kept."""
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    head = current.split(SECTION)[0].rstrip("\n")
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text((head + "\n\n" if head else "") + text.rstrip("\n") + "\n", encoding="utf-8")
    temp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default=str(ROOT / "runs" / "serve-registry"),
                        help="registry to serve (built on first use)")
    parser.add_argument("--strategy", default="sml")
    parser.add_argument("--src", default=str(SRC), help="source tree the server runs (default: this one)")
    parser.add_argument("--label", default="after", help="name of this run in the results file")
    parser.add_argument("--description", default="this branch")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per concurrency level")
    parser.add_argument("--max-requests", type=int, default=200_000, help="bound per level")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--cold", type=float, default=0.05, help="share of unknown users in the queries")
    parser.add_argument("--batch", type=int, default=100, help="users per batch request (0: skip)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `smlrec serve` argument")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results-serve.json"))
    parser.add_argument("--markdown", action="store_true", help="rewrite this script's section of BENCHMARKS.md")
    parser.add_argument("--markdown-only", action="store_true",
                        help="only rewrite the section from --out (no measurement)")
    parser.add_argument("--note", help="text stored in --out and printed under the tables")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.markdown_only:
        results = json.loads(out.read_text())
        if args.note:
            results["notes"] = args.note
            out.write_text(json.dumps(results, indent=1) + "\n")
        write_section(ROOT / "BENCHMARKS.md", markdown(results))
        return 0

    registry = Path(args.registry)
    if not (registry / "LATEST").exists():
        print(f"building {registry} (SML on the bundled MovieLens data; a few minutes)", flush=True)
        if registry.exists():
            shutil.rmtree(registry)
        build_registry(registry, args.strategy)
    set_latest(registry, 1)
    vocab = json.loads((registry / "v000001" / "vocab.json").read_text())
    rng = random.Random(0)
    known = [str(u) for u in vocab["users"]]
    users = [rng.choice(known) if rng.random() >= args.cold else f"stranger-{i}" for i in range(20_000)]

    port = free_port()
    env = dict(os.environ, PYTHONPATH=args.src)
    server = subprocess.Popen([sys.executable, "-m", "smlrec", "serve", "--registry", str(registry), "--host", HOST,
                               "--port", str(port), "--poll", "0.5", *args.server_arg], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    levels = []
    try:
        wait_healthy(port, server)
        load_start = round(os.getloadavg()[0], 2)
        current = 1
        for i, concurrency in enumerate(int(c) for c in args.levels.split(",")):
            target = 2 if current == 1 else 1
            level = run_level(port, users, concurrency, args.duration, args.max_requests, args.k, registry,
                              target, seed=i)
            current = target
            print(json.dumps(level), flush=True)
            levels.append(level)
            time.sleep(1.0)                                       # let the swap's load settle
        batch = run_batch_level(port, users, 8, min(args.duration, 10.0), args.batch, args.k) \
            if args.batch else None
    finally:
        server.terminate()
        server.wait(timeout=30)
    startup = recommend_startup(registry, Path(args.src))
    manifest = json.loads((registry / "v000002" / "manifest.json").read_text())
    conditions = {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                  "python": platform.python_version(), "duration_s": args.duration, "k": args.k, "cold": args.cold,
                  "registry": f"{manifest['strategy']} registry of the bundled MovieLens data "
                              f"({manifest['n_users']} users, {manifest['n_items']} items, "
                              f"{manifest['settings']['mf']['dim']}-d)",
                  "load_average_start": load_start, "server_args": args.server_arg}
    results = json.loads(out.read_text()) if out.exists() else {"runs": {}}
    if args.note:
        results["notes"] = args.note
    results["runs"][args.label] = {"description": args.description, "conditions": conditions, "levels": levels,
                                   "batch": batch, "recommend_startup": startup,
                                   "command": shlex.join(["python", "benchmarks/load.py", *(argv or sys.argv[1:])])}
    temp = out.with_name(f".{out.name}.tmp")
    temp.write_text(json.dumps(results, indent=1) + "\n")
    temp.replace(out)
    if args.markdown:
        write_section(ROOT / "BENCHMARKS.md", markdown(results))
    print(json.dumps({"startup": startup, "batch": batch}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
