"""HTTP serving of a registry (FastAPI): top-K per user or per batch of users, version, health, metrics.

A background thread polls ``LATEST`` every ``poll_seconds``. When it names another version (a new
one, or an older one after ``smlrec rollback``), that version is loaded completely off the request
path, including everything a query needs precomputed (see recommender.py and served.py: the top
items of every known user), and then swapped in with one reference assignment, so every request
is answered by exactly one whole version and none is dropped. A version that fails to load
(corrupt file) is logged and skipped; the previous one keeps serving. Every swap and every
fallback to an older version is logged on ``smlrec.production`` (``smlrec serve`` prints them).

Endpoints::

    GET  /recommend?user=ID&k=20&include_seen=false&strict=false[&recent=ITEM&recent=ITEM...]
         -> {"user", "version", "fallback", ["recent_used",] "items": [{"item", "score"}, ...]}
    POST /recommend/batch  {"users": [ID, ...], "k": 20, "include_seen": false, "strict": false,
                            "recent": [[ITEM, ...] | null, ...]}     (recent: optional, one per user)
         -> {"version", "results": [{"user", "fallback", ["recent_used",] "items": [...]}, ...]}
    GET  /version -> {"version", "strategy", "created", "periods", "n_users", "n_items"}
    GET  /health  -> {"status": "ok" | "degraded", "version", "latest", "failed", "problem"}
    GET  /metrics -> Prometheus text: requests and latency per endpoint, served version, swaps
    GET  /openapi.json, GET /docs (a self-contained page: no CDN, works offline)

Where the work runs: an answer that is a lookup in the precomputed table (one user, ``k`` up to
served.CACHE_K, seen items excluded: the common query) is encoded on the event loop, which costs
less than a hop to a worker thread; every other request (batches, large ``k``, ``include_seen``,
a version too large to precompute) is parsed, scored and encoded in a worker thread, so ``/health``
and small queries keep being answered while it runs.

Recent items (``recent``: a user's items since the version's data, oldest first) are scored as
the replay scores a row after the user's earlier rows of the period (recommender.py); an answer
that carried them says ``"recent_used": true``, or ``false`` when the strategy reads no history
(its items are then only excluded). An item id the version does not know is a 422 naming it.

Limits (:class:`Limits`, ``smlrec serve --max-k/--max-users/--max-results/--max-recent/--max-body``):
a request body over ``max_body`` bytes is a 413; ``k`` over ``max_k``, more than ``max_users``
users, more than ``max_results`` (users x k) items in one answer or more than ``max_recent``
recent items for one user is a 422 naming the limit. A 422 never
echoes a long input: values are cut to ``ECHO`` characters.
"""

from __future__ import annotations

import bisect
import contextlib
import html
import ipaddress
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from ..errors import CheckpointError, ConfigError, DataError
from .events import emit
from .recommender import Answer, Recommender
from .registry import ModelRegistry
from .served import CACHE_K

# Latency buckets (seconds) of the Prometheus histogram: 0.5 ms .. 2.5 s.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
ECHO = 80      # characters of an offending input a 422 repeats


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (documented in docs/production.md, "Serving")."""

    max_k: int = 1_000               # items per user
    max_users: int = 10_000          # users per batch
    max_results: int = 200_000       # users x k per request (10,000 users at k = 20)
    max_body: int = 1_000_000        # bytes of a request body (10,000 ids of ~50 characters)
    max_recent: int = 1_000          # recent items per user (the history strategies read the last 20-100)

    def __post_init__(self) -> None:
        for name in ("max_k", "max_users", "max_results", "max_body", "max_recent"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"serving limit {name} must be a whole number >= 1, got {value!r}")


class BatchRequest(BaseModel):
    """The body of POST /recommend/batch."""

    users: list[str | int] = Field(..., description="raw user ids (text or numbers)")
    k: int = Field(20, ge=1, description="items per user")
    include_seen: bool = Field(False, description="keep items the user already has")
    strict: bool = Field(False, description="404 for an unknown user instead of the cold-start rule")
    recent: list[list[str | int] | None] | None = Field(
        None, description="per user (same order as users; null for none): raw ids of the items the user "
                          "interacted with since the served version's data, oldest first")


class RequestError(Exception):
    """A refused request: HTTP status and a message (answered as {"detail": message})."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail


