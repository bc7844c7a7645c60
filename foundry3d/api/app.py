"""The FastAPI application: settings -> engine, store, embedder, job runner; routes; errors."""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
from fastapi import FastAPI

from foundry3d.api import gallery, routes_assets, routes_jobs
from foundry3d.api.auth import Authenticator
from foundry3d.api.errors import install_error_handlers
from foundry3d.api.fingerprint import database_fingerprint
from foundry3d.api.jobs import JobRunner
from foundry3d.api.query_prefetch import QueryPrefetch
from foundry3d.settings import ApiSettings, Settings
from storage.search_index import SearchIndex, snapshot_folder

log = logging.getLogger("foundry3d.api")
QUERY_CACHE_SIZE = 4096
"""Query embeddings kept by the server (1.5 KiB each)."""


def _embedder() -> Callable[[str], np.ndarray | None]:
    """Query text -> ``(384,)`` float32 unit embedding, with the model loaded now and kept.

    Without the packaged model, search is keyword-only (the log says why)."""
    from models.embed.text import EmbedderUnavailable, get_text_embedder

    try:
        import torch

        # One thread for the one-query forward passes: waking a second one costs more CPU
        # than it saves (12 ms of CPU per query on one thread, 100 ms on two, measured with the
        # machine's 2 cores busy). Fixed once here: torch's setting is the process's. The
        # pipeline's refinement sets its own (RefineParams.torch_threads, 1 by default).
        # Queries run in ONNX Runtime (one thread too) where it is installed.
        torch.set_num_threads(1)
        embedder = get_text_embedder()
        embedder.embed_query("warm up")  # load and export the model before the first request
    except EmbedderUnavailable as exc:
        log.warning("semantic search off: %s", exc)
        return lambda _text: None

    # Repeated queries (the gallery's next pages, popular searches) skip the model.
    @functools.lru_cache(maxsize=QUERY_CACHE_SIZE)
    def embed(text: str) -> np.ndarray:
        vector = embedder.embed_query(text)
        vector.setflags(write=False)
        return vector

    return embed


class ServerTiming:
    """ASGI middleware: each response's ``Server-Timing`` header gives the wall and CPU
    milliseconds the app spent on it, from the request's arrival to its response's start
    (routing, authentication, validation, the handler, JSON encoding); the client's wall
    time less this is the server's HTTP layer and the wait for a core."""

    def __init__(self, app) -> None:  # noqa: ANN001 - an ASGI app
        self.app = app

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001 - ASGI
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        wall, cpu = time.perf_counter(), time.process_time()

        async def timed_send(message) -> None:  # noqa: ANN001 - ASGI
            if message["type"] == "http.response.start":
                value = (f"app;dur={1000 * (time.perf_counter() - wall):.2f}, "
                         f"cpu;dur={1000 * (time.process_time() - cpu):.2f}")
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"server-timing", value.encode())]}
            await send(message)

        await self.app(scope, receive, timed_send)


def _load_search_index(app: FastAPI) -> None:
    """Read the search index at start-up, so that the first search does not wait for it."""
    from storage.db import session_scope

    try:
        with session_scope(app.state.engine) as session:
            count = app.state.search_index.refresh(session)
            words = app.state.search_index.warm_words(session)
            recall = app.state.search_index.warm_semantic(session)
        log.info("search index: %d entries, %d words read ahead%s", count, words,
                 "" if recall is None else f", sign shortlist recall@10 {recall:.3f}")
    except Exception:  # noqa: BLE001 - the first search loads it instead; the log says why
        log.exception("could not load the search index at start-up")
    finally:
        # What start-up made (about 500,000 objects: modules, the models, the index) lives as
        # long as the server: a full garbage collection would walk it all for nothing, a pause
        # of 0.1-0.8 s in some request. Frozen, collections see only what requests make.
        gc.freeze()
        app.state.search_ready.set()


def create_app(settings: Settings, api_settings: ApiSettings, *,
               concurrency: int | None = None) -> FastAPI:
    """The API + gallery app on ``settings``' database, object store and library."""
    from storage.db import ensure_database
    from tasks.resources import store_for

    config = settings.pipeline_config()
    engine = ensure_database(settings.resolved_database_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Iterator[None]:
        app.state.embed = _embedder()
        app.state.auth.configured()  # known before the first request (see query_prefetch)
        threading.Thread(target=_load_search_index, args=(app,), name="foundry3d-search-index",
                         daemon=True).start()
        app.state.runner.start()
        try:
            yield
        finally:
            app.state.runner.stop()

    app = FastAPI(
        title="foundry3d",
        summary="A batch factory for 3D assets: submit manifests, follow jobs, search assets.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served by the gallery router, from the npm folder
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.api_settings = api_settings
    app.state.config = config
    app.state.engine = engine
    app.state.store = store_for(config.store_url)
    app.state.auth = Authenticator(engine)
    app.state.upload_dir = settings.data_dir.resolve() / "api-manifests"
    app.state.embed = lambda _text: None  # replaced at start-up
    # A long-lived server measures (at start-up) whether the index's sign shortlist holds.
    app.state.search_index = SearchIndex(snapshot_folder(engine.url), sign_shortlist=True)
    app.state.search_ready = threading.Event()  # set once the index is loaded (or failed to)
    deployment = settings.asset_deployment if settings.prefect_mode == "server" else None
    app.state.runner = JobRunner(config, engine, concurrency=concurrency or settings.concurrency,
                                 deployment=deployment,
                                 callback_secret=api_settings.callback_secret)
    install_error_handlers(app)
    app.add_middleware(QueryPrefetch)
    app.add_middleware(ServerTiming)  # added last: the outermost, so it times the prefetch too

    @app.get("/v1/health", tags=["service"], summary="Liveness and readiness")
    def health() -> dict:
        """Open to all: ``workers_ready`` turns true once Prefect and the pipeline are warm,
        ``search_ready`` once the search index is loaded and its common words read ahead."""
        warmed = getattr(app.state.runner, "warmed", None)
        return {"status": "ok", "workers_ready": warmed is not None and not warmed.is_alive(),
                "search_ready": app.state.search_ready.is_set(),
                "database": database_fingerprint(settings.resolved_database_url)}

    app.include_router(routes_jobs.router)
    app.include_router(routes_assets.router)
    app.include_router(gallery.router)
    return app
