"""Load test of `smlrec serve` on the bundled MovieLens data, against a minimal FastAPI app measured
in the same run.

    python benchmarks/load.py                      # builds the registry once, measures, writes results
    python benchmarks/load.py --duration 10 --levels 8 --markdown

What it does (loopback 127.0.0.1 only):

1. Builds (once, into ``--registry``) an SML registry: ``init`` on the first 95% of the bundled
   ratings (by time; 19 equal-count periods, plan 5,13,0,1), then ``update`` with the last 5%:
   versions 1 and 2. LATEST is put on version 2.
2. For each server (a minimal FastAPI app whose one route returns 20 ints, run by uvicorn with the
   same settings; then ``smlrec serve``), and each concurrency level: ``wrk`` (Debian's package;
   ``--client python`` uses this script's thread client instead, e.g. where wrk is missing) sends
   ``GET /recommend?user=U&k=20`` on that many keep-alive connections for ``--duration`` seconds,
   U drawn from the registry's users (5% unknown). Reported: requests/s, p50/p99 latency (wrk's),
   and the server's CPU seconds per request (utime + stime of the server process from /proc, so
   the client's CPU is not counted), and smlrec's ratios to the minimal app.
3. The batch endpoint: ``--batch`` users per POST at k = 20 from 2 client threads; users/s.
4. ``smlrec recommend --user U --k 20`` from a cold process (``hyperfine`` when installed, else
   timed here; median of ``--startup-runs``) against ``python -c "import torch, pandas"``.
5. Writes ``--out`` (JSON) and, with ``--markdown``, replaces its own section at the end of
   BENCHMARKS.md (the rest of that file belongs to benchmarks/run.py).

The client runs on the same machine as the server and competes with it for the CPUs; the results
record the CPU model, the commit and the load average.
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
SECTION = "## Serving (benchmarks/load.py)"
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
              k: int, registry: Path | None, swap_to: int | None, seed: int) -> dict:
    """``concurrency`` threads hammering /recommend for ``duration`` s (the --client python
    fallback); with ``registry``, LATEST moves to ``swap_to`` halfway."""
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
                answer = json.loads(body)
                if isinstance(answer, dict):      # the minimal app answers a bare list
                    versions[index].append(answer["version"])
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
        if registry is not None and swapped_at is None and time.perf_counter() - began >= duration / 2:
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


MINIMAL_APP = """
import sys, uvicorn
from fastapi import FastAPI
app = FastAPI()
TWENTY = list(range(20))
@app.get("/recommend")
async def recommend():
    return TWENTY
@app.get("/health")
async def health():
    return {"status": "ok"}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""

WRK_SCRIPT = """
local users = {}
for line in io.lines("%s") do users[#users + 1] = line end
math.randomseed(%d)
request = function()
  return wrk.format("GET", "/recommend?user=" .. users[math.random(#users)] .. "&k=%d")
end
"""


WRK_BATCH = """
local bodies = {}
for line in io.lines("%s") do bodies[#bodies + 1] = line end
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/recommend/batch", {["Content-Type"] = "application/json"}, bodies[n %% #bodies + 1])
end
"""


