import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import smlrec.production.registry as registry_module
from _production_data import synthetic_log, tiny_settings, write_periods
from smlrec.errors import CheckpointError
from smlrec.production import init_registry, update_once
from smlrec.production.registry import ModelRegistry

HISTORY = 4
SRC = str(Path(__file__).resolve().parent.parent / "src")


@pytest.fixture(scope="module")
def initialised(tmp_path_factory):
    """A registry at version 1 (fine-tune on 4 history periods) and the next period's file."""
    root = tmp_path_factory.mktemp("registry")
    history, batches = write_periods(synthetic_log(6), root / "data", HISTORY)
    init_registry(history, root / "v1", "fine-tune", tiny_settings("fine-tune", HISTORY))
    reference = root / "reference"
    shutil.copytree(root / "v1", reference)
    update_once(reference, batches[0])
    return root / "v1", batches[0], ModelRegistry(reference).load(2)


def _copy(source: Path, target: Path) -> ModelRegistry:
    shutil.copytree(source, target)
    return ModelRegistry(target)


def _assert_same_version(a, b):
    for key in ("user.weight", "item.weight"):
        assert torch.equal(a.strategy_state["model"][key], b.strategy_state["model"][key]), key
    assert list(a.user_ids) == list(b.user_ids) and list(a.item_ids) == list(b.item_ids)
    assert np.array_equal(a.cumulative.pair_keys, b.cumulative.pair_keys)
    assert np.array_equal(a.cumulative.pair_first, b.cumulative.pair_first)
    assert a.cumulative.rows == b.cumulative.rows and a.data == b.data


def test_version_layout_and_manifest(initialised, tmp_path):
    source, batch, _ = initialised
    reg = _copy(source, tmp_path / "reg")
    update_once(reg, batch)
    assert (reg.root / "LATEST").read_text() == "v000002\n"
    assert sorted(p.name for p in (reg.root / "v000002").iterdir()) == [
        "manifest.json", "served.safetensors", "state.json", "vocab.json", "weights.safetensors"]
    manifest = reg.load().manifest
    assert manifest["version"] == 2 and manifest["strategy"] == "fine-tune"
    assert manifest["package"]["name"] == "smlrec" and manifest["settings"]["seed"] == 7
    assert [d["period"] for d in manifest["data"]] == [3, 4]
    assert manifest["data"][1]["rows"] == 120 and len(manifest["data"][1]["sha256"]) == 64
    assert manifest["periods"]["rows"] == 5 * 120
    assert reg.versions() == [1, 2]
    assert not [p for p in reg.root.iterdir() if p.name.startswith(".tmp")]


class Crash(BaseException):
    """Stands in for the process dying: nothing catches it, nothing cleans up."""


def _count_steps(monkeypatch, crash_at: int | None) -> list[str]:
    """Wrap the registry's file operations; raise Crash at operation ``crash_at``."""
    steps: list[str] = []
    for name in ("_write_file", "_fsync_dir"):
        original = getattr(registry_module, name)

        def wrapped(*args, _original=original, _name=name):
            if crash_at is not None and len(steps) == crash_at:
                raise Crash
            steps.append(_name)
            return _original(*args)

        monkeypatch.setattr(registry_module, name, wrapped)
    original_replace = os.replace

    def replace(*args):
        if crash_at is not None and len(steps) == crash_at:
            raise Crash
        steps.append("replace")
        return original_replace(*args)

    monkeypatch.setattr(registry_module.os, "replace", replace)
    return steps


