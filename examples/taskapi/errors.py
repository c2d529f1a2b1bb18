"""One JSON shape for every error, and the 64 KB request body limit.

Every error the app answers is ``{"error": code, "detail": sentence}``
(plus ``fields`` on a 422) — the shape scalekit's own 429 uses — with
``application/json``. A database that cannot be reached is a 503 with
``Retry-After``, never a 500.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scalekit.db import DatabaseError, WriteOutcomeUnknown

__all__ = [
    "MAX_BODY_BYTES",
    "ApiError",
    "BodyLimitMiddleware",
    "UnexpectedErrorMiddleware",
    "error_response",
    "install_error_handlers",
]

MAX_BODY_BYTES = 64 * 1024

_logger = structlog.get_logger("taskapi")
_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """An error answer: ``raise ApiError(404, "not_found", "no task 12")``."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})


def error_response(
    status: int,
    code: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """The JSON error answer."""
    body: dict[str, Any] = {"error": code, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def _code_for(status: int) -> str:
    return _CODES.get(status) or HTTPStatus(status).phrase.lower().replace(" ", "_")


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.detail, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == "Not Found":
        path = request.url.path
        detail = f"no route for {path}"
        if len(path) > 1 and path.endswith("/"):
            detail += f"; without the trailing slash: {path.rstrip('/')}"
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return error_response(exc.status_code, _code_for(exc.status_code), detail, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # No "input" in the answer: it could echo a password back.
    fields = [
        {
            "loc": [str(part) if not isinstance(part, int) else part for part in error["loc"]],
            "message": str(error["msg"]),
            "type": str(error["type"]),
        }
        for error in exc.errors()
    ]
    names = ", ".join(".".join(str(part) for part in field["loc"]) for field in fields)
    return error_response(422, "validation_error", f"invalid request: {names}", fields=fields)


async def _database_error(request: Request, exc: Exception) -> Response:
    _logger.warning("database unavailable", error=type(exc).__name__, message=str(exc))
    if isinstance(exc, WriteOutcomeUnknown):
        detail = (
            "the database connection was lost while saving; the change may or may not "
            "have been applied: check before retrying"
        )
    else:
        detail = "the database is unavailable; retry shortly"
    return error_response(503, "database_unavailable", detail, headers={"Retry-After": "1"})


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through the one JSON shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DatabaseError, _database_error)


class UnexpectedErrorMiddleware:
    """A JSON 500 (or 503) for an exception no handler took, logged once without locals.

    Starlette's own 500 handler runs outside every middleware, after
    scalekit's request context has already answered in plain text; this one
    sits just outside the app, so the answer keeps the JSON shape.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception as exc:
            if started:
                raise
            # A DB-API OperationalError the pool did not translate (SQLite
            # locked, a MariaDB refusal) is the database's state, not a bug.
            if any(cls.__name__ == "OperationalError" for cls in type(exc).__mro__):
                _logger.warning("database unavailable", error=type(exc).__name__)
                response = error_response(
                    503, "database_unavailable", "the database is unavailable; retry shortly",
                    headers={"Retry-After": "1"},
                )  # fmt: skip
            else:
                # A plain traceback: structlog's rich and dict renderings
                # show each frame's locals, which hold tokens and passwords.
                _logger.error(
                    "unhandled error",
                    error=type(exc).__name__,
                    traceback="".join(traceback.format_exception(exc)),
                )
                response = error_response(
                    500, "internal_error", "an unexpected error; it has been logged"
                )
            await response(scope, receive, send)


class BodyLimitMiddleware:
    """Answer 413 (JSON) to request bodies over ``max_bytes``, declared or streamed.

    A ``Content-Length`` over the limit is refused before the app runs; a
    chunked body is counted as it is read and the read that crosses the
    limit raises a 413 ``HTTPException`` (FastAPI renders it with the
    handlers above).
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                # Digits only: int() also takes "+5", " 5" and "1_0", which
                # no HTTP server accepts and which could disagree with the body.
                declared = int(value) if value.isdigit() else -1
                if declared < 0:
                    await error_response(400, "bad_request", "invalid Content-Length")(
                        scope, receive, send
                    )
                    return
                if declared > self.max_bytes:
                    await self._too_large()(scope, receive, send)
                    return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._detail())
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except HTTPException as exc:
            if exc.status_code != 413 or started:
                raise
            await self._too_large()(scope, receive, send)

    def _detail(self) -> str:
        return f"the request body is over {self.max_bytes // 1024} KB"

    def _too_large(self) -> JSONResponse:
        return error_response(
            413, "payload_too_large", self._detail(), headers={"Connection": "close"}
        )