def wrk_batch(port: int, users: list[str], batch: int, k: int, concurrency: int, duration: float,
              scratch: Path, include_seen: bool = False) -> dict:
    """POST /recommend/batch with ``batch`` users per request from wrk: users answered per second."""
    rng = random.Random(1)
    bodies = scratch / "bodies.txt"
    bodies.write_text("\n".join(json.dumps({"users": [rng.choice(users) for _ in range(batch)], "k": k,
                                            "include_seen": include_seen})
                                for _ in range(20)) + "\n")
    script = scratch / "batch.lua"
    script.write_text(WRK_BATCH % bodies)
    done = subprocess.run(["wrk", f"-t{min(2, concurrency)}", f"-c{concurrency}", f"-d{int(duration)}s", "--latency",
                           "-s", str(script), f"http://{HOST}:{port}"], capture_output=True, text=True, check=True)
    row = {"concurrency": concurrency, "batch": batch, "client": "wrk", "errors": 0, "include_seen": include_seen}
    for line in done.stdout.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            row["requests_per_s"] = float(words[1])
            row["users_per_s"] = round(float(words[1]) * batch, 1)
        elif words and words[0] == "99%" and len(words) == 2:
            row["p99_ms"] = _ms(words[1])
        elif line.strip().startswith(("Non-2xx", "Socket errors")):
            row["errors"] = line.strip()
        elif "requests in" in line:
            row["requests"] = int(words[0])
    return row


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (from /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk_level(port: int, users_file: Path, concurrency: int, duration: float, k: int, seed: int,
              scratch: Path) -> dict:
    """One wrk run; requests/s and wrk's latency percentiles."""
    script = scratch / f"load-{seed}.lua"
    script.write_text(WRK_SCRIPT % (users_file, seed, k))
    threads = min(2, concurrency)
    done = subprocess.run(["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{int(duration)}s", "--latency",
                           "-s", str(script), f"http://{HOST}:{port}"], capture_output=True, text=True, check=True)
    out = done.stdout
    result = {"concurrency": concurrency, "client": "wrk"}
    for line in out.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            result["requests_per_s"] = float(words[1])
        elif words and words[0] in ("50%", "99%") and len(words) == 2:
            result[f"p{words[0][:-1]}_ms"] = _ms(words[1])
        elif "requests in" in line:
            result["requests"] = int(words[0])
        elif line.strip().startswith("Non-2xx") or line.strip().startswith("Socket errors"):
            result["errors"] = line.strip()
    return result


def _ms(text: str) -> float:
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return round(float(text[: -len(unit)]) * scale, 3)
    return float(text)


def measure_servers(commands: dict[str, tuple[list[str], int]], env: dict, users: list[str], users_file: Path,
                    levels: list[int], duration: float, k: int, client: str, scratch: Path,
                    rounds: int) -> dict[str, list[dict]]:
    """Start every server, then run each level ``rounds`` times against each in turn (alternating
    which goes first), recording the server's CPU per request; the median round per level is kept.
    Alternating short runs is what makes the servers comparable on a machine others are using."""
    servers = {name: subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for name, (command, _) in commands.items()}
    runs: dict[str, dict[int, list[dict]]] = {name: {c: [] for c in levels} for name in commands}
    try:
        for name, process in servers.items():
            port = commands[name][1]
            wait_healthy(port, process)
            if client == "wrk":    # warm-up
                wrk_level(port, users_file, 2, 2, k, 99, scratch)
        for r in range(rounds):
            order = list(commands) if r % 2 == 0 else list(reversed(commands))
            for concurrency in levels:
                for name in order:
                    port, pid = commands[name][1], servers[name].pid
                    load = round(os.getloadavg()[0], 2)
                    before = cpu_seconds(pid)
                    if client == "wrk":
                        row = wrk_level(port, users_file, concurrency, duration, k, r, scratch)
                    else:
                        row = run_level(port, users, concurrency, duration, 10**9, k, None, None, r)
                    row["server_cpu_s"] = round(cpu_seconds(pid) - before, 2)
                    row["server_cpu_ms_per_request"] = round(1000 * row["server_cpu_s"] / max(row["requests"], 1), 3)
                    row["load_average_before"] = load
                    row["round"] = r
                    runs[name][concurrency].append(row)
                    print(name, json.dumps(row), flush=True)
    finally:
        for process in servers.values():
            process.terminate()
            process.wait(timeout=30)
    out = {}
    for name, per_level in runs.items():
        out[name] = []
        for concurrency, rows in per_level.items():
            middle = sorted(rows, key=lambda row: row["requests_per_s"])[len(rows) // 2]
            out[name].append(dict(middle, rounds=[{key: row.get(key) for key in (
                "requests_per_s", "p99_ms", "server_cpu_ms_per_request", "load_average_before")} for row in rows]))
    return out


def health_during_maximal(port: int, users: list[str], max_users: int = 10_000, k: int = 20) -> dict:
    """/health latencies while one maximal batch (``max_users`` users x ``k``, include_seen: every
    user scored on demand) is in flight: the event loop must keep answering."""
    known = [u for u in users if not u.startswith("stranger-")]
    body = json.dumps({"users": [known[i % len(known)] for i in range(max_users)], "k": k, "include_seen": True})
    done: dict = {}

    def maximal() -> None:
        connection = http.client.HTTPConnection(HOST, port, timeout=600)
        began = time.perf_counter()
        connection.request("POST", "/recommend/batch", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        done["bytes"] = len(response.read())
        done["status"] = response.status
        done["seconds"] = round(time.perf_counter() - began, 2)

    thread = threading.Thread(target=maximal)
    thread.start()
    latencies = []
    connection = http.client.HTTPConnection(HOST, port, timeout=60)
    while thread.is_alive():
        began = time.perf_counter()
        connection.request("GET", "/health")
        connection.getresponse().read()
        latencies.append(time.perf_counter() - began)
        time.sleep(0.01)
    thread.join()
    latencies.sort()
    return {"maximal_request": done, "health_requests": len(latencies),
            "health_p50_ms": round(1000 * latencies[len(latencies) // 2], 1) if latencies else None,
            "health_max_ms": round(1000 * latencies[-1], 1) if latencies else None,
            "load_average": round(os.getloadavg()[0], 2)}


def batch_throughput(command: list[str], env: dict, port: int, users: list[str], batch: int, k: int,
                     duration: float, client: str, scratch: Path) -> dict:
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(port, server)
        run_batch_level(port, users, 2, 2.0, batch, k)              # warm-up
        before = cpu_seconds(server.pid)
        time.sleep(10.0)
        idle = round(100 * (cpu_seconds(server.pid) - before) / 10.0, 1)
        before = cpu_seconds(server.pid)
        if client == "wrk":
            row = wrk_batch(port, users, batch, k, 2, duration, scratch)
        else:
            row = run_batch_level(port, users, 2, duration, batch, k)
        row["server_cpu_s"] = round(cpu_seconds(server.pid) - before, 2)
        row["k"] = k
        row["idle_server_cpu_percent"] = idle
        if client == "wrk":    # every user scored on demand (include_seen: the precomputed table is not used)
            before = cpu_seconds(server.pid)
            row["computed"] = wrk_batch(port, users, batch, k, 2, duration, scratch, include_seen=True)
            row["computed"]["server_cpu_s"] = round(cpu_seconds(server.pid) - before, 2)
        row["health_during_maximal"] = health_during_maximal(port, users)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return row


def recommend_startup(registry: Path, src: Path, runs: int, user: str) -> dict:
    """Cold-process seconds of `smlrec recommend --user U --k 20` and of `import torch, pandas`."""
    env = dict(os.environ, PYTHONPATH=str(src))
    commands = {"recommend": shlex.join([sys.executable, "-m", "smlrec", "recommend", "--registry", str(registry),
                                         "--user", user, "--k", "20"]),
                "import_torch_pandas": shlex.join([sys.executable, "-c", "import torch, pandas"])}
    out: dict = {"tool": "hyperfine" if shutil.which("hyperfine") else "perf_counter"}
    for name, command in commands.items():
        if out["tool"] == "hyperfine":
            export = Path(f"/tmp/load-hyperfine-{os.getpid()}.json")
            subprocess.run(["hyperfine", "--warmup", "1", "--runs", str(runs), "--export-json", str(export),
                            "--output", "null", command], env=env, check=True, capture_output=True)
            times = json.loads(export.read_text())["results"][0]["times"]
            export.unlink()
        else:
            times = []
            for _ in range(runs):
                began = time.perf_counter()
                subprocess.run(shlex.split(command), env=env, check=True, stdout=subprocess.DEVNULL)
                times.append(time.perf_counter() - began)
        out[name] = {"median_s": round(statistics.median(times), 3), "seconds": [round(t, 3) for t in times]}
    return out


def markdown(results: dict) -> str:
    run = results
    cond = run["conditions"]
    lines = [SECTION, "",
             "Written by `python benchmarks/load.py --markdown` (results in benchmarks/results-serve.json); "
             "`benchmarks/run.py` keeps this section when it rewrites the rest of the file.", "",
             f"Command: `{run['command']}`. Commit {cond['commit']}; CPU {cond['cpu']} ({cond['cores']} cores), "
             f"Python {cond['python']}; {cond['registry']}; server and client ({cond['client']}) on the same "
             f"machine over loopback; {cond['duration_s']} s per run, k = {cond['k']}, 5% unknown users; "
             f"{cond.get('rounds', 1)} alternating runs per server and level, the median run (by requests/s) shown; "
             f"load average {cond['load_average_start']} at start.", "",
             "| server | concurrency | requests/s | p50 ms | p99 ms | server CPU ms/request | requests |",
             "|---|---|---|---|---|---|---|"]
    for name in ("minimal", "smlrec"):
        for row in run["servers"][name]:
            lines.append(f"| {name} | {row['concurrency']} | {row['requests_per_s']:,.0f} | {row.get('p50_ms')} | "
                         f"{row.get('p99_ms')} | {row['server_cpu_ms_per_request']} | {row['requests']:,} |")
    lines.append("")
    for ratio in run["ratios"]:
        lines.append(f"- concurrency {ratio['concurrency']}: smlrec / minimal requests/s = {ratio['requests_ratio']}; "
                     f"server CPU per request {ratio['cpu_ratio']}x the minimal app's.")
    b = run.get("batch")
    if b:
        lines.append(f"- batch endpoint: {b['users_per_s']:,.0f} users/s at k = {b['k']} ({b['batch']} users per "
                     f"POST, {b['concurrency']} connections, {b['errors']} errors), answered from the table "
                     "precomputed at swap time.")
        if b.get("computed"):
            c = b["computed"]
            lines.append(f"- batch endpoint with `include_seen: true` (every user scored on demand: product, "
                         f"top-k, encoding): {c['users_per_s']:,.0f} users/s at k = {b['k']}.")
        h = b.get("health_during_maximal")
        if h:
            lines.append(f"- `/health` while one maximal batch (10,000 users x k = 20, scored on demand: "
                         f"{h['maximal_request']['seconds']} s, {h['maximal_request']['bytes']:,} bytes) was in "
                         f"flight: {h['health_requests']} answers, median {h['health_p50_ms']} ms, "
                         f"max {h['health_max_ms']} ms (load average {h['load_average']}).")
        if b.get("idle_server_cpu_percent") is not None:
            lines.append(f"- idle server (polling LATEST every second): {b['idle_server_cpu_percent']}% of a core "
                         "over 10 s.")
    s = run.get("startup")
    if s:
        lines.append(f"- `smlrec recommend --user U --k 20` from a cold process: median {s['recommend']['median_s']} s "
                     f"of {len(s['recommend']['seconds'])} ({s['tool']}); `python -c 'import torch, pandas'` alone: "
                     f"{s['import_torch_pandas']['median_s']} s.")
    if run.get("notes"):
        lines += ["", run["notes"]]
    lines.append("")
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replace (or append) this script's section at the end of BENCHMARKS.md; the rest is kept."""
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    head = current.split(SECTION)[0].rstrip("\n")
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text((head + "\n\n" if head else "") + text.rstrip("\n") + "\n", encoding="utf-8")
    temp.replace(path)


def cpu_model() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default=str(ROOT / "runs" / "serve-registry"),
                        help="registry to serve (built on first use)")
    parser.add_argument("--strategy", default="sml")
    parser.add_argument("--src", default=str(SRC), help="source tree the server runs (default: this one)")
    parser.add_argument("--levels", default="8,32")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--cold", type=float, default=0.05, help="share of unknown users in the queries")
    parser.add_argument("--batch", type=int, default=1000, help="users per batch request (0: skip)")
    parser.add_argument("--client", choices=["wrk", "python"], default="wrk" if shutil.which("wrk") else "python")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per server and level (median kept)")
    parser.add_argument("--startup-runs", type=int, default=5)
    parser.add_argument("--server-arg", action="append", default=[], help="extra `smlrec serve` argument")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results-serve.json"))
    parser.add_argument("--markdown", action="store_true", help="rewrite this script's section of BENCHMARKS.md")
    parser.add_argument("--markdown-only", action="store_true",
                        help="only rewrite the section from --out (no measurement)")
    parser.add_argument("--note", help="text stored in --out and printed under the table")
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
    set_latest(registry, 2)
    vocab = json.loads((registry / "v000002" / "vocab.json").read_text())
    rng = random.Random(0)
    known = [str(u) for u in vocab["users"]]
    users = [rng.choice(known) if rng.random() >= args.cold else f"stranger-{i}" for i in range(20_000)]
    scratch = Path(f"/tmp/smlrec-load-{os.getpid()}")
    scratch.mkdir(exist_ok=True)
    users_file = scratch / "users.txt"
    users_file.write_text("\n".join(users) + "\n")
    levels = [int(c) for c in args.levels.split(",")]
    env = dict(os.environ, PYTHONPATH=args.src)
    load_start = round(os.getloadavg()[0], 2)
    smlrec = [sys.executable, "-m", "smlrec", "serve", "--registry", str(registry), "--host", HOST,
              "--port", "PORT", "--poll", "1", *args.server_arg]
    minimal_port, smlrec_port = free_port(), free_port()
    while smlrec_port == minimal_port:
        smlrec_port = free_port()
    servers = measure_servers({"minimal": ([sys.executable, "-c", MINIMAL_APP, str(minimal_port)], minimal_port),
                               "smlrec": ([a if a != "PORT" else str(smlrec_port) for a in smlrec], smlrec_port)},
                              env, users, users_file, levels, args.duration, args.k, args.client, scratch,
                              args.rounds)
    ratios = [{"concurrency": a["concurrency"],
               "requests_ratio": round(b["requests_per_s"] / a["requests_per_s"], 2),
               "cpu_ratio": round(b["server_cpu_ms_per_request"] / a["server_cpu_ms_per_request"], 2)}
              for a, b in zip(servers["minimal"], servers["smlrec"])]
    batch = None
    if args.batch:
        port = free_port()
        smlrec[smlrec.index("--port") + 1] = str(port)
        batch = batch_throughput(smlrec, env, port, users, args.batch, args.k, 10.0, args.client, scratch)
    startup = recommend_startup(registry, Path(args.src), args.startup_runs, known[0]) if args.startup_runs else None
    shutil.rmtree(scratch, ignore_errors=True)
    manifest = json.loads((registry / "v000002" / "manifest.json").read_text())
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "src"],
                           capture_output=True, text=True).stdout.strip()
    conditions = {"cores": os.cpu_count(), "cpu": cpu_model(), "commit": commit + (" (src modified)" if dirty else ""),
                  "python": platform.python_version(), "duration_s": args.duration, "k": args.k, "cold": args.cold,
                  "client": args.client, "rounds": args.rounds,
                  "registry": f"{manifest['strategy']} registry of the bundled MovieLens data "
                              f"({manifest['n_users']} users, {manifest['n_items']} items, "
                              f"{manifest['settings']['mf']['dim']}-d)",
                  "load_average_start": load_start, "server_args": args.server_arg}
    results = {"conditions": conditions, "servers": servers, "ratios": ratios, "batch": batch, "startup": startup,
               "command": shlex.join(["python", "benchmarks/load.py", *(argv or sys.argv[1:])])}
    if args.note:
        results["notes"] = args.note
    temp = out.with_name(f".{out.name}.tmp")
    temp.write_text(json.dumps(results, indent=1) + "\n")
    temp.replace(out)
    if args.markdown:
        write_section(ROOT / "BENCHMARKS.md", markdown(results))
    print(json.dumps({"ratios": ratios, "batch": batch, "startup": startup}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
