"""Data-parallel MF on torch.distributed (gloo, 127.0.0.1): N ranks with per-rank chunks of a batch
equal one process with the whole batch on the same row order.

Tolerance: the ranks compute the same element-wise gradient rows and the all_gather returns them
in the single-process order, so the per-row sums (index_add_) run in the same order; the tables
still differ in the last bit now and then, because torch's vectorised element-wise kernels
(sigmoid, softplus) take a SIMD or a scalar path depending on the length of the slice they get.
Measured: max |difference| 6e-8 after 10 steps (batch 63). The tests allow 1e-6 absolute; the
replicas themselves must be bit-identical to each other.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from smlrec.models.distributed import chunk_bounds, world
from smlrec.models.fused_mf import FusedMFTrainer
from smlrec.models.mf import MF
from smlrec.models.train_loop import run_trainer_epochs, train_epochs
from smlrec.production.registry import ModelRegistry

from helpers import write_generic_log

ATOL = 1e-6
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, size: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(size))
    torch.set_num_threads(1)


def _hard_exit(rank: int, run, *args) -> None:
    """A spawned rank: ``run(rank, *args)``, then ``os._exit`` as ``smlrec.cli.entry`` ends a
    torchrun rank (interpreter teardown with gloo's threads alive can abort the process)."""
    import traceback

    status = 0
    try:
        run(rank, *args)
    except BaseException:
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _leave() -> None:
    # Both ranks meet before leaving: destroying a gloo group while the peer is still sending
    # (or already gone) can abort the process ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()


def _train(batch_size: int, n_rows: int = 301, epochs: int = 2) -> dict:
    """MF trained with the torch kernel on a fixed tiny set of rows (same seeds on every rank)."""
    torch.manual_seed(0)
    model = MF(40, 50, 8)
    trainer = FusedMFTrainer(model, lr=0.05, kernel="torch")
    data = np.random.default_rng(1)
    users = torch.from_numpy(data.integers(0, 40, n_rows))
    items = torch.from_numpy(data.integers(0, 50, n_rows))
    losses = run_trainer_epochs(trainer, users, items, lambda rng: rng.integers(0, 50, n_rows),
                                epochs, batch_size, np.random.default_rng(7))
    return {"user": model.user.weight.detach().clone(), "item": model.item.weight.detach().clone(),
            "user_v": trainer.user_v.clone(), "steps": trainer.steps, "losses": losses}


def _train_rank(rank: int, size: int, port: int, batch_size: int, out: str) -> None:
    _join(rank, size, port)
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        assert world() == (rank, size)
        result = _train(batch_size)
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        _leave()


@pytest.mark.parametrize("batch_size", [64, 63])   # 63: uneven chunks (32 + 31) and a short last batch
def test_two_ranks_equal_one_process_with_the_whole_batch(tmp_path, batch_size):
    mp.spawn(_hard_exit, args=(_train_rank, 2, free_port(), batch_size, str(tmp_path)), nprocs=2, join=True)
    single = _train(batch_size)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name in ("user", "item", "user_v"):
        assert torch.equal(ranks[0][name], ranks[1][name]), "the replicas must stay identical"
        torch.testing.assert_close(ranks[0][name], single[name], atol=ATOL, rtol=0)
    assert ranks[0]["steps"] == single["steps"] == 2 * -(-301 // batch_size)
    np.testing.assert_allclose(ranks[0]["losses"], single["losses"], rtol=1e-6)


def _dense_fit(batch_size: int, n_rows: int = 203) -> dict:
    """A dense model (as SML's transfer) fitted with autograd Adam on a mean pair loss."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(30, 6), torch.nn.Linear(6, 6))
    items = torch.nn.Embedding(30, 6)
    items.weight.requires_grad_(False)
    data = np.random.default_rng(1)
    users, positives = (torch.from_numpy(data.integers(0, 30, n_rows)) for _ in range(2))

    def batch_loss(rows: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        u = model(users[rows])
        pos, neg = (u * items(positives[rows])).sum(-1), (u * items(negatives)).sum(-1)
        return torch.nn.functional.softplus(-pos).mean() + torch.nn.functional.softplus(neg).mean()

    optimizer = torch.optim.Adam(model.parameters(), lr=0.05, weight_decay=1e-3)
    losses = train_epochs(batch_loss, [optimizer], n_rows, lambda rng: rng.integers(0, 30, n_rows), 2,
                          batch_size, np.random.default_rng(7), data_parallel=True)
    return {"params": [p.detach().clone() for p in model.parameters()], "losses": losses}


def _fit_rank(rank: int, size: int, port: int, fit, batch_size: int, out: str, tag: str) -> None:
    """One rank of a data-parallel ``fit(batch_size)``; its result saved as ``{tag}{rank}.pt``."""
    _join(rank, size, port)
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        torch.save(fit(batch_size), Path(out) / f"{tag}{rank}.pt")
    finally:
        _leave()


def test_dense_parameters_all_reduced_equal_one_process(tmp_path):
    """SML's transfer path: mean loss per chunk weighted k/n, gradients all-reduced, same Adam."""
    mp.spawn(_hard_exit, args=(_fit_rank, 2, free_port(), _dense_fit, 41, str(tmp_path), "dense"), nprocs=2,
             join=True)
    single = _dense_fit(41)
    ranks = [torch.load(tmp_path / f"dense{r}.pt") for r in range(2)]
    for a, b, c in zip(ranks[0]["params"], ranks[1]["params"], single["params"]):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, atol=ATOL, rtol=0)
    np.testing.assert_allclose(ranks[0]["losses"], single["losses"], rtol=1e-6)


def _mixed_fit(batch_size: int, n_rows: int = 165) -> dict:
    """SML step 1's shape in small: a sparse embedding under SparseAdam, a dense layer under Adam,
    a seeded dropout mask, and an L2 term summed over the batch's rows beside the mean loss."""
    from smlrec.models.gru4rec import seeded_dropout
    from smlrec.models.train_loop import LossParts

    torch.manual_seed(0)
    table = torch.nn.Embedding(30, 6, sparse=True)
    layer = torch.nn.Linear(6, 6)
    items = torch.nn.Embedding(30, 6)
    items.weight.requires_grad_(False)
    generator = torch.Generator().manual_seed(3)
    data = np.random.default_rng(1)
    users, positives = (torch.from_numpy(data.integers(0, 30, n_rows)) for _ in range(2))

    def batch_loss(rows: torch.Tensor, negatives: torch.Tensor) -> LossParts:
        rows_read = table(users[rows])
        u = layer(seeded_dropout(rows_read, 0.3, True, generator))
        pos, neg = (u * items(positives[rows])).sum(-1), (u * items(negatives)).sum(-1)
        mean = torch.nn.functional.softplus(-pos).mean() + torch.nn.functional.softplus(neg).mean()
        return LossParts(mean, 0.05 * rows_read.pow(2).sum())   # large enough to see if miscounted

    optimizers = [torch.optim.SparseAdam(list(table.parameters()), lr=0.05),
                  torch.optim.Adam(layer.parameters(), lr=0.05)]
    losses = train_epochs(batch_loss, optimizers, n_rows, lambda rng: rng.integers(0, 30, n_rows), 2,
                          batch_size, np.random.default_rng(7), data_parallel=True)
    return {"params": [table.weight.detach().clone(), *(p.detach().clone() for p in layer.parameters())],
            "moments": [optimizers[0].state[table.weight][k].clone() for k in ("exp_avg", "exp_avg_sq")],
            "generator": generator.get_state(), "losses": losses}


def test_sparse_rows_gathered_and_sums_counted_once_equal_one_process(tmp_path):
    """Sparse row gradients gathered and coalesced, dense ones all-reduced, the summed L2 part
    added once per row (not weighted by the chunk's share), dropout masks cut from the whole
    batch's draw; batch 41 splits 21 / 20, and the last batch of 165 rows has 1 row, which both
    ranks compute whole."""
    mp.spawn(_hard_exit, args=(_fit_rank, 2, free_port(), _mixed_fit, 41, str(tmp_path), "mixed"), nprocs=2,
             join=True)
    single = _mixed_fit(41)
    ranks = [torch.load(tmp_path / f"mixed{r}.pt") for r in range(2)]
    for key in ("params", "moments"):
        for a, b, c in zip(ranks[0][key], ranks[1][key], single[key]):
            assert torch.equal(a, b), "the replicas must stay identical"
            torch.testing.assert_close(a, c, atol=ATOL, rtol=0)
    assert torch.equal(ranks[0]["generator"], single["generator"])   # the same draws, in step
    assert torch.equal(ranks[1]["generator"], single["generator"])
    np.testing.assert_allclose(ranks[0]["losses"], single["losses"], rtol=1e-6)


STRATEGY_SETTINGS = {
    "mf": {"dim": 8, "batch_size": 64, "kernel": "torch"}, "seed": 5, "pretrain": {"epochs": 2},
    "strategy": {
        # Several batches per period with uneven chunks (25 rows: 13 + 12); l2_hat large enough
        # that counting the summed L2 term per chunk share would show.
        "sml": {"rounds": 2, "hidden": 16, "step1_batch_size": 25, "step2_batch_size": 17, "l2_hat": 0.01},
        "gru4rec": {"batch_size": 25, "start_epochs": 2, "dropout": 0.25},   # dropout masks split
        "caser": {"batch_size": 25, "start_epochs": 2},                       # default dropout 0.5
    }}
DP_STRATEGIES = ("sml", "gru4rec", "caser")


def _flat_state(value, prefix: str = ""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flat_state(item, f"{prefix}/{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _flat_state(item, f"{prefix}/{index}")
    else:
        yield prefix, value


def _updated_strategies(group: tuple[int, int, int] | None) -> dict:
    """SML, GRU4Rec and Caser started and updated over two periods (SML: step 1 and step 2 of a
    finished period and the next one's step 1); with ``group`` = (rank, size, port), inside a
    gloo group after an identical pretraining. Returns each one's flattened state and how many
    batches were split across ranks."""
    from smlrec.config import replay_settings
    from smlrec.models import distributed
    from smlrec.strategies.factory import make_strategy
    from smlrec.strategies.pretrain import pretrain_model

    from helpers import tiny_timeline

    torch.set_num_threads(1)
    settings = replay_settings(STRATEGY_SETTINGS)
    timeline = tiny_timeline()
    initial, _ = pretrain_model(timeline.pretrain_data, timeline.log.n_users, timeline.log.n_items, settings)
    if group is not None:
        _join(*group)
        dist.init_process_group("gloo", rank=group[0], world_size=group[1])
    split = {"batches": 0}
    original = distributed.computing_chunk

    def counting(chunk):
        split["batches"] += 1
        return original(chunk)

    distributed.computing_chunk = counting
    out = {}
    try:
        for name in DP_STRATEGIES:
            split["batches"] = 0
            strategy = make_strategy(name, timeline, settings)
            strategy.start(timeline.pretrain_data, {k: v.clone() for k, v in initial.items()})
            for period in timeline.periods[timeline.plan.pretrain: timeline.plan.pretrain + 2]:
                strategy.update(period)
            out[name] = {"state": dict(_flat_state(strategy.state_dict())), "split": split["batches"]}
    finally:
        distributed.computing_chunk = original
        if group is not None:
            _leave()
    return out


def _strategies_rank(rank: int, size: int, port: int, out: str) -> None:
    torch.save(_updated_strategies((rank, size, port)), Path(out) / f"strategies{rank}.pt")


def test_sml_gru4rec_and_caser_updates_on_two_ranks_equal_one_process(tmp_path):
    """Every batch of SML's step 1 (sparse Ŵ rows gathered, the L2 sum added once) and step 2, and
    of GRU4Rec and Caser (dense gradients all-reduced, dropout masks cut from the whole batch's
    draw) split across 2 ranks: every state tensor within 1e-5 of one process with the same
    batches (float32 noise of the chunked forward passes and of the gradient sums, compounded by
    Adam; measured up to 7e-8 here); integer state (windows, counters, generator states)
    identical."""
    threads = torch.get_num_threads()
    mp.spawn(_hard_exit, args=(_strategies_rank, 2, free_port(), str(tmp_path)), nprocs=2, join=True)
    try:
        single = _updated_strategies(None)
    finally:
        torch.set_num_threads(threads)
    ranks = [torch.load(tmp_path / f"strategies{r}.pt", weights_only=False) for r in range(2)]
    for name in DP_STRATEGIES:
        assert ranks[0][name]["split"] > 5 and single[name]["split"] == 0, name
        expected = single[name]["state"]
        assert ranks[0][name]["state"].keys() == ranks[1][name]["state"].keys() == expected.keys()
        for key, value in expected.items():
            a, b = ranks[0][name]["state"][key], ranks[1][name]["state"][key]
            where = f"{name}{key}"
            if isinstance(value, torch.Tensor):
                assert torch.equal(a, b), f"{where}: the replicas must stay identical"
                if value.is_floating_point():
                    torch.testing.assert_close(a, value, atol=1e-5, rtol=0, msg=where)
                else:
                    assert torch.equal(a, value), where
            elif isinstance(value, np.ndarray):
                np.testing.assert_array_equal(a, b, err_msg=where)
                if np.issubdtype(value.dtype, np.floating):
                    np.testing.assert_allclose(a, value, atol=1e-5, rtol=0, err_msg=where)
                else:
                    np.testing.assert_array_equal(a, value, err_msg=where)
            else:
                assert a == b == value, where


def test_chunks_cover_a_batch_in_rank_order():
    assert [chunk_bounds(63, r, 2) for r in range(2)] == [(0, 32), (32, 63)]
    assert [chunk_bounds(5, r, 4) for r in range(4)] == [(0, 2), (2, 4), (4, 5), (5, 5)]
    assert world() == (0, 1)


REPLAY_ARGS = ["--periods", "7", "--plan", "2,2,1,2", "--pretrain-epochs", "2", "--threads", "1",
               "--no-progress", "--no-report", "--strategies", "pop,full-retrain,fine-tune,sml",
               "--set", "mf.dim=8", "--set", "mf.batch_size=64", "--set", "mf.kernel=torch",
               "--set", "n_negatives=20", "--set", "strategy.full-retrain.epochs=2",
               "--set", "strategy.fine-tune.epochs=2"]


def _replay_rank(rank: int, size: int, port: int, data: str, out: str, cache: str) -> None:
    _join(rank, size, port)          # what torchrun sets; the command joins the group itself
    from smlrec.cli import main

    try:
        assert main(["replay", "--data", data, "--out", out, "--cache-dir", cache, *REPLAY_ARGS]) == 0
    finally:
        if dist.is_initialized():
            _leave()


def test_a_two_rank_replay_writes_the_single_process_results(tmp_path):
    from smlrec.cli import main

    data = write_generic_log(tmp_path / "log.csv", n_rows=400, seed=2)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["replay", "--data", str(data), "--out", str(one), "--cache-dir", str(tmp_path / "cache"),
                 *REPLAY_ARGS]) == 0
    mp.spawn(_hard_exit, args=(_replay_rank, 2, free_port(), str(data), str(two), str(tmp_path / "cache")),
             nprocs=2, join=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "log.csv", "one", "two"]  # rank 1 wrote nothing
    a, b = (pd.read_csv(d / "periods.csv").drop(columns=["update_seconds", "scoring_seconds"]) for d in (one, two))
    assert set(a["strategy"]) == {"pop", "full-retrain", "fine-tune", "sml"}
    mf = a["strategy"] != "sml"
    pd.testing.assert_frame_equal(b[mf], a[mf], check_exact=False, atol=ATOL, rtol=0)
    # SML's transfer goes through autograd, whose float32 noise (1e-7) can swap two near-tied
    # candidates of a row: a metric then moves by at most 1 / (rows of the period).
    metrics = [c for c in a.columns if "@" in c and not c.endswith(("_warm", "_cold"))]
    gap = (b.loc[~mf, metrics] - a.loc[~mf, metrics]).abs().max(axis=1)
    assert (gap <= 1.0 / a.loc[~mf, "interactions"] + ATOL).all()


# ----------------------------------------------------------------------------------------------
# smlrec init + update under torchrun: every rank trains, rank 0 alone writes the registry.

def _init_args(strategy: str, history: Path, registry: Path) -> list[str]:
    return ["init", "--data", str(history), "--registry", str(registry), "--strategy", strategy,
            "--periods", "4", "--plan", "2,1,0,1", "--pretrain-epochs", "2", "--threads", "1",
            "--seed", "7", "--set", "mf.dim=8", "--set", "mf.batch_size=64", "--set", "mf.kernel=torch",
            "--set", "strategy.fine-tune.epochs=2", "--set", "strategy.sml.rounds=2",
            "--set", "strategy.sml.hidden=16"]


def _record_writes_under(root: Path, log: list[str]) -> None:
    """Note every file-system write this process makes inside ``root`` (a Python audit hook:
    opening for writing, creating, renaming, removing)."""
    root = str(root.resolve())
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def inside(path) -> bool:
        if isinstance(path, int):
            return False
        return os.path.abspath(os.fsdecode(path)).startswith(root)

    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[2], int) and args[2] & writing and inside(args[0]):
            log.append(f"open {args[0]}")
        elif event in ("os.rename", "os.link", "os.symlink") and (inside(args[0]) or inside(args[1])):
            log.append(f"{event} {args[0]} {args[1]}")
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.truncate", "os.chmod", "os.utime",
                       "shutil.rmtree") and inside(args[0]):
            log.append(f"{event} {args[0]}")

    import sys

    sys.addaudithook(hook)