def host_warning(host: str) -> str | None:
    """The warning ``smlrec serve`` prints for an address reachable from other machines."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return None
    try:
        if ipaddress.ip_address(name).is_loopback:
            return None
    except ValueError:
        pass
    return (f"serving on {host}: reachable from other machines, without authentication or TLS; "
            "put a proxy in front of it or use --host 127.0.0.1")


def _short(value: Any) -> Any:
    """An input value as a 422 may repeat it: numbers and short text as they are, the rest cut."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= ECHO else text[:ECHO] + f"... ({len(text)} characters)"


def _errors(errors: list[dict[str, Any]], limit: int = 10) -> list[dict[str, Any]]:
    """Validation errors without the full input (a 10,000-id list is not sent back)."""
    out = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", ""),
            "input": _short(e.get("input"))} for e in errors[:limit]]
    if len(errors) > limit:
        out.append({"loc": [], "msg": f"... and {len(errors) - limit} more errors", "type": "truncated"})
    return out


ENCODED_ENTRIES = 2_000_000    # precomputed JSON for at most this many (user, item) entries (~90 MB)


class Encoded:
    """The precomputed top items of every known user (served.Selector.prepare) as JSON text.

    One bytes object per user holds its items array's entries, ``{"item":..,"score":..}`` joined by
    commas, and ``offsets[row, k]`` is where the first ``k`` end, so the answer to a cached query
    is a slice: no dicts and no float formatting per request. Built when a version is swapped in;
    the bytes are exactly what encoding the same answer with orjson gives.
    """

    def __init__(self, model: Recommender) -> None:
        selector = model.selector
        items, values = selector.cache
        self.width = items.shape[1]
        item_json = [orjson.dumps(item) for item in selector.item_list]
        self.blobs, self.offsets = [], np.zeros((len(items), self.width + 1), dtype=np.int64)
        for row, (its, vals) in enumerate(zip(items.tolist(), values.astype(np.float64).tolist())):
            self.blobs.append(self._encode(its, vals, item_json, self.offsets[row]))
        cold_items, cold_values = selector.cold(self.width)
        self.cold_offsets = np.zeros(self.width + 1, dtype=np.int64)
        self.cold_blob = self._encode(cold_items.tolist(), cold_values.astype(np.float64).tolist(), item_json,
                                      self.cold_offsets)

    @staticmethod
    def _encode(items: list[int], values: list[float], item_json: list[bytes], offsets: np.ndarray) -> bytes:
        parts = [b'{"item":%s,"score":%s}' % (item_json[i], orjson.dumps(v))
                 for i, v in zip(items, values) if v != float("-inf")]
        ends = np.cumsum([len(part) + 1 for part in parts], dtype=np.int64) - 1
        offsets[1:len(parts) + 1] = ends
        offsets[len(parts) + 1:] = ends[-1] if len(parts) else 0
        return b",".join(parts)

    def items(self, row: int, k: int) -> bytes:
        """The JSON items array of table row ``row`` (-1: an unknown user) cut at ``k``."""
        if row < 0:
            return b"[" + self.cold_blob[: self.cold_offsets[k]] + b"]"
        return b"[" + self.blobs[row][: self.offsets[row, k]] + b"]"


