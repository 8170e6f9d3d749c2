"""HTTP serving of a registry (FastAPI): top-K per user, the current version, health.

A background thread polls ``LATEST`` every ``poll_seconds``. When it names a new version, the
version is loaded completely off the request path and then swapped in with one reference
assignment, so every request is answered by exactly one whole version and none is dropped.
A new version that fails to load (corrupt file) is logged and skipped; the old one keeps serving.

Endpoints::

    GET /recommend?user=ID&k=20&include_seen=false&strict=false
        -> {"user", "version", "fallback", "items": [{"item", "score"}, ...]}
    GET /version -> {"version", "strategy", "created", "periods", "n_users", "n_items"}
    GET /health  -> {"status": "ok", "version"}
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path

from ..errors import CheckpointError, DataError
from .registry import ModelRegistry
from .recommender import Recommender

log = logging.getLogger("smlrec.serve")


class ModelHolder:
    """The served version, replaced atomically when a new one has loaded."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self.current: Recommender = Recommender(registry.load_latest_good()[0])
        self.failed: int | None = None

    def refresh(self) -> bool:
        """Load the version LATEST names if it is new; True when a new version was swapped in."""
        try:
            latest = self.registry.latest_version()
        except CheckpointError as err:
            log.warning("cannot read LATEST: %s", err)
            return False
        if latest is None or latest == self.current.version or latest == self.failed:
            return False
        try:
            loaded = Recommender.from_registry(self.registry, latest)
        except CheckpointError as err:
            log.error("version %s does not load; still serving version %s: %s", latest,
                      self.current.version, err)
            self.failed = latest
            return False
        self.current = loaded  # one reference assignment: requests see the old or the new model
        log.info("now serving version %s", latest)
        return True


def create_app(registry: str | Path | ModelRegistry, poll_seconds: float = 2.0):
    """The FastAPI application serving ``registry``."""
    from fastapi import FastAPI, HTTPException, Query

    registry = registry if isinstance(registry, ModelRegistry) else ModelRegistry(registry)
    holder = ModelHolder(registry)
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(poll_seconds):
            try:
                holder.refresh()
            except Exception:  # never let the poller die: keep serving the current version
                log.exception("polling the registry failed")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        thread = threading.Thread(target=poll, name="smlrec-registry-poll", daemon=True)
        thread.start()
        yield
        stop.set()
        thread.join(timeout=poll_seconds + 5)

    app = FastAPI(title="smlrec", lifespan=lifespan)
    app.state.holder = holder

    @app.get("/recommend")
    def recommend(user: str, k: int = Query(20, ge=1, le=10000), include_seen: bool = False,
                  strict: bool = False) -> dict:
        model = holder.current
        try:
            frame = model.recommend([user], k=k, exclude_seen=not include_seen, strict=strict)
        except DataError as err:
            raise HTTPException(status_code=404, detail=str(err)) from None
        fallback = bool(frame["fallback"].any()) if len(frame) else model.lookup([user])[0] < 0
        return {"user": user, "version": model.version, "fallback": fallback,
                "items": [{"item": item, "score": score}
                          for item, score in zip(frame["item"].tolist(), frame["score"].tolist())]}

    @app.get("/version")
    def version() -> dict:
        model = holder.current
        manifest = model.checkpoint.manifest
        return {"version": model.version, "strategy": manifest.get("strategy"),
                "created": manifest.get("created"), "periods": manifest.get("periods"),
                "n_users": manifest.get("n_users"), "n_items": manifest.get("n_items")}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "version": holder.current.version}

    return app
