"""Search queries embedded from the moment their request arrives.

The semantic half of a search cannot start before its query is embedded (4-7 ms of CPU), and
before the handler runs, a request spends 1-3 ms in the framework (HTTP parsing, routing, the
token check, which on PostgreSQL is a database round trip, parameter validation, the hop to
the thread pool). :class:`QueryPrefetch` starts the embedding on a thread of its own as soon
as a ``GET /v1/assets?q=`` arrives, so the two overlap; the handler takes the started
embedding when its query is the same text (:func:`prefetched`) and embeds itself otherwise.

A request that will be refused (no token, a wrong one) costs at most the one embedding: it is
started only while the server is open or when the request carries a token at all.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

SEARCH_PATH = "/v1/assets"
MAX_QUERY_CHARS = 500
"""Longest ``q`` the route accepts (longer ones are refused before any embedding)."""


@dataclass(frozen=True)
class PendingEmbedding:
    """One query's embedding, started on the prefetch thread."""

    text: str
    """The stripped query text being embedded."""
    future: Future
    """Resolves to ``(vector or None, (wall ms, CPU ms) of the embedding)``."""

    def vector(self) -> np.ndarray | None:
        """The ``(384,)`` float32 embedding (waits for it)."""
        return self.future.result()[0]

    def timing(self) -> tuple[float, float]:
        """Wall and CPU milliseconds that the embedding took on its thread."""
        return self.future.result()[1]


def _timed(embed: Callable[[str], np.ndarray | None],
           text: str) -> tuple[np.ndarray | None, tuple[float, float]]:
    wall, cpu = time.perf_counter(), time.thread_time()
    vector = embed(text)
    return vector, (1000 * (time.perf_counter() - wall), 1000 * (time.thread_time() - cpu))


def search_query(scope: dict) -> str | None:
    """The stripped ``q`` of a ``GET /v1/assets`` request as the route reads it (the last
    ``q`` of the query string), or None for any other request or an empty or too long ``q``."""
    if scope.get("type") != "http" or scope.get("method") != "GET" or (
            scope.get("path") != SEARCH_PATH):
        return None
    raw = scope.get("query_string", b"").decode("latin-1")
    values = [v for k, v in urllib.parse.parse_qsl(raw, keep_blank_values=True) if k == "q"]
    if not values or len(values[-1]) > MAX_QUERY_CHARS or not values[-1].strip():
        return None
    return values[-1].strip()


def _carries_token(scope: dict) -> bool:
    if any(name == b"authorization" for name, _ in scope.get("headers", [])):
        return True
    return b"access_token=" in scope.get("query_string", b"")


class QueryPrefetch:
    """ASGI middleware: start embedding a search's query on the prefetch thread as the request
    arrives (see the module's docstring); the handler finds it with :func:`prefetched`."""

    def __init__(self, app) -> None:  # noqa: ANN001 - an ASGI app
        self.app = app
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="foundry3d-query-embed")

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001 - ASGI
        text = search_query(scope)
        application = scope.get("app")
        if text is not None and application is not None:
            auth = getattr(application.state, "auth", None)
            if auth is None or not auth.configured_already() or _carries_token(scope):
                future = self._thread.submit(_timed, application.state.embed, text)
                scope.setdefault("state", {})["query_embedding"] = PendingEmbedding(text, future)
        await self.app(scope, receive, send)


def prefetched(state: object, text: str) -> PendingEmbedding | None:
    """The embedding :class:`QueryPrefetch` started for ``text`` on this request (its
    ``request.state``), if any."""
    pending = getattr(state, "query_embedding", None)
    return pending if pending is not None and pending.text == text else None
