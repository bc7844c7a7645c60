"""Bearer tokens: creation (secret shown once, sha256 stored), and the per-route scope check.

Policy: once any token has ever been created, every ``/v1`` route needs a bearer token of
sufficient scope (``write`` includes ``read``); before that, a server bound to loopback is
open. A server bound elsewhere refuses to start without an active token (:func:`check_bind`).
Revoking the last token does not reopen the API: the table is non-empty, so auth stays on.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import threading

from fastapi import Request
from sqlalchemy.engine import Connection, Engine
from starlette.concurrency import run_in_threadpool

from foundry3d.api.errors import ApiError
from storage import queries

TOKEN_PREFIX = "f3d_"
SCOPE_RANK = {"read": 1, "write": 2}


def new_token_secret() -> str:
    """A fresh secret: the prefix and 256 random bits, URL-safe base64."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(secret: str) -> str:
    """Hex sha256 of a secret. A 256-bit random secret needs no salt or slow hash."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address or name) is only reachable from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, active_tokens: int) -> str | None:
    """Why the server must not start on ``host``, or None when it may."""
    if is_loopback(host) or active_tokens > 0:
        return None
    return (f"refusing to listen on {host} without authentication: create a token first "
            "(foundry3d token create --name NAME --scope write)")


class Authenticator:
    """Checks the ``Authorization: Bearer`` header of a request against the token table.

    While no token exists every request asks the database whether one was created since (by
    ``foundry3d token create`` in another process, say), so the next request enforces it. The
    question costs O(1): on SQLite, a pooled connection that saw no commit by others (``PRAGMA
    data_version``) and made no change itself (``total_changes``) since it last found the table
    empty answers without a query; on PostgreSQL, ``EXISTS`` stops at the first row.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._configured = False  # once true, stays true (tokens are never deleted)
        self._lock = threading.Lock()
        self.in_process = engine.dialect.name == "sqlite"
        """Whether the database is in this process (SQLite): a check then waits on no I/O, and
        may run on the event loop."""

    def configured(self) -> bool:
        """Whether any token was ever created (then every route needs one)."""
        if self._configured:
            return True
        with self.engine.connect() as connection:
            found = _any_token(connection)
        if found:
            with self._lock:
                self._configured = True
        return found

    def configured_already(self) -> bool:
        """Whether a token was found to exist before (no database read: False may be stale)."""
        return self._configured

    def check(self, request: Request, scope: str) -> str | None:
        """The token name that grants ``scope``, None on an open server; raises 401/403."""
        if not self.configured():
            return None
        header = request.headers.get("authorization", "")
        kind, _, secret = header.partition(" ")
        if not header and request.method in ("GET", "HEAD"):
            # <img> and <model-viewer> cannot send headers: reads may pass the token in the URL.
            kind, secret = "bearer", request.query_params.get("access_token", "")
        if kind.lower() != "bearer" or not secret.strip():
            raise ApiError(401, "unauthorized", "a bearer token is required "
                           "(Authorization: Bearer <token>)",
                           headers={"WWW-Authenticate": "Bearer"})
        with self.engine.connect() as connection:
            token = queries.api_token_grant(connection, hash_token(secret.strip()))
        if token is None or token.revoked_at is not None:
            what = "unknown" if token is None else "revoked"
            raise ApiError(401, "unauthorized", f"the bearer token is {what}",
                           headers={"WWW-Authenticate": "Bearer"})
        if SCOPE_RANK[token.scope] < SCOPE_RANK[scope]:
            raise ApiError(403, "forbidden", f"token {token.name!r} has scope {token.scope!r}; "
                           f"this needs {scope!r}")
        return token.name


_NO_TOKEN_AT = "foundry3d_no_api_token_at"
"""Key in an SQLite connection's ``info``: its ``(data_version, total_changes)`` when it last
found the token table empty."""


def _any_token(connection: Connection) -> bool:
    """Whether the token table has a row, as ``connection`` sees it."""
    if connection.dialect.name != "sqlite":
        return queries.any_api_token(connection)
    driver = connection.connection.driver_connection
    version = (connection.exec_driver_sql("PRAGMA data_version").scalar(), driver.total_changes)
    if connection.info.get(_NO_TOKEN_AT) == version:
        return False
    found = queries.any_api_token(connection)
    if not found:
        connection.info[_NO_TOKEN_AT] = version
    return found


def require(scope: str):  # noqa: ANN201 - a FastAPI dependency
    """A dependency that admits requests whose token grants ``scope``.

    Asynchronous, so that FastAPI does not send it to the thread pool (a second hop per request
    beside a sync endpoint's): a check on an in-process database (SQLite) runs here, on the
    event loop, in microseconds; one that waits on a database server runs in the pool.
    """

    async def dependency(request: Request) -> str | None:
        auth: Authenticator = request.app.state.auth
        if auth.in_process:
            return auth.check(request, scope)
        return await run_in_threadpool(auth.check, request, scope)

    dependency.__name__ = f"require_{scope}"
    return dependency