def _production_rank(rank: int, size: int, port: int, command: list[str], registry: str, out: str) -> None:
    """One rank of ``torchrun -m smlrec COMMAND``: its exit status and its writes in the registry."""
    _join(rank, size, port)          # what torchrun sets; the command joins the group itself
    from smlrec.cli import main

    writes: list[str] = []
    _record_writes_under(Path(registry), writes)
    status = main(command)
    Path(out, f"{command[0]}{rank}.json").write_text(json.dumps({"status": status, "writes": writes}))


def _registry_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {}
    for name in ("weights.safetensors", "served.safetensors"):
        tensors.update({f"{name}:{k}": v for k, v in load_file(folder / name).items()})
    return tensors


@pytest.mark.parametrize("strategy", ["fine-tune", "sml"])
def test_init_and_update_on_two_ranks_write_the_single_process_registry(tmp_path, strategy):
    """Init and one update under 2 ranks (MF steps split and exchanged, SML's step 1 rows gathered
    and step 2 all-reduced) write the registry a single process writes, to 1e-5 (float32 noise of
    the exchanged steps, compounded over pretraining and the history's periods); rank 1 writes
    nothing in the registry folder."""
    from _production_data import synthetic_log, write_periods
    from smlrec.cli import main

    history, batches = write_periods(synthetic_log(6), tmp_path / "data", 4)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_init_args(strategy, history, one)) == 0
    assert main(["update", "--registry", str(one), "--data", str(batches[0])]) == 0
    # Two launches, as two torchrun commands would be (a process group is joined once per process).
    for command in (_init_args(strategy, history, two), ["update", "--registry", str(two), "--data", str(batches[0])]):
        mp.spawn(_hard_exit, args=(_production_rank, 2, free_port(), command, str(two), str(tmp_path)), nprocs=2, join=True)
        ranks = [json.loads((tmp_path / f"{command[0]}{r}.json").read_text()) for r in range(2)]
        assert [r["status"] for r in ranks] == [0, 0]
        assert ranks[1]["writes"] == []                       # rank 1 never wrote into the registry
        assert any("LATEST" in w for w in ranks[0]["writes"])   # (the hook does see rank 0's commit)
    assert (two / "LATEST").read_text() == (one / "LATEST").read_text() == "v000002\n"
    assert [e["event"] for e in ModelRegistry(two).journal()] == ["commit", "commit"]
    for version in ("v000001", "v000002"):
        a, b = _registry_tensors(one / version), _registry_tensors(two / version)
        assert a.keys() == b.keys()
        for name in a:
            if a[name].is_floating_point():
                torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=0, msg=name)
            else:                                          # ids, pair keys, counters, rng state
                assert torch.equal(b[name], a[name]), name
        assert (one / version / "vocab.json").read_text() == (two / version / "vocab.json").read_text()
        manifests = [json.loads((d / version / "manifest.json").read_text()) for d in (one, two)]
        for manifest in manifests:
            del manifest["created"], manifest["files"]
        assert manifests[0] == manifests[1]
    if strategy == "fine-tune":
        # A refusal on rank 0 (here an empty batch) reaches every rank: all exit 2, none waits.
        empty = tmp_path / "empty.csv"
        empty.write_text("user,item,time\n")
        command = ["update", "--registry", str(two), "--data", str(empty)]
        mp.spawn(_hard_exit, args=(_production_rank, 2, free_port(), command, str(two), str(tmp_path)), nprocs=2, join=True)
        ranks = [json.loads((tmp_path / f"update{r}.json").read_text()) for r in range(2)]
        assert [r["status"] for r in ranks] == [2, 2] and ranks[1]["writes"] == []
        assert (two / "LATEST").read_text() == "v000002\n"


