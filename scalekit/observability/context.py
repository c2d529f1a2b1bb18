"""Request ids, structlog context and the one access-log line per request."""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import time
import traceback
from collections.abc import Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scalekit._net import ClientIP, ForwardedHeader
from scalekit._routes import RouteNames, normalise_method, route_path
from scalekit.errors import ConfigurationError

if TYPE_CHECKING:
    from scalekit.observability.metrics import RequestMetrics

__all__ = [
    "REQUEST_ID_PATTERN",
    "LineWriter",
    "RequestContextMiddleware",
    "current_request_id",
    "logged_request_id",
    "new_request_id",
    "request_id_of",
    "use_line_writer",
]

REQUEST_ID_PATTERN = r"[A-Za-z0-9._-]{1,128}"
"""An incoming request id is kept only if it matches this (nginx's ``$request_id`` does)."""

_VALID_ID = re.compile(REQUEST_ID_PATTERN.encode("ascii"))
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "scalekit_request_id", default=None
)


_INTERNAL_ERROR_BODY = b'{"error": "internal_error", "detail": "Internal Server Error"}'

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


class LineWriter(Protocol):
    """Writes one log line the way the structlog setup in force would, if it can.

    :func:`~scalekit.observability.configure_logging` registers one, so the
    access line goes through its processors without structlog's logger
    machinery (a third of the line's cost). Returns False, having changed
    nothing, when structlog is no longer configured that way (a later
    ``structlog.configure``, ``capture_logs``); the line is then logged
    through structlog as usual. ``fields`` hold plain values (str, int,
    float, bool, None) and become the event dict (the writer may change it).
    """

    def __call__(self, method_name: str, event: str, fields: dict[str, Any]) -> bool: ...

    def in_force(self) -> bool:
        """Whether structlog is still configured the way this writer writes."""
        ...


_line_writer: LineWriter | None = None


def use_line_writer(writer: LineWriter | None) -> None:
    """Register how the current logging setup writes a line (None: always through structlog)."""
    global _line_writer
    _line_writer = writer


def current_request_id() -> str | None:
    """The id of the request being handled in this context, or None outside a request."""
    return _request_id.get()


class _RandomIds:
    """32 hex digits of ``os.urandom`` per id, read 128 ids at a time (one system call).

    ``list.pop`` is atomic, so threads never share an id; a forked child
    drops the ids its parent had read, so two workers never share one either.
    """

    _PER_READ = 128

    def __init__(self) -> None:
        self._ids: list[str] = []
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._ids = []

    def __call__(self) -> str:
        try:
            return self._ids.pop()
        except IndexError:
            digits = os.urandom(16 * self._PER_READ).hex()
            ids = [digits[start : start + 32] for start in range(0, len(digits), 32)]
            new_id = ids.pop()
            self._ids = ids
            return new_id


_random_ids = _RandomIds()


def new_request_id() -> str:
    """A fresh random request id: 32 hex digits from ``os.urandom``."""
    return _random_ids()


_STRUCTLOG_PREFIX: str = getattr(structlog.contextvars, "STRUCTLOG_KEY_PREFIX", "structlog_")
_structlog_request_id: list[contextvars.ContextVar[Any]] = []


def _bind_request_id(request_id: str) -> None:
    """``bind_contextvars(request_id=...)``, setting structlog's variable directly after once."""
    if _structlog_request_id:
        _structlog_request_id[0].set(request_id)
    else:
        token = structlog.contextvars.bind_contextvars(request_id=request_id)["request_id"]
        _structlog_request_id.append(token.var)


