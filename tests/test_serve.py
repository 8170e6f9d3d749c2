import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import uvicorn

from _production_data import synthetic_log, tiny_settings, write_periods
from smlrec.production import init_registry, update_once
from smlrec.production.registry import ModelRegistry
from smlrec.production.serve import ModelHolder, create_app

HISTORY = 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(condition, timeout: float = 60.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not met in time")


@pytest.fixture()
def server(tmp_path):
    history, batches = write_periods(synthetic_log(6), tmp_path / "data", HISTORY)
    init_registry(history, tmp_path / "reg", "fine-tune", tiny_settings("fine-tune", HISTORY))
    port = _free_port()
    config = uvicorn.Config(create_app(tmp_path / "reg", poll_seconds=0.1), host="127.0.0.1", port=port,
                            log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"

    def healthy():
        try:
            return httpx.get(f"{base}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    _wait_for(healthy)
    yield base, tmp_path / "reg", batches
    uv.should_exit = True
    thread.join(timeout=10)


def test_server_answers_and_picks_up_a_new_version_without_dropping_requests(server):
    base, registry, batches = server
    assert httpx.get(f"{base}/health").json() == {"status": "ok", "version": 1, "latest": 1, "failed": None,
                                                  "problem": None}
    first = httpx.get(f"{base}/recommend", params={"user": "1000", "k": 5}).json()
    assert first["version"] == 1 and first["fallback"] is False and len(first["items"]) == 5
    scores = [entry["score"] for entry in first["items"]]
    assert scores == sorted(scores, reverse=True)
    stranger = httpx.get(f"{base}/recommend", params={"user": "stranger", "k": 3}).json()
    assert stranger["fallback"] is True and len(stranger["items"]) == 3
    assert httpx.get(f"{base}/recommend", params={"user": "stranger", "strict": "true"}).status_code == 404
    assert httpx.get(f"{base}/recommend", params={"user": "1000", "k": 0}).status_code == 422

    answers, stop = [], threading.Event()

    def hammer():  # requests keep flowing while the new version lands
        with httpx.Client(base_url=base, timeout=10) as client:
            while not stop.is_set():
                response = client.get("/recommend", params={"user": "1000", "k": 5})
                answers.append((response.status_code, response.json().get("version")))

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        update_once(registry, batches[0])
        _wait_for(lambda: httpx.get(f"{base}/version").json()["version"] == 2)
        _wait_for(lambda: any(version == 2 for _, version in answers))
    finally:
        stop.set()
        worker.join(timeout=30)
    assert answers and all(status == 200 for status, _ in answers)
    versions = [version for _, version in answers]
    assert set(versions) <= {1, 2} and versions == sorted(versions)   # 1s, then 2s, never mixed back
    info = httpx.get(f"{base}/version").json()
    assert info["strategy"] == "fine-tune" and info["periods"]["last"] == 4


def test_a_corrupt_new_version_is_skipped_and_the_old_one_keeps_serving(tmp_path):
    history, batches = write_periods(synthetic_log(6), tmp_path / "data", HISTORY)
    init_registry(history, tmp_path / "reg", "fine-tune", tiny_settings("fine-tune", HISTORY))
    registry = ModelRegistry(tmp_path / "reg")
    holder = ModelHolder(registry)
    assert holder.current.version == 1 and holder.refresh() is False       # nothing new
    update_once(registry, batches[0])
    weights = registry.root / "v000002" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    assert holder.refresh() is False and holder.current.version == 1        # still serving 1
    assert holder.failed == 2
    assert holder.current.recommend(["1000"], k=2)["version"].eq(1).all()
    weights.unlink()
    shutil.rmtree(registry.root / "v000002")
    (registry.root / "LATEST").write_text("v000001\n")
    update_once(registry, batches[0])                                       # a good version 2
    holder.failed = None
    assert holder.refresh() is True and holder.current.version == 2
    assert ModelHolder(registry).current.version == 2


def test_ids_with_spaces_the_batch_endpoint_and_metrics(server):
    base, _, _ = server
    spaced = httpx.get(f"{base}/recommend?user=%201000%20&k=4").json()      # " 1000 " is user 1000
    plain = httpx.get(f"{base}/recommend", params={"user": "1000", "k": 4}).json()
    assert spaced["fallback"] is False and spaced["items"] == plain["items"]
    batch = httpx.post(f"{base}/recommend/batch", json={"users": ["1000", 1000, "nobody"], "k": 4}).json()
    assert batch["version"] == 1 and [r["user"] for r in batch["results"]] == ["1000", 1000, "nobody"]
    assert batch["results"][0]["items"] == batch["results"][1]["items"]     # same request, same rows
    # One user alone and two users in one product may run different BLAS kernels (a matrix-vector
    # and a matrix-matrix product): the scores agree to float32 rounding, not bit for bit.
    assert_same_answer(batch["results"][0]["items"], plain["items"])
    assert [r["fallback"] for r in batch["results"]] == [False, False, True]
    assert httpx.post(f"{base}/recommend/batch", json={"users": ["nobody"], "strict": True}).status_code == 404
    assert httpx.post(f"{base}/recommend/batch", json={"users": ["1000"], "k": 0}).status_code == 422
    text = httpx.get(f"{base}/metrics").text
    assert 'smlrec_requests_total{endpoint="recommend",status="200"} 2' in text
    assert 'smlrec_requests_total{endpoint="recommend_batch",status="200"} 1' in text
    assert 'smlrec_requests_total{endpoint="recommend_batch",status="404"} 1' in text
    assert 'smlrec_request_seconds_bucket{endpoint="recommend",le="+Inf"} 2' in text
    assert "smlrec_served_version 1" in text and "smlrec_cold_fallbacks_total 1" in text
    assert "# TYPE smlrec_request_seconds histogram" in text


def test_the_fast_path_scores_as_the_strategy_does(tmp_path):
    """One product over the served tables == the strategy's own score(), for every strategy that
    serves tables; the top items are the same either way."""
    from test_production import PRODUCTION_STRATEGIES
    from smlrec.production import Recommender

    history, batches = write_periods(synthetic_log(6), tmp_path / "data", HISTORY)
    for strategy in PRODUCTION_STRATEGIES:
        init_registry(history, tmp_path / strategy, strategy, tiny_settings(strategy, HISTORY))
        served = Recommender.from_registry(tmp_path / strategy)
        users = np.arange(served.checkpoint.n_users)
        assert torch.allclose(served.scores(users), served.generic_scores(users), atol=1e-5, rtol=0), strategy
        assert served.fast == (strategy in ("full-retrain", "fine-tune", "spmf", "sml", "no-update", "sml-h",
                                            "fine-tune-h"))
        if served.fast:
            fast = served.recommend(served.checkpoint.user_ids[:5], k=10)
            served.user_table = None                                  # force the generic path
            assert served.recommend(served.checkpoint.user_ids[:5], k=10)["item"].tolist() == fast["item"].tolist()


SERVE_ENV = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent / "src"))


def test_the_server_prints_every_swap_and_fallback_by_default(tmp_path):
    """`smlrec serve` as an operator starts it: swaps and fallbacks appear on stderr unasked."""
    history, batches = write_periods(synthetic_log(6), tmp_path / "data", HISTORY)
    init_registry(history, tmp_path / "reg", "fine-tune", tiny_settings("fine-tune", HISTORY))
    registry = ModelRegistry(tmp_path / "reg")
    update_once(registry, batches[0])
    weights = registry.root / "v000002" / "weights.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:50])                              # LATEST is corrupt at start-up
    port = _free_port()
    log = open(tmp_path / "stderr.txt", "w+")
    process = subprocess.Popen([sys.executable, "-m", "smlrec", "serve", "--registry", str(registry.root),
                                "--port", str(port), "--poll", "0.1"], stderr=log, stdout=subprocess.DEVNULL,
                               env=SERVE_ENV)
    try:
        base = f"http://127.0.0.1:{port}"

        def printed(text):
            return text in (tmp_path / "stderr.txt").read_text()

        _wait_for(lambda: printed("Uvicorn running"))
        assert printed("serving version 1, older than LATEST") and printed("v000002/weights.safetensors")
        assert httpx.get(f"{base}/health").json()["version"] == 1
        weights.write_bytes(good)       # repaired so that an update can build on it; not re-served itself
        from smlrec.cli import main

        assert main(["update", "--registry", str(registry.root), "--data", str(batches[1])]) == 0   # version 3
        _wait_for(lambda: printed("now serving version 3 (was 1)"))
        assert main(["rollback", "--registry", str(registry.root), "--to", "2"]) == 0
        _wait_for(lambda: printed("now serving version 2 (was 3) (LATEST moved back"))
        assert "smlrec_swaps_total 2" in httpx.get(f"{base}/metrics").text
        assert not printed("now serving version 2 (was 1)")
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def assert_same_answer(got: list[dict], expected: list[dict], rtol: float = 1e-5) -> None:
    """The same items in the same order with scores equal within ``rtol``."""
    assert [entry["item"] for entry in got] == [entry["item"] for entry in expected]
    np.testing.assert_allclose([entry["score"] for entry in got], [entry["score"] for entry in expected],
                               rtol=rtol)