# ----------------------------------------------------------------------------------------------
# Scoring split across ranks by rows, gathered: the single process's outcomes, exactly.

PROTOCOLS = ("sampled", "full", "auc")


def _scored(cache: Path, tape: list | None = None):
    """Settings, timeline, pop and fine-tune (trained before any process group exists, so
    identically in every process) and the candidates; with ``tape``, every call to a strategy's
    ``score`` appends its (first row, end row) there."""
    from smlrec.config import replay_settings
    from smlrec.data.candidates import CandidateStore
    from smlrec.experiment import replay as replay_module
    from smlrec.strategies.factory import make_strategy
    from smlrec.strategies.pretrain import pretrain_model

    from helpers import tiny_timeline

    replay_module.FULL_BLOCK_ELEMENTS = 200     # blocks of a few rows, so that the full protocol splits too
    settings = replay_settings({"mf": {"dim": 8, "batch_size": 64, "kernel": "torch"}, "seed": 5,
                                "pretrain": {"epochs": 2}, "n_negatives": 20, "eval_batch_size": 16,
                                "protocols": list(PROTOCOLS), "strategy": {"fine-tune": {"epochs": 2}}})
    timeline = tiny_timeline()
    plan = timeline.plan
    initial, _ = pretrain_model(timeline.pretrain_data, timeline.log.n_users, timeline.log.n_items, settings)
    strategies = {}
    for name in ("pop", "fine-tune"):
        strategy = make_strategy(name, timeline, settings)
        strategy.start(timeline.pretrain_data, {k: v.clone() for k, v in initial.items()})
        for period in timeline.periods[plan.pretrain: plan.pretrain + plan.offline + plan.validation]:
            strategy.update(period)
        if tape is not None:
            def score(period, rows, candidates, original=strategy.score):
                tape.append((rows.start, rows.stop))
                return original(period, rows, candidates)

            strategy.score = score
        strategies[name] = strategy
    return settings, timeline, strategies, CandidateStore(timeline, settings.seed, settings.n_negatives, cache)


