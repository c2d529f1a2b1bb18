"""Request ids, structlog context and the one access-log line per request."""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import time
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scalekit._net import ClientIP, ForwardedHeader
from scalekit._routes import RouteNames, route_path

__all__ = [
    "REQUEST_ID_PATTERN",
    "RequestContextMiddleware",
    "current_request_id",
    "logged_request_id",
    "new_request_id",
    "request_id_of",
]

REQUEST_ID_PATTERN = r"[A-Za-z0-9._-]{1,128}"
"""An incoming request id is kept only if it matches this (nginx's ``$request_id`` does)."""

_VALID_ID = re.compile(REQUEST_ID_PATTERN.encode("ascii"))
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "scalekit_request_id", default=None
)


# An exception that escaped a request carries its request id (and whether the
# middleware logged it), so the server's own error line can be given the id or
# dropped as a duplicate: it is logged after the request's context is gone.
_ERROR_REQUEST_ID = "_scalekit_request_id"
_ERROR_LOGGED = "_scalekit_error_logged"


def request_id_of(error: BaseException) -> str | None:
    """The id of the request an unhandled exception escaped from, if it passed the middleware."""
    value = getattr(error, _ERROR_REQUEST_ID, None)
    return value if isinstance(value, str) else None


def logged_request_id(error: BaseException) -> str | None:
    """The request id when the middleware already logged ``error`` (so nobody else should)."""
    return request_id_of(error) if getattr(error, _ERROR_LOGGED, False) is True else None


def _tag(error: BaseException, name: str, value: object) -> None:
    with contextlib.suppress(AttributeError, TypeError):  # a type refusing attributes
        setattr(error, name, value)


def current_request_id() -> str | None:
    """The id of the request being handled in this context, or None outside a request."""
    return _request_id.get()


def new_request_id() -> str:
    """A fresh random request id: 32 hex digits."""
    return os.urandom(16).hex()


def _user_of(scope: Scope) -> str | None:
    user = scope.get("user")
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    try:
        return str(user.identity)
    except (AttributeError, NotImplementedError):
        return str(getattr(user, "display_name", "")) or None


class RequestContextMiddleware:
    """Gives every request an id, binds it into structlog, and logs one access line.

    The id comes from the incoming ``X-Request-ID`` header when it matches
    :data:`REQUEST_ID_PATTERN`; otherwise a new one is made and the rejection
    is logged under the new id (the rejected value is never logged). The id is
    echoed on every response, including the 500 sent for an unhandled
    exception, and bound with :func:`structlog.contextvars.bind_contextvars`
    for the request's duration, so every line logged while handling it (also
    from sync endpoints and ``run_in_threadpool`` threads, which copy the
    context) carries ``request_id``. Everything bound during the request is
    cleared afterwards.

    An unhandled exception is logged once, on the access line (level error,
    with its traceback and ``request_id``), then re-raised for the server;
    :func:`~scalekit.observability.configure_logging` drops the server's own
    copy ("Exception in ASGI application"). With ``access_log=False`` the
    server's line is the record, and configure_logging gives it the id.

    Args:
        app: the ASGI app to wrap.
        header: the request and response header that carries the id.
        trusted_proxies: CIDRs of the proxies whose ``forwarded_header`` is
            believed for ``client_ip`` (same rule as the rate limiter).
        forwarded_header: the one header those proxies put the client address
            in: ``"x-forwarded-for"`` (default), ``"forwarded"`` or ``"x-real-ip"``.
        access_log: log the access line (set False to only handle ids).
        logger_name: the structlog logger name of the access line.
        id_factory: makes new ids (default :func:`new_request_id`).
        quiet_paths: paths whose access line is logged at debug level
            (probes, scrapes), e.g. ``("/health/live", "/metrics")``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        header: str = "X-Request-ID",
        trusted_proxies: Iterable[str] = (),
        forwarded_header: ForwardedHeader | str = ForwardedHeader.X_FORWARDED_FOR,
        access_log: bool = True,
        logger_name: str = "scalekit.access",
        id_factory: Callable[[], str] = new_request_id,
        quiet_paths: Iterable[str] = (),
    ) -> None:
        if not header or not header.isascii():
            raise ValueError(f"header must be a non-empty ASCII header name, got {header!r}")
        self.app = app
        self.header = header
        self._header_key = header.lower().encode("latin-1")
        self.client_ip = ClientIP(trusted_proxies, header=ForwardedHeader.parse(forwarded_header))
        self.access_log = access_log
        self.logger = structlog.get_logger(logger_name)
        self.id_factory = id_factory
        self.quiet_paths = frozenset(quiet_paths)
        self._route_names = RouteNames()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        start = time.perf_counter()
        header_key = self._header_key
        incoming: bytes | None = None
        for name, value in scope["headers"]:
            if name == header_key:
                incoming = value
                break
        if incoming is not None and _VALID_ID.fullmatch(incoming):
            request_id = incoming.decode("ascii")
            rejected = False
        else:
            request_id = self.id_factory()
            rejected = incoming is not None
        raw_id = request_id.encode("latin-1")

        previous = structlog.contextvars.get_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        id_token = _request_id.set(request_id)
        state = scope.setdefault("state", {})
        if isinstance(state, MutableMapping):  # request.state.request_id
            state["request_id"] = request_id
        if rejected:
            self.logger.warning(
                "request id rejected",
                reason=f"not {REQUEST_ID_PATTERN}",
                length=len(incoming or b""),
            )

        status = 0
        sent = 0
        started = False
        response_header = (header_key, raw_id)

        async def send_with_id(message: Message) -> None:
            nonlocal status, sent, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != header_key]
                headers.append(response_header)
                message["headers"] = headers
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        error: Exception | None = None
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            error = exc
            # Overwritten, not kept: one exception object can be raised again.
            _tag(exc, _ERROR_REQUEST_ID, request_id)
            _tag(exc, _ERROR_LOGGED, False)
            if not started:
                # The app's own error handler would answer outside this
                # middleware; answer here so the 500 carries the id too.
                status = 500
                body = b"Internal Server Error"
                await send_with_id(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode("ascii")),
                        ],
                    }
                )
                await send_with_id({"type": "http.response.body", "body": body})
            raise
        finally:
            try:
                if self.access_log:
                    self._log_access(scope, request_id, status, sent, start, error)
                    if error is not None:
                        _tag(error, _ERROR_LOGGED, True)
            finally:
                _request_id.reset(id_token)
                structlog.contextvars.clear_contextvars()
                if previous:
                    structlog.contextvars.bind_contextvars(**previous)

    def _log_access(
        self,
        scope: Scope,
        request_id: str,
        status: int,
        sent: int,
        start: float,
        error: Exception | None,
    ) -> None:
        path = scope["path"]
        fields: dict[str, Any] = {
            "method": scope["method"],
            "path": path,
            "route": self._route_names(scope),
            "status": status,
            "duration_ms": round((time.perf_counter() - start) * 1000.0, 3),
            "bytes": sent,
            "client_ip": self.client_ip(scope),
            "user": _user_of(scope),
            "request_id": request_id,
        }
        if error is not None:
            fields["error"] = type(error).__name__
            self.logger.error("request", exc_info=error, **fields)
        elif path in self.quiet_paths or route_path(scope) in self.quiet_paths:
            self.logger.debug("request", **fields)
        else:
            self.logger.info("request", **fields)
