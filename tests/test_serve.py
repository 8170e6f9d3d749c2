import shutil
import socket
import threading
import time

import httpx
import pytest
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
    assert httpx.get(f"{base}/health").json() == {"status": "ok", "version": 1}
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