class ModelHolder:
    """The served version, replaced atomically when another one has loaded."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        checkpoint, skipped = registry.load_latest_good()
        try:
            served = registry.load_served(checkpoint)
        except CheckpointError:       # rebuilt from the strategy's state instead (slower, same answers)
            served = None
        self.current: Recommender = self._ready(Recommender(checkpoint, served=served))
        self.failed: int | None = None
        self.latest: int | None = checkpoint.version
        self.latest_error: str | None = None     # LATEST unreadable or garbage (the last poll said so)
        self.swaps = 0
        self.load_failures = len(skipped)
        if skipped:
            try:
                self.latest = registry.latest_version()
                self.failed = self.latest          # do not retry it on every poll
            except CheckpointError as err:
                self.latest, self.latest_error = None, str(err)
            emit("fallback", f"serving version {checkpoint.version}, older than LATEST: "
                 + "; ".join(skipped), level="warning", version=checkpoint.version, errors=skipped)
        else:
            emit("serving", f"serving version {checkpoint.version}", version=checkpoint.version)

    @staticmethod
    def _ready(model: Recommender) -> Recommender:
        model.prepare()
        cache = model.selector.cache
        model.encoded = (Encoded(model) if cache is not None and cache[0].size <= ENCODED_ENTRIES
                         else None)   # type: ignore[attr-defined]
        return model

    def health(self) -> dict[str, Any]:
        """"ok" when the served version is the one LATEST names; "degraded" (still serving) when
        LATEST is unreadable or names a version that did not load."""
        problem = None
        if self.latest_error is not None:
            problem = self.latest_error
        elif self.failed is not None:
            problem = f"version {self.failed} (LATEST) does not load; serving version {self.current.version}"
        return {"status": "ok" if problem is None else "degraded", "version": self.current.version,
                "latest": self.latest, "failed": self.failed, "problem": problem}

    def refresh(self) -> bool:
        """Load the version LATEST names if it is not the served one; True when it was swapped in."""
        try:
            latest = self.registry.latest_version()
        except CheckpointError as err:
            if self.latest_error != str(err):    # once per problem, not on every poll
                emit("latest_unreadable", f"cannot read LATEST; still serving version {self.current.version}: "
                     f"{err}", level="warning", version=self.current.version, error=str(err))
            self.latest, self.latest_error = None, str(err)
            return False
        self.latest, self.latest_error = latest, None
        if latest is None:
            self.latest_error = f"{self.registry.latest_path}: missing"
            return False
        if latest == self.current.version:
            self.failed = None                  # e.g. a rollback past a corrupt version
            return False
        if latest == self.failed:
            return False
        began = time.perf_counter()
        try:
            loaded = self._ready(Recommender.from_registry(self.registry, latest))
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


class EncodedAnswer(bytes):
    """An answer already encoded as JSON."""


def _items(answer: Answer) -> list[dict[str, Any]]:
    return [{"item": item, "score": score} for item, score in zip(answer.items, answer.scores)]


def _result(answer: Answer, version: int | None = None) -> dict[str, Any]:
    """One user's JSON answer (with the version for GET /recommend); ``recent_used`` only when the
    query carried recent items."""
    out: dict[str, Any] = {"user": answer.user}
    if version is not None:
        out["version"] = version
    out["fallback"] = answer.fallback
    if answer.recent_used is not None:
        out["recent_used"] = answer.recent_used
    out["items"] = _items(answer)
    return out


def _json(payload: Any, status: int = 200) -> Response:
    return Response(content=orjson.dumps(payload), status_code=status, media_type="application/json")


def _cheap(model: Recommender, k: int, include_seen: bool) -> bool:
    """Whether one user's answer is a lookup in the precomputed table (answered on the loop)."""
    return model.selector.cache is not None and not include_seen and k <= CACHE_K


def _check_recent(limits: Limits, model: Recommender, users: list, recent: list | None) -> None:
    """422 for too many recent items for one user, or an item id the version does not know."""
    if recent is None:
        return
    if len(recent) != len(users):
        raise RequestError(422, f"recent has {len(recent)} entries for {len(users)} users (one per user, "
                                "null for none)")
    for user, items in zip(users, recent):
        if items and len(items) > limits.max_recent:
            raise RequestError(422, f"{len(items)} recent items for user {_short(user)!r} is over this "
                                    f"server's limit of {limits.max_recent} (smlrec serve --max-recent)")
        if items:
            try:
                model.selector.item_rows(list(items), _short(user))
            except DataError as err:
                raise RequestError(422, str(err)) from None


def _check_size(limits: Limits, users: int, k: int) -> None:
    if k > limits.max_k:
        raise RequestError(422, f"k = {k} is over this server's limit of {limits.max_k} items per user "
                                "(smlrec serve --max-k)")
    if users > limits.max_users:
        raise RequestError(422, f"{users} users in one batch is over this server's limit of "
                                f"{limits.max_users} (smlrec serve --max-users); split the batch")
    if users * k > limits.max_results:
        raise RequestError(422, f"{users} users x k = {k} asks for {users * k} items, over this server's "
                                f"limit of {limits.max_results} per request (smlrec serve --max-results); "
                                "split the batch or lower k")


QUERY_PARAMETERS = [
    {"name": "user", "in": "query", "required": True, "schema": {"type": "string"}, "description": "raw user id"},
    {"name": "k", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "default": 20},
     "description": "items (at most the server's --max-k)"},
    {"name": "include_seen", "in": "query", "required": False, "schema": {"type": "boolean", "default": False},
     "description": "keep items the user already has"},
    {"name": "strict", "in": "query", "required": False, "schema": {"type": "boolean", "default": False},
     "description": "404 for an unknown user instead of the cold-start rule"},
    {"name": "recent", "in": "query", "required": False,
     "schema": {"type": "array", "items": {"type": "string"}}, "style": "form", "explode": True,
     "description": "raw id of an item the user interacted with since the version's data; repeat the "
                    "parameter for several, oldest first"}]
_TRUE = frozenset(("true", "1", "yes", "on", "t", "y"))
_FALSE = frozenset(("false", "0", "no", "off", "f", "n"))


