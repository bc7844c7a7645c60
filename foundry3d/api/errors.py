"""Every error of the API is JSON ``{"error": {"code", "message", "details"}}``, never a trace."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from storage.db import DatabaseUnavailable, is_connection_error

log = logging.getLogger("foundry3d.api")

_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "too_large", 416: "range_not_satisfiable",
    422: "invalid_request", 500: "internal_error", 503: "unavailable",
}


class ApiError(Exception):
    """An error answered as JSON with ``status``; ``code`` is a stable snake_case word."""

    def __init__(self, status: int, code: str, message: str, details: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


def error_response(status: int, code: str, message: str, details: Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Route FastAPI's, Starlette's and our own errors, and any crash, to the JSON shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"where": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
            for e in exc.errors()
        ]
        return error_response(422, "invalid_request", "the request is not valid", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail), None,
                              getattr(exc, "headers", None))

    @app.exception_handler(DatabaseUnavailable)
    async def _database_down(_request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        # An outage that outlasted the retry window: the client may try again later.
        return error_response(503, "unavailable", f"{exc}; try again once it is back", None,
                              {"Retry-After": "30"})

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        if is_connection_error(exc):  # a route's own query during an outage
            log.warning("database unreachable on %s %s", request.method, request.url.path)
            return error_response(503, "unavailable", "database unreachable; try again once "
                                  "it is back", None, {"Retry-After": "30"})
        # The trace goes to the server's log, never to the client.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error",
                              {"class": type(exc).__name__})