def _restore_structlog_context(before: contextvars.Context) -> None:
    """Put every structlog context variable back to its value in ``before``.

    What ``clear_contextvars()`` then ``bind_contextvars(**previous)`` does,
    in one pass: values bound during the request are dropped, earlier ones
    come back.
    """
    prefix = _STRUCTLOG_PREFIX
    for var, value in contextvars.copy_context().items():
        if var.name.startswith(prefix):
            old = before.get(var, Ellipsis)
            if value is not old:
                var.set(old)


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
        metrics: count and time requests in this layer too, exactly as a
            :class:`~scalekit.observability.MetricsMiddleware` right behind it
            would (same series, labels and exclusions), for the cost of one
            layer instead of two. ``install()`` does this.
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
        metrics: RequestMetrics | None = None,
    ) -> None:
        if not header or not header.isascii():
            raise ConfigurationError(
                f"header must be a non-empty ASCII header name, got {header!r}"
            )
        self.app = app
        self.header = header
        self._header_key = header.lower().encode("latin-1")
        self.client_ip = ClientIP(trusted_proxies, header=ForwardedHeader.parse(forwarded_header))
        self.access_log = access_log
        self.logger = structlog.get_logger(logger_name)
        self.id_factory = id_factory
        self.quiet_paths = frozenset(quiet_paths)
        self._route_names = RouteNames()
        self.metrics = metrics

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

        before = contextvars.copy_context()
        _bind_request_id(request_id)
        id_token = _request_id.set(request_id)
        state = scope.setdefault("state", {})
        if type(state) is dict or isinstance(state, MutableMapping):  # request.state.request_id
            state["request_id"] = request_id
        if rejected:
            self.logger.warning(
                "request id rejected",
                reason=f"not {REQUEST_ID_PATTERN}",
                length=len(incoming or b""),
            )

        metrics = self.metrics
        if metrics is not None and not metrics.counts(scope):
            metrics = None
        if metrics is not None:
            method = normalise_method(scope["method"])
            gauge = metrics.metrics.gauge(method)
            gauge.inc()

        status = 0
        sent = 0
        started = False
        response_header = (header_key, request_id.encode("latin-1"))
        key_length = len(header_key)

        async def send_with_id(message: Message) -> None:
            nonlocal status, sent, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = [
                    header
                    for header in message.get("headers", ())
                    if len(header[0]) != key_length or header[0].lower() != header_key
                ]
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
                # (Metrics count it as 500 as they would behind this layer.)
                # JSON in the shape of scalekit's own 429, so an API's
                # clients parse every error alike.
                status = 500
                body = _INTERNAL_ERROR_BODY
                await send_with_id(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode("ascii")),
                        ],
                    }
                )
                await send_with_id({"type": "http.response.body", "body": body})
            raise
        finally:
            try:
                duration = time.perf_counter() - start
                if metrics is not None:
                    gauge.dec()
                route = self._route_names(scope)
                if metrics is not None:
                    names = metrics.route_names
                    # A response never started counts as 500, as MetricsMiddleware counts it.
                    metrics.metrics.observe(
                        method,
                        route if names.max_routes is None else names(scope),
                        status if started else 500,
                        duration,
                    )
                if self.access_log:
                    self._log_access(scope, route, request_id, status, sent, duration, error)
                    if error is not None:
                        _tag(error, _ERROR_LOGGED, True)
            finally:
                _request_id.reset(id_token)
                _restore_structlog_context(before)

    def _log_access(
        self,
        scope: Scope,
        route: str,
        request_id: str,
        status: int,
        sent: int,
        duration: float,
        error: Exception | None,
    ) -> None:
        path = scope["path"]
        fields: dict[str, Any] = {
            "method": scope["method"],
            "path": path,
            "route": route,
            "status": status,
            # to the microsecond; round(x * 1000) / 1000 is round(x, 3) at a quarter of the cost
            "duration_ms": round(duration * 1_000_000.0) / 1000.0,
            "bytes": sent,
            "client_ip": self.client_ip(scope),
            "user": _user_of(scope),
            "request_id": request_id,
        }
        if error is not None:
            fields["error"] = type(error).__name__
            writer = _line_writer
            if writer is None or not writer.in_force():
                # Not configured by configure_logging(): structlog's default console
                # renderer prints tracebacks with every frame's locals (the scope and
                # its Authorization header among them). Hand it the plain text instead.
                fields["exception"] = "".join(traceback.format_exception(error))
                self.logger.error("request", **fields)
            else:
                self.logger.error("request", exc_info=error, **fields)
            return
        quiet = self.quiet_paths
        if quiet and (path in quiet or (scope.get("root_path") and route_path(scope) in quiet)):
            level = "debug"
        else:
            level = "info"
        writer = _line_writer
        if writer is None or not writer(level, "request", fields):
            getattr(self.logger, level)("request", **fields)
