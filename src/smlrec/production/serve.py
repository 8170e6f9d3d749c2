"""HTTP serving of a registry (FastAPI): top-K per user or per batch of users, version, health, metrics.

A background thread polls ``LATEST`` every ``poll_seconds``. When it names another version (a new
one, or an older one after ``smlrec rollback``), that version is loaded completely off the request
path, including everything a query needs precomputed (see recommender.py), and then swapped in
with one reference assignment, so every request is answered by exactly one whole version and none
is dropped. A version that fails to load (corrupt file) is logged and skipped; the previous one
keeps serving. Every swap and every fallback to an older version is logged on
``smlrec.production`` (``smlrec serve`` prints them).

Endpoints::

    GET  /recommend?user=ID&k=20&include_seen=false&strict=false
         -> {"user", "version", "fallback", "items": [{"item", "score"}, ...]}
    POST /recommend/batch  {"users": [ID, ...], "k": 20, "include_seen": false, "strict": false}
         -> {"version", "results": [{"user", "fallback", "items": [...]}, ...]}   (one product)
    GET  /version -> {"version", "strategy", "created", "periods", "n_users", "n_items"}
    GET  /health  -> {"status": "ok", "version", "failed"} (failed: a version that did not load, or null)
    GET  /metrics -> Prometheus text: requests and latency per endpoint, served version, swaps

The handlers are ``async``: a query is a few hundred microseconds of arithmetic, cheaper on the
event loop than a hop to a worker thread and back; answers are encoded with ``json`` directly
(no response model to validate).
"""

from __future__ import annotations

import bisect
import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError, DataError
from .events import emit
from .recommender import Answer, Recommender
from .registry import ModelRegistry

MAX_BATCH = 10_000
MAX_K = 10_000
# Latency buckets (seconds) of the Prometheus histogram: 0.5 ms .. 2.5 s.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ModelHolder:
    """The served version, replaced atomically when another one has loaded."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        checkpoint, skipped = registry.load_latest_good()
        self.current: Recommender = Recommender(checkpoint)
        self.failed: int | None = None
        self.swaps = 0
        self.load_failures = len(skipped)
        if skipped:
            with contextlib.suppress(CheckpointError):
                self.failed = registry.latest_version()    # do not retry it on every poll
            emit("fallback", f"serving version {checkpoint.version}, older than LATEST: "
                 + "; ".join(skipped), level="warning", version=checkpoint.version, errors=skipped)
        else:
            emit("serving", f"serving version {checkpoint.version}", version=checkpoint.version)

    def refresh(self) -> bool:
        """Load the version LATEST names if it is not the served one; True when it was swapped in."""
        try:
            latest = self.registry.latest_version()
        except CheckpointError as err:
            emit("latest_unreadable", f"cannot read LATEST; still serving version {self.current.version}: {err}",
                 level="warning", version=self.current.version, error=str(err))
            return False
        if latest is None or latest == self.current.version or latest == self.failed:
            return False
        began = time.perf_counter()
        try:
            loaded = Recommender.from_registry(self.registry, latest)
        except CheckpointError as err:
            emit("fallback", f"version {latest} does not load; still serving version {self.current.version}: "
                 f"{err}", level="error", version=self.current.version, failed=latest, error=str(err))
            self.failed = latest
            self.load_failures += 1
            return False
        previous, self.current = self.current.version, loaded   # one reference assignment
        self.failed = None
        self.swaps += 1
        direction = "" if latest > previous else " (LATEST moved back: a rollback)"
        emit("swap", f"now serving version {latest} (was {previous}){direction}", level="warning"
             if direction else "info", version=latest, previous=previous,
             load_seconds=round(time.perf_counter() - began, 3))
        return True


class Metrics:
    """Request counts and a latency histogram per endpoint, in Prometheus text format.

    Latency is the handler's own time (lookup, scoring, encoding), not the HTTP stack's.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.buckets: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}
        self.fallbacks = 0

    def observe(self, endpoint: str, status: int, seconds: float, fallbacks: int = 0) -> None:
        with self.lock:
            self.requests[(endpoint, status)] = self.requests.get((endpoint, status), 0) + 1
            counts = self.buckets.setdefault(endpoint, [0] * (len(BUCKETS) + 1))
            counts[bisect.bisect_left(BUCKETS, seconds)] += 1
            self.sums[endpoint] = self.sums.get(endpoint, 0.0) + seconds
            self.fallbacks += fallbacks

    def render(self, holder: ModelHolder) -> str:
        lines = ["# HELP smlrec_requests_total Requests answered, by endpoint and HTTP status.",
                 "# TYPE smlrec_requests_total counter"]
        with self.lock:
            for (endpoint, status), count in sorted(self.requests.items()):
                lines.append(f'smlrec_requests_total{{endpoint="{endpoint}",status="{status}"}} {count}')
            lines += ["# HELP smlrec_request_seconds Time spent in the handler, by endpoint.",
                      "# TYPE smlrec_request_seconds histogram"]
            for endpoint, counts in sorted(self.buckets.items()):
                total = 0
                for bound, count in zip((*BUCKETS, float("inf")), counts):
                    total += count
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    lines.append(f'smlrec_request_seconds_bucket{{endpoint="{endpoint}",le="{le}"}} {total}')
                lines.append(f'smlrec_request_seconds_sum{{endpoint="{endpoint}"}} {self.sums[endpoint]:.6f}')
                lines.append(f'smlrec_request_seconds_count{{endpoint="{endpoint}"}} {total}')
            fallbacks = self.fallbacks
        lines += ["# HELP smlrec_cold_fallbacks_total Users answered with the cold-start rule.",
                  "# TYPE smlrec_cold_fallbacks_total counter", f"smlrec_cold_fallbacks_total {fallbacks}",
                  "# HELP smlrec_served_version The registry version being served.",
                  "# TYPE smlrec_served_version gauge", f"smlrec_served_version {holder.current.version}",
                  "# HELP smlrec_swaps_total Versions swapped in since start.",
                  "# TYPE smlrec_swaps_total counter", f"smlrec_swaps_total {holder.swaps}",
                  "# HELP smlrec_load_failures_total Versions that did not load (older ones kept serving).",
                  "# TYPE smlrec_load_failures_total counter", f"smlrec_load_failures_total {holder.load_failures}"]
        return "\n".join(lines) + "\n"