def _outcomes(settings, timeline, strategies, candidates, tape: list | None = None) -> tuple[dict, dict]:
    """Every (strategy, protocol, test period)'s outcome, and the rows its ``score`` calls took."""
    from smlrec.experiment.replay import score_period

    negatives: dict = {}
    outcomes, calls = {}, {}
    for name, strategy in strategies.items():
        for protocol in PROTOCOLS:
            for period in timeline.periods[-timeline.plan.test:]:
                key = (name, protocol, period.index)
                outcomes[key] = score_period(protocol, strategy, period, candidates, negatives, settings)
                if tape is not None:
                    calls[key] = list(tape)
                    tape.clear()
    return outcomes, calls


def _score_rank(rank: int, size: int, port: int, out: str) -> None:
    tape: list = []
    settings, timeline, strategies, candidates = _scored(Path(out) / f"cache{rank}", tape)
    _join(rank, size, port)
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        outcomes, calls = _outcomes(settings, timeline, strategies, candidates, tape)
        torch.save({"outcomes": outcomes, "calls": calls}, Path(out) / f"scores{rank}.pt")
    finally:
        _leave()


def test_scoring_split_across_two_ranks_gives_the_single_process_outcomes(tmp_path):
    """Sampled, full and auc: each rank scores a contiguous run of the single process's blocks of
    rows, the gathered outcomes (ranks, pair scores) equal the single process's bit for bit."""
    mp.spawn(_hard_exit, args=(_score_rank, 2, free_port(), str(tmp_path)), nprocs=2, join=True)
    settings, timeline, strategies, candidates = _scored(tmp_path / "cache")
    single, _ = _outcomes(settings, timeline, strategies, candidates)
    ranks = [torch.load(tmp_path / f"scores{r}.pt", weights_only=False) for r in range(2)]
    assert len(single) == 2 * len(PROTOCOLS) * timeline.plan.test
    for key, expected in single.items():
        n = len(timeline.periods[key[2]])
        for r in range(2):                                   # every rank gets every row, exactly
            np.testing.assert_array_equal(ranks[r]["outcomes"][key], expected, err_msg=str(key))
        runs = [sorted(ranks[r]["calls"][key]) for r in range(2)]
        assert runs[0] and runs[1], f"{key}: both ranks score part of the period"
        assert runs[0][0][0] == 0 and runs[0][-1][1] == runs[1][0][0] and runs[1][-1][1] == n
        for run in runs:                                     # contiguous: each block starts where one ended
            assert all(a[1] == b[0] for a, b in zip(run, run[1:]))


def test_ranks_take_runs_of_whole_blocks_nearest_an_even_split():
    from smlrec.evaluation.split import fixed_blocks, rank_slices

    assert list(fixed_blocks(60, 16)) == [0, 16, 32, 48, 60]
    assert rank_slices(fixed_blocks(60, 16), 2) == [(0, 32), (32, 60)]
    assert rank_slices(fixed_blocks(5000, 2048), 2) == [(0, 2048), (2048, 5000)]   # 2048 is nearer 2500 than 4096
    assert rank_slices(fixed_blocks(100, 10), 3) == [(0, 30), (30, 70), (70, 100)]
    assert rank_slices(fixed_blocks(10, 16), 2) == [(0, 0), (0, 10)]   # one block: one rank scores it
    assert rank_slices(fixed_blocks(0, 16), 2) == [(0, 0), (0, 0)]