def test_a_crash_at_any_write_step_leaves_a_loadable_registry_and_a_rerun_gives_the_same_version(
        initialised, tmp_path, monkeypatch):
    source, batch, reference = initialised
    with monkeypatch.context() as patch:
        steps = _count_steps(patch, None)
        update_once(_copy(source, tmp_path / "count"), batch)
    assert steps.count("_write_file") == 6 and steps.count("replace") == 2   # 5 files + LATEST
    commit = [i for i, s in enumerate(steps) if s == "replace"][-1]
    for crash_at in range(len(steps)):
        reg = _copy(source, tmp_path / f"crash-{crash_at}")
        with monkeypatch.context() as patch:
            _count_steps(patch, crash_at)
            with pytest.raises(Crash):
                update_once(reg, batch)
        committed = crash_at > commit
        assert reg.latest_version() == (2 if committed else 1)
        reg.load()                                   # the latest committed version loads
        if not committed:
            update_once(reg, batch)                  # the rerun discards the leftovers
        _assert_same_version(reg.load(2), reference)
        assert not [p for p in reg.root.iterdir() if p.name.startswith((".tmp", ".LATEST"))]


KILL_SCRIPT = """
import sys
from smlrec.production import update_once
print("ready", flush=True)
update_once(sys.argv[1], sys.argv[2])
print("done", flush=True)
"""


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_during_update_then_rerun_gives_the_uninterrupted_result(initialised, tmp_path, seed):
    source, batch, reference = initialised
    reg = _copy(source, tmp_path / "reg")
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    process = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(reg.root), str(batch)],
                               stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout.readline().strip() == "ready"
    delay = np.random.default_rng(seed).uniform(0.0, 0.6)
    try:
        process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    latest = reg.latest_version()
    assert latest in (1, 2)
    reg.load()                                        # whatever happened, the latest version loads
    if latest == 1:
        update_once(reg, batch)                       # the lock died with the process
    _assert_same_version(reg.load(2), reference)


def test_corrupt_or_truncated_files_name_themselves_and_older_versions_still_load(initialised, tmp_path):
    source, batch, _ = initialised
    reg = _copy(source, tmp_path / "reg")
    update_once(reg, batch)
    folder = reg.root / "v000002"
    weights = folder / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])              # truncated
    with pytest.raises(CheckpointError, match=r"v000002/weights.safetensors: corrupt or truncated"):
        reg.load()
    assert reg.load(1).version == 1
    good, skipped = reg.load_latest_good()
    assert good.version == 1 and "weights.safetensors" in skipped[0]
    with pytest.raises(CheckpointError, match="weights.safetensors"):
        update_once(reg, batch, force=True)                       # never builds on a broken version
    (folder / "manifest.json").write_text('{"version": 2, "files": {')
    with pytest.raises(CheckpointError, match=r"v000002/manifest.json: corrupt or truncated JSON"):
        reg.load()
    served = reg.root / "v000001" / "served.safetensors"
    served.write_bytes(served.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match=r"v000001/served.safetensors: corrupt or truncated"):
        registry_module.ModelRegistry(reg.root).load_served(reg.load(1))
    vocab = reg.root / "v000001" / "vocab.json"
    vocab.write_bytes(vocab.read_bytes().replace(b"1000", b"1001", 1))   # same size, other content
    with pytest.raises(CheckpointError, match=r"v000001/vocab.json: corrupt"):
        reg.load(1)
    (reg.root / "LATEST").write_text("garbage")
    with pytest.raises(CheckpointError, match="LATEST: corrupt"):
        reg.load()


def test_a_second_update_is_refused_while_one_holds_the_lock(initialised, tmp_path):
    source, batch, _ = initialised
    reg = _copy(source, tmp_path / "reg")
    with reg.lock():
        with pytest.raises(CheckpointError, match=f"another update holds the registry lock \\(pid {os.getpid()}"):
            update_once(reg, batch)
    assert reg.latest_version() == 1
    assert update_once(reg, batch).version == 2                    # free again afterwards


def test_no_pickle_or_torch_load_in_the_registry():
    text = "".join(Path(SRC, "smlrec", "production", name).read_text()
                   for name in ("registry.py", "state.py", "update.py", "recommender.py"))
    assert not re.search(r"import pickle|pickle\.load|torch\.load\(", text)