def _items(answer: Answer) -> list[dict[str, Any]]:
    return [{"item": item, "score": score} for item, score in zip(answer.items, answer.scores)]


def create_app(registry: str | Path | ModelRegistry, poll_seconds: float = 2.0):
    """The FastAPI application serving ``registry``."""
    from fastapi import Body, FastAPI, HTTPException, Query
    from fastapi.responses import PlainTextResponse, Response

    registry = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry)
    holder = ModelHolder(registry)
    metrics = Metrics()
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(poll_seconds):
            try:
                holder.refresh()
            except Exception as err:  # never let the poller die: keep serving the current version
                emit("poll_failed", f"polling the registry failed: {err!r}", level="error", error=repr(err))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        thread = threading.Thread(target=poll, name="smlrec-registry-poll", daemon=True)
        thread.start()
        yield
        stop.set()
        thread.join(timeout=poll_seconds + 5)

    app = FastAPI(title="smlrec", lifespan=lifespan)
    app.state.holder = holder
    app.state.metrics = metrics

    def answer(endpoint: str, began: float, build) -> Response:
        model = holder.current      # one version for the whole request
        try:
            payload, fallbacks = build(model)
        except (DataError, ConfigError) as err:
            metrics.observe(endpoint, 404, time.perf_counter() - began)
            raise HTTPException(status_code=404, detail=str(err)) from None
        body = json.dumps(payload).encode()
        metrics.observe(endpoint, 200, time.perf_counter() - began, fallbacks)
        return Response(content=body, media_type="application/json")

    @app.get("/recommend")
    async def recommend(user: str, k: int = Query(20, ge=1, le=MAX_K), include_seen: bool = False,
                        strict: bool = False) -> Response:
        began = time.perf_counter()

        def build(model: Recommender):
            top = model.top_k([user], k=k, exclude_seen=not include_seen, strict=strict)[0]
            return ({"user": user, "version": model.version, "fallback": top.fallback, "items": _items(top)},
                    int(top.fallback))

        return answer("recommend", began, build)

    @app.post("/recommend/batch")
    async def recommend_batch(users: list[str | int] = Body(..., max_length=MAX_BATCH),
                              k: int = Body(20, ge=1, le=MAX_K), include_seen: bool = Body(False),
                              strict: bool = Body(False)) -> Response:
        began = time.perf_counter()

        def build(model: Recommender):
            answers = model.top_k(users, k=k, exclude_seen=not include_seen, strict=strict)
            results = [{"user": a.user, "fallback": a.fallback, "items": _items(a)} for a in answers]
            return {"version": model.version, "results": results}, sum(a.fallback for a in answers)

        return answer("recommend_batch", began, build)

    @app.get("/version")
    async def version() -> dict:
        model = holder.current
        manifest = model.checkpoint.manifest
        return {"version": model.version, "strategy": manifest.get("strategy"),
                "created": manifest.get("created"), "periods": manifest.get("periods"),
                "n_users": manifest.get("n_users"), "n_items": manifest.get("n_items")}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "version": holder.current.version, "failed": holder.failed}

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(holder), media_type="text/plain; version=0.0.4")

    return app
