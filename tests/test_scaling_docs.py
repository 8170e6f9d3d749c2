"""docs/scaling.md's multi-node torchrun command, run as torchrun runs it, on two local ranks.

The page's command places one rank on each of two hosts through torchrun's c10d rendezvous. Here
the same command runs with ``--nnodes 1 --nproc-per-node 2`` and the rendezvous endpoint on
127.0.0.1 (a real ``torch.distributed.run`` launch in a subprocess, gloo over loopback), on the
docs tests' small ``clicks.csv``, with fast settings appended; its results must be the
single-process ones: MF strategies within 1e-6, SML's metrics within one row's rank per period
(its autograd float32 noise can swap two near-tied candidates, as in tests/test_distributed.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch.distributed as dist

from smlrec.cli import main

from test_docs import REPO, blocks, commands, write_fixtures

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

FAST = ["--pretrain-epochs", "1", "--threads", "1", "--bootstrap", "0", "--no-report", "--no-progress",
        "--set", "mf.dim=8", "--set", "mf.kernel=torch", "--set", "n_negatives=20",
        "--set", "strategy.fine-tune.epochs=1", "--set", "strategy.sml.rounds=2",
        "--set", "strategy.sml.hidden=16"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multi_node_command() -> list[str]:
    found = [argv for lang, text, _ in blocks(REPO / "docs" / "scaling.md") if lang in ("sh", "bash")
             for argv in commands(text) if argv[0] == "torchrun" and "--nnodes" in argv]
    assert len(found) == 1, "docs/scaling.md should show one multi-node torchrun command"
    return found[0]


def on_one_host(argv: list[str], port: int) -> list[str]:
    """The page's launch with both ranks on this host: --nnodes 1, 2 ranks, endpoint 127.0.0.1."""
    out = list(argv)
    for flag, value in (("--nnodes", "1"), ("--nproc-per-node", "2"), ("--node-rank", "0"),
                        ("--rdzv-endpoint", f"127.0.0.1:{port}")):
        assert flag in out, f"the page's command has no {flag}"
        out[out.index(flag) + 1] = value
    return [sys.executable, "-m", "torch.distributed.run", *out[1:]]


def test_the_multi_node_example_runs_on_two_local_ranks(tmp_path):
    argv = multi_node_command()
    assert argv[argv.index("--nnodes") + 1] == "2" and "--rdzv-endpoint" in argv
    write_fixtures(tmp_path)
    launch = on_one_host(argv, free_port())
    smlrec_args = launch[launch.index("smlrec") + 1:]
    out = Path(smlrec_args[smlrec_args.index("--out") + 1])
    cache = ["--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launch, *FAST, *cache], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = tmp_path / out
    one = tmp_path / "one"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        args = [*smlrec_args, *FAST, *cache]
        args[args.index("--out") + 1] = str(one)
        assert main(args) == 0
    finally:
        os.chdir(cwd)
    a, b = (pd.read_csv(d / "periods.csv").drop(columns=["update_seconds", "scoring_seconds"]) for d in (one, two))
    assert set(a["strategy"]) == {"fine-tune", "sml"}
    mf = a["strategy"] == "fine-tune"
    pd.testing.assert_frame_equal(b[mf], a[mf], check_exact=False, atol=1e-6, rtol=0)
    metrics = [c for c in a.columns if "@" in c and not c.endswith(("_warm", "_cold"))]
    gap = (b.loc[~mf, metrics] - a.loc[~mf, metrics]).abs().max(axis=1)
    assert (gap <= 1.0 / a.loc[~mf, "interactions"] + 1e-6).all()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["cache", "one", "runs"]