def _invalid(name: str, message: str, kind: str, value: Any) -> RequestError:
    return RequestError(422, [{"loc": ["query", name], "msg": message, "type": kind, "input": _short(value)}])


def _query(params: Any) -> tuple[str, int, bool, bool]:
    """(user, k, include_seen, strict) of GET /recommend; a RequestError (422) names a bad one."""
    user = params.get("user")
    if user is None:
        raise _invalid("user", "Field required", "missing", None)
    text = params.get("k", "20")
    try:
        k = int(text)
    except ValueError:
        raise _invalid("k", "Input should be a valid integer", "int_parsing", text) from None
    if k < 1:
        raise _invalid("k", "Input should be greater than or equal to 1", "greater_than_equal", text)
    flags = []
    for name in ("include_seen", "strict"):
        value = params.get(name, "false")
        if value.lower() in _TRUE:
            flags.append(True)
        elif value.lower() in _FALSE:
            flags.append(False)
        else:
            raise _invalid(name, "Input should be a valid boolean", "bool_parsing", value)
    return user, k, flags[0], flags[1]


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes (before reading it all
    when the client announces its length)."""
    declared = request.headers.get("content-length")
    too_big = RequestError(413, f"request body over this server's limit of {limit} bytes "
                                "(smlrec serve --max-body); split the batch")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(registry: str | Path | ModelRegistry, poll_seconds: float = 2.0,
               limits: Limits | None = None) -> FastAPI:
    """The FastAPI application serving ``registry``."""
    if not isinstance(poll_seconds, (int, float)) or not 0 < poll_seconds < float("inf"):
        raise ConfigError(f"poll_seconds must be > 0 and finite (seconds between checks of LATEST), "
                          f"got {poll_seconds!r}")
    limits = limits or Limits()
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

    app = FastAPI(title="smlrec", description="Top-K recommendations from a smlrec model registry.",
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.holder = holder
    app.state.metrics = metrics
    app.state.limits = limits

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> Response:
        endpoint = "recommend_batch" if request.url.path.endswith("/batch") else "recommend"
        metrics.observe(endpoint, 422, 0.0)
        return _json({"detail": _errors(list(err.errors()))}, 422)

    def answer(endpoint: str, began: float, build: Callable[[Recommender], tuple[Any, int]]) -> Response:
        """Run ``build`` on one version (the whole request sees one); errors become 404/413/422."""
        model = holder.current
        try:
            payload, fallbacks = build(model)
            body = payload if isinstance(payload, EncodedAnswer) else orjson.dumps(payload)
        except RequestError as err:
            metrics.observe(endpoint, err.status, time.perf_counter() - began)
            return _json({"detail": err.detail}, err.status)
        except (DataError, ConfigError) as err:
            metrics.observe(endpoint, 404, time.perf_counter() - began)
            return _json({"detail": str(err)}, 404)
        metrics.observe(endpoint, 200, time.perf_counter() - began, fallbacks)
        return Response(content=body, media_type="application/json")

    # The query is parsed here rather than by FastAPI's parameter machinery, which cost more than
    # the whole lookup (~0.1 ms a request in a profile); the parameters are documented all the same.
    @app.get("/recommend", summary="Top-k items for one user", openapi_extra={"parameters": QUERY_PARAMETERS})
    async def recommend(request: Request) -> Response:
        began = time.perf_counter()
        try:
            user, k, include_seen, strict = _query(request.query_params)
        except RequestError as err:
            metrics.observe("recommend", err.status, time.perf_counter() - began)
            return _json({"detail": err.detail}, err.status)
        recent = [item for item in request.query_params.getlist("recent") if item.strip()] or None

        def build(model: Recommender) -> tuple[Any, int]:
            _check_size(limits, 1, k)
            if recent is not None:
                _check_recent(limits, model, [user], [recent])
                top = model.top_k([user], k=k, exclude_seen=not include_seen, strict=strict, recent=[recent])[0]
                return _result(top, version=model.version), int(top.fallback)
            encoded = getattr(model, "encoded", None)
            if encoded is not None and not include_seen and k <= encoded.width:
                row = int(model.selector.check([user], k, strict)[0])
                return EncodedAnswer(b'{"user":%s,"version":%d,"fallback":%s,"items":%s}' % (
                    orjson.dumps(user), model.version, b"true" if row < 0 else b"false",
                    encoded.items(row, k))), int(row < 0)
            top = model.top_k([user], k=k, exclude_seen=not include_seen, strict=strict)[0]
            return ({"user": user, "version": model.version, "fallback": top.fallback, "items": _items(top)},
                    int(top.fallback))

        if recent is None and _cheap(holder.current, k, include_seen):
            return answer("recommend", began, build)
        return await run_in_threadpool(answer, "recommend", began, build)

    @app.post("/recommend/batch", summary="Top-k items for each of a batch of users",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": BatchRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}})
    async def recommend_batch(request: Request) -> Response:
        began = time.perf_counter()
        try:
            raw = await _body(request, limits.max_body)
        except RequestError as err:
            metrics.observe("recommend_batch", err.status, time.perf_counter() - began)
            return _json({"detail": err.detail}, err.status)

        def build(model: Recommender) -> tuple[Any, int]:
            try:
                query = BatchRequest.model_validate_json(raw)
            except ValidationError as err:
                raise RequestError(422, _errors(err.errors(include_url=False))) from None
            _check_size(limits, len(query.users), query.k)
            _check_recent(limits, model, query.users, query.recent)
            recent = query.recent if query.recent is not None and any(query.recent) else None
            encoded = getattr(model, "encoded", None)
            if recent is None and encoded is not None and not query.include_seen and query.k <= encoded.width:
                rows = model.selector.check(query.users, query.k, query.strict).tolist()
                k = query.k
                results = b",".join(b'{"user":%s,"fallback":%s,"items":%s}' % (
                    orjson.dumps(user), b"true" if row < 0 else b"false", encoded.items(row, k))
                    for user, row in zip(query.users, rows))
                return (EncodedAnswer(b'{"version":%d,"results":[%s]}' % (model.version, results)),
                        sum(row < 0 for row in rows))
            answers = model.top_k(query.users, k=query.k, exclude_seen=not query.include_seen, strict=query.strict,
                                  recent=recent)
            # one small dumps per user: a single dumps of megabytes would hold the GIL throughout
            results = b",".join(orjson.dumps(_result(a)) for a in answers)
            return (EncodedAnswer(b'{"version":%d,"results":[%s]}' % (model.version, results)),
                    sum(a.fallback for a in answers))

        return await run_in_threadpool(answer, "recommend_batch", began, build)

    @app.get("/version", summary="The served version")
    async def version() -> Response:
        model = holder.current
        manifest = model.checkpoint.manifest
        return _json({"version": model.version, "strategy": manifest.get("strategy"),
                      "created": manifest.get("created"), "periods": manifest.get("periods"),
                      "n_users": manifest.get("n_users"), "n_items": manifest.get("n_items")})

    @app.get("/health", summary="Served version and whether it is the one LATEST names")
    async def health() -> Response:
        return _json(holder.health())

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(holder), media_type="text/plain; version=0.0.4")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(docs_page(app.openapi()))

    return app


def docs_page(spec: dict[str, Any]) -> str:
    """A self-contained HTML page describing the API from its OpenAPI document (no scripts, no
    CDN: it works on a machine without internet access). The full document is at /openapi.json."""
    esc = html.escape
    info = spec.get("info", {})
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(info.get('title', 'API'))}</title>"
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}code,pre{background:#f4f4f4}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}"
             "</style></head><body>",
             f"<h1>{esc(info.get('title', 'API'))} {esc(str(info.get('version', '')))}</h1>",
             f"<p>{esc(info.get('description', ''))}</p>",
             "<p>Machine-readable description: <a href='/openapi.json'>/openapi.json</a>.</p>"]
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            parts.append(f"<h2><code>{esc(method.upper())} {esc(path)}</code></h2><p>{esc(op.get('summary', ''))}</p>")
            params = op.get("parameters", [])
            if params:
                parts.append("<table><tr><th>parameter</th><th>in</th><th>type</th><th>default</th>"
                             "<th>description</th></tr>")
                for p in params:
                    schema = p.get("schema", {})
                    parts.append(f"<tr><td>{esc(p.get('name', ''))}{' (required)' if p.get('required') else ''}"
                                 f"</td><td>{esc(p.get('in', ''))}</td><td>{esc(str(schema.get('type', '')))}</td>"
                                 f"<td>{esc(str(schema.get('default', '')))}</td>"
                                 f"<td>{esc(p.get('description', ''))}</td></tr>")
                parts.append("</table>")
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                parts.append("<p>JSON body:</p><pre>" + esc(orjson.dumps(body, option=orjson.OPT_INDENT_2)
                                                           .decode()) + "</pre>")
    parts.append("</body></html>")
    return "".join(parts)


