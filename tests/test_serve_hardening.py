"""Serving hardening (issue 25): work off the event loop, request limits, /openapi.json and an offline
/docs, /health after rollbacks and with a garbage LATEST, --poll, --host, and the torch-free
`smlrec recommend` path against the torch one."""

import json
import shutil
import threading

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient

from _production_data import synthetic_log, tiny_settings, write_periods
from smlrec.cli import main
from smlrec.errors import ConfigError
from smlrec.production import Recommender, init_registry, update_once
from smlrec.production.registry import ModelRegistry
from smlrec.production.serve import Limits, ModelHolder, create_app, host_warning
from smlrec.production.served import (BLOCK, ServedTables, block_scores, normalise_query, open_served,
                                      select_top)
from test_serve import _free_port, _wait_for

HISTORY = 4


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A fine-tune registry with versions 1..3 and its data."""
    root = tmp_path_factory.mktemp("serve-hardening")
    history, batches = write_periods(synthetic_log(6), root / "data", HISTORY)
    init_registry(history, root / "reg", "fine-tune", tiny_settings("fine-tune", HISTORY))
    for batch in batches:
        update_once(root / "reg", batch)
    return root / "reg"


@pytest.fixture()
def cli_logging():
    """`smlrec serve` installs a stderr handler on capsys's stream: take it away afterwards, or a
    later test logs into a closed file."""
    import logging

    from smlrec.cli.common import _HANDLER_FLAG

    yield
    logger = logging.getLogger("smlrec")
    for handler in [h for h in logger.handlers if getattr(h, _HANDLER_FLAG, False)]:
        logger.removeHandler(handler)


@pytest.fixture()
def reg(built, tmp_path):
    shutil.copytree(built, tmp_path / "reg")
    return tmp_path / "reg"


def test_openapi_answers_and_docs_work_offline(reg):
    client = TestClient(create_app(reg))
    spec = client.get("/openapi.json")
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    assert {"/recommend", "/recommend/batch", "/health", "/version", "/metrics"} <= set(paths)
    assert [p["name"] for p in paths["/recommend"]["get"]["parameters"]] == ["user", "k", "include_seen", "strict",
                                                                          "recent"]
    body = paths["/recommend/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"users", "k", "include_seen", "strict", "recent"} <= set(body["properties"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    page = docs.text
    assert "/recommend/batch" in page and "include_seen" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page   # nothing to fetch


def test_request_limits_answer_413_and_422_and_do_not_echo_the_input(reg):
    limits = Limits(max_k=50, max_users=30, max_results=100, max_body=2_000)
    client = TestClient(create_app(reg, limits=limits))
    assert client.get("/recommend", params={"user": "1000", "k": 50}).status_code == 200
    over_k = client.get("/recommend", params={"user": "1000", "k": 51})
    assert over_k.status_code == 422 and "limit of 50 items per user" in over_k.json()["detail"]
    product = client.post("/recommend/batch", json={"users": ["1000"] * 3, "k": 40})
    assert product.status_code == 422 and "3 users x k = 40 asks for 120 items" in product.json()["detail"]
    users = client.post("/recommend/batch", json={"users": ["1000"] * 31, "k": 1})
    assert users.status_code == 422 and "31 users in one batch" in users.json()["detail"]
    assert client.post("/recommend/batch", json={"users": ["1000"] * 30, "k": 3}).status_code == 200
    big = client.post("/recommend/batch", content=json.dumps({"users": ["x" * 50] * 100}),
                      headers={"content-type": "application/json"})
    assert big.status_code == 413 and "limit of 2000 bytes" in big.json()["detail"]

    def chunks():                        # no Content-Length: refused while reading
        for _ in range(10):
            yield b" " * 500

    streamed = client.post("/recommend/batch", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    # a bad body is a 422 that names the problem without sending the input back
    roomy = TestClient(create_app(reg, limits=Limits(max_body=1_000_000)))
    bad = roomy.post("/recommend/batch", json={"users": [{"nested": "y" * 100_000}], "k": 2})
    assert bad.status_code == 422 and len(bad.content) < 2_000
    assert bad.json()["detail"][0]["loc"][:2] == ["users", 0]
    huge_user = roomy.get("/recommend", params={"user": "1000", "k": "z" * 50_000})
    assert huge_user.status_code == 422 and len(huge_user.content) < 2_000
    assert roomy.post("/recommend/batch", json={"users": ["1000"], "k": 0}).status_code == 422
    with pytest.raises(ConfigError, match="max_k must be a whole number >= 1"):
        Limits(max_k=0)


def test_health_is_answered_while_a_maximal_request_is_in_flight(reg):
    """The batch is held inside its scoring (the test decides when it ends): /health and a small
    query must still be answered, so the scoring does not run on the event loop."""
    limits = Limits()
    app = create_app(reg, poll_seconds=0.5, limits=limits)
    holder = app.state.holder
    model = holder.current
    entered, release = threading.Event(), threading.Event()
    original = model.top_k

    def held(user_ids, *args, **kwargs):
        if len(user_ids) > 1:
            entered.set()
            assert release.wait(60)
        return original(user_ids, *args, **kwargs)

    model.top_k = held
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    _wait_for(lambda: server.started)
    k = limits.max_results // limits.max_users
    users = [str(1000 + i % 40) for i in range(limits.max_users)]
    result = {}

    def maximal():
        result["response"] = httpx.post(f"{base}/recommend/batch", json={"users": users, "k": k,
                                                                          "include_seen": True}, timeout=120)

    worker = threading.Thread(target=maximal)
    worker.start()
    try:
        assert entered.wait(60)
        health = httpx.get(f"{base}/health", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        small = httpx.get(f"{base}/recommend", params={"user": "1000", "k": 5}, timeout=10)
        assert small.status_code == 200 and len(small.json()["items"]) == 5
        assert "response" not in result                   # the maximal request is still running
    finally:
        release.set()
        worker.join(timeout=120)
        server.should_exit = True
        thread.join(timeout=10)
    response = result["response"]
    assert response.status_code == 200 and len(response.json()["results"]) == limits.max_users


def test_health_after_a_rollback_past_a_corrupt_version_and_with_a_garbage_latest(reg):
    registry = ModelRegistry(reg)
    weights = reg / "v000003" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])             # LATEST (3) does not load
    client = TestClient(create_app(reg))
    holder = client.app.state.holder
    health = client.get("/health").json()
    assert health["status"] == "degraded" and health["version"] == 2 and health["failed"] == 3
    assert "version 3 (LATEST) does not load" in health["problem"]
    with registry.lock():
        registry.rollback(2)                                    # back to the served version
    assert holder.refresh() is False
    assert client.get("/health").json() == {"status": "ok", "version": 2, "latest": 2, "failed": None,
                                            "problem": None}
    (reg / "LATEST").write_text("garbage\n")
    assert holder.refresh() is False
    health = client.get("/health").json()
    assert health["status"] == "degraded" and health["version"] == 2 and health["latest"] is None
    assert "LATEST: corrupt" in health["problem"]
    (reg / "LATEST").write_text("v000001\n")                    # a rollback past it: served again
    assert holder.refresh() is True
    assert client.get("/health").json()["status"] == "ok"


def test_a_version_corrupt_at_start_and_rolled_back_past_is_forgotten(reg):
    weights = reg / "v000003" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    holder = ModelHolder(ModelRegistry(reg))
    assert (holder.current.version, holder.failed) == (2, 3)
    (reg / "LATEST").write_text("v000001\n")
    assert holder.refresh() is True and holder.health()["failed"] is None


def test_poll_must_be_positive(reg, capsys, cli_logging):
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="poll_seconds must be > 0"):
            create_app(reg, poll_seconds=bad)
    for bad in ("0", "-1", "nan", "soon"):
        with pytest.raises(SystemExit) as exit_:
            main(["serve", "--registry", str(reg), "--poll", bad])
        assert exit_.value.code == 2 and "--poll" in capsys.readouterr().err


def test_serving_on_a_non_loopback_address_warns(reg, capsys, monkeypatch, cli_logging):
    assert host_warning("127.0.0.1") is None and host_warning("localhost") is None
    assert host_warning("::1") is None and host_warning("127.0.0.2") is None
    assert "reachable from other machines" in host_warning("0.0.0.0")
    assert "reachable from other machines" in host_warning("192.168.1.5")
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.append(kwargs))
    assert main(["serve", "--registry", str(reg), "--host", "0.0.0.0", "--port", "8123"]) == 0
    assert "warning: serving on 0.0.0.0: reachable from other machines" in capsys.readouterr().err
    assert started[0]["host"] == "0.0.0.0"
    assert main(["serve", "--registry", str(reg)]) == 0
    assert "warning" not in capsys.readouterr().err


# -- scoring: fixed-shape blocks, the top-k selection and its twin, the torch-free path --------------

def test_select_top_agrees_with_a_plain_sort_ties_included():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, size=(7, 40)).astype(np.float32)     # many ties
    scores[2, :] = -np.inf
    scores[3, 5:] = -np.inf
    scores[4, [7, 9]] = np.nan                                       # ranks last, as -inf
    plain = np.where(np.isnan(scores), -np.inf, scores)
    for k in (1, 3, 10, 40, 60):
        items, values = select_top(scores, k)
        for row in range(len(scores)):
            expected = sorted(range(40), key=lambda i: (-plain[row, i], i))[:k]
            assert items[row].tolist() == expected
            assert values[row].tolist() == plain[row, expected].tolist()


@pytest.mark.numerics
def test_a_users_scores_do_not_depend_on_who_shares_the_request():
    """Up to a stated tolerance (the BLAS kernel is the CPU's choice); the blocks have one shape."""
    rng = np.random.default_rng(0)
    users, items = rng.standard_normal((300, 16), dtype=np.float32), rng.standard_normal((16, 500), dtype=np.float32)
    alone = block_scores(users, items, np.array([7]))
    among = block_scores(users, items, np.arange(300))[7:8]
    assert alone.shape == (1, 500) and np.allclose(alone, among, rtol=0, atol=1e-5)
    assert np.allclose(among, users[7:8].astype(np.float64) @ items, rtol=0, atol=1e-4)
    assert BLOCK > 1                     # never a matrix-vector product for a lone user


@pytest.mark.numerics
def test_the_precomputed_table_gives_what_the_query_computes(reg):
    served = Recommender.from_registry(reg)
    users = list(served.checkpoint.user_ids[:25]) + ["stranger"]
    computed = served.top_k(users, k=10)
    served.prepare()
    assert served.selector.cache is not None
    cached = served.top_k(users, k=10)
    for a, b in zip(computed, cached):
        assert a.items == b.items and np.allclose(a.scores, b.scores, rtol=0, atol=1e-6)
        assert a.fallback == b.fallback


def test_number_ids_are_parsed_exactly():
    assert normalise_query("9007199254740993", "number") == 9007199254740993
    assert normalise_query(" 42 ", "number") == 42 and normalise_query("42.000", "number") == 42
    assert normalise_query("1e3", "number") == 1000 and normalise_query(1000, "number") == 1000
    assert normalise_query("42.5", "number") is None and normalise_query("abc", "number") is None
    assert normalise_query(" u1 ", "text") == "u1"


@pytest.mark.numerics
@pytest.mark.parametrize("strategy", ["fine-tune", "sml"])
def test_the_torch_free_path_gives_the_torch_paths_top_k(tmp_path, strategy):
    history, _ = write_periods(synthetic_log(6), tmp_path / "data", HISTORY)
    init_registry(history, tmp_path / "reg", strategy, tiny_settings(strategy, HISTORY))
    light = open_served(tmp_path / "reg")
    assert isinstance(light, ServedTables)
    heavy = Recommender.from_registry(tmp_path / "reg")
    heavy.user_table = None                              # the strategy's own score(), in torch
    users = list(heavy.checkpoint.user_ids) + ["nobody"]
    for exclude_seen in (True, False):
        for a, b in zip(light.top_k(users, k=8, exclude_seen=exclude_seen),
                        heavy.top_k(users, k=8, exclude_seen=exclude_seen)):
            assert a.items == b.items and a.fallback == b.fallback
            assert np.allclose(a.scores, b.scores, rtol=0, atol=1e-5)


def test_the_torch_free_reader_refuses_what_the_registry_refuses(reg):
    served = reg / "v000003" / "served.safetensors"
    served.write_bytes(served.read_bytes()[:-10])
    with pytest.raises(Exception, match="served.safetensors: corrupt or truncated"):
        open_served(reg)
    assert open_served(reg, 2).version == 2
    with pytest.raises(Exception, match="version 9 is missing"):
        open_served(reg, 9)
    shutil.copytree(reg / "v000002", reg / "v000004")        # a folder LATEST never named
    with pytest.raises(Exception, match="never committed"):
        open_served(reg, 4)
    (reg / "LATEST").write_text("junk")
    with pytest.raises(Exception, match="LATEST: corrupt"):
        open_served(reg)


def test_precomputed_json_answers_equal_the_computed_ones(reg):
    """The server's pre-encoded answers (a slice of bytes per user) against top_k encoded afresh:
    the same items and the same scores, for known users, users with fewer unseen items than k,
    unknown users, and in the batch endpoint."""
    client = TestClient(create_app(reg))
    model = client.app.state.holder.current
    assert model.encoded is not None
    width = model.encoded.width
    users = [str(u) for u in model.checkpoint.user_ids[:12]] + ["nobody"]
    for k in (1, 7, width):
        expected = model.top_k(users, k=k)
        for user, answer in zip(users, expected):
            got = client.get("/recommend", params={"user": user, "k": k}).json()
            assert got["fallback"] == answer.fallback and got["version"] == model.version
            assert got["items"] == [{"item": i, "score": s} for i, s in zip(answer.items, answer.scores)]
        batch = client.post("/recommend/batch", json={"users": users, "k": k}).json()
        assert [r["items"] for r in batch["results"]] == [
            [{"item": i, "score": s} for i, s in zip(a.items, a.scores)] for a in expected]
    assert len(model.top_k([users[0]], k=width)[0].items) < width          # seen items left out
