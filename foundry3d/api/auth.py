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
from sqlalchemy.engine import Engine

from foundry3d.api.errors import ApiError
from storage import queries
from storage.db import session_scope

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
    """Checks the ``Authorization: Bearer`` header of a request against the token table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._configured = False  # once true, stays true (tokens are never deleted)
        self._lock = threading.Lock()

    def configured(self) -> bool:
        """Whether any token was ever created (then every route needs one)."""
        if not self._configured:
            with session_scope(self.engine) as session:
                total, _active = queries.api_token_counts(session)
            with self._lock:
                self._configured = self._configured or total > 0
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
        with session_scope(self.engine) as session:
            token = queries.find_api_token(session, hash_token(secret.strip()))
            if token is None or token.revoked_at is not None:
                what = "unknown" if token is None else "revoked"
                raise ApiError(401, "unauthorized", f"the bearer token is {what}",
                               headers={"WWW-Authenticate": "Bearer"})
            name, granted = token.name, token.scope
        if SCOPE_RANK[granted] < SCOPE_RANK[scope]:
            raise ApiError(403, "forbidden", f"token {name!r} has scope {granted!r}; this needs "
                           f"{scope!r}")
        return name


def require(scope: str):  # noqa: ANN201 - a FastAPI dependency
    """A dependency that admits requests whose token grants ``scope``."""

    def dependency(request: Request) -> str | None:
        return request.app.state.auth.check(request, scope)

    dependency.__name__ = f"require_{scope}"
    return dependency
