"""structlog set up for an application: JSON in production, readable on a terminal.

scalekit itself never configures logging: importing it changes nothing, and
its modules only log through :func:`structlog.get_logger`. An application
that wants scalekit's setup calls :func:`configure_logging` once at start.

What the setup never writes: the local variables of traceback frames (they
hold scopes, header values, passwords), and the values of credential headers
(:data:`SENSITIVE_HEADERS` plus any configured) wherever a line carries them
as fields. An unhandled request error is one record, with its ``request_id``.
"""

from __future__ import annotations

import contextvars
import importlib
import importlib.util
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType
from typing import IO, Any, TextIO, cast

import structlog
from structlog.tracebacks import ExceptionDictTransformer
from structlog.types import EventDict, Processor

from scalekit.errors import ConfigurationError
from scalekit.observability.context import logged_request_id, request_id_of, use_line_writer

__all__ = ["REDACTED", "SENSITIVE_HEADERS", "configure_logging"]

SENSITIVE_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization", "set-cookie"})
"""Headers whose values are never logged, whatever ``redact_headers`` adds."""

REDACTED = "[redacted]"
"""What a log line shows instead of a sensitive header's value."""

_HANDLER_NAME = "scalekit"
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def _level_number(level: int | str) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ConfigurationError(
            f"level={level!r} is not a logging level: use DEBUG, INFO, WARNING, ERROR or CRITICAL"
        )
    return number


def configure_logging(
    json: bool | None = None,
    level: int | str = "INFO",
    *,
    stream: IO[str] | None = None,
    uvicorn_access: bool = False,
    redact_headers: Iterable[str] = (),
) -> None:
    """Configure structlog and the standard library's logging for an application.

    Every line, whether logged through structlog or through :mod:`logging`
    (uvicorn's loggers included), goes through the same processors:
    contextvars first (so ``request_id`` is on every line of a request), the
    level, the logger name, an ISO 8601 UTC timestamp, then JSON or a
    readable console rendering. Calling it again replaces the previous setup.

    JSON is rendered with orjson when it is installed (``pip install orjson``
    roughly halves the cost of a log line), else with the standard library.

    Tracebacks never show frame locals. The values of ``Authorization``,
    ``Cookie``, ``Set-Cookie``, ``Proxy-Authorization`` and of the
    ``redact_headers`` are replaced by :data:`REDACTED` wherever a line
    carries them as a field (``cookie=...``, ``set_cookie=...``), in a
    mapping (``headers={...}``, Starlette ``Headers``) or in a list of
    ``(name, value)`` pairs (an ASGI scope's headers); free text in messages
    is not scanned. A request error that
    :class:`~scalekit.observability.RequestContextMiddleware` logged is not
    logged again by the server (uvicorn's "Exception in ASGI application"),
    and a server's error line gets the ``request_id`` of the failed request.

    Args:
        json: render JSON lines; None (the default) means JSON unless the
            stream is a terminal.
        level: the lowest level written (name or number).
        stream: where lines go (default ``sys.stdout``).
        uvicorn_access: keep uvicorn's own access log; off by default because
            :class:`~scalekit.observability.RequestContextMiddleware` writes
            a richer one.
        redact_headers: more header names whose values are never logged
            (``["X-API-Key"]``).

    Raises:
        ValueError: ``level`` is not a logging level, or ``redact_headers``
            is not a list of header names.
    """
    number = _level_number(level)
    redact = _Redact(_header_names(redact_headers))
    out = stream if stream is not None else sys.stdout
    as_json = json if json is not None else not _is_terminal(out)

    timestamper = _UTCTimestamp()
    tail: list[Processor]
    stdlib_tail: list[Processor]
    factory: Any = structlog.WriteLoggerFactory(file=cast(TextIO, out))
    if as_json:
        orjson = _orjson()
        binary = getattr(out, "buffer", None)
        if orjson is not None and binary is not None:
            # orjson renders bytes; writing them to the binary layer skips a decode.
            tail = [_TRACEBACKS, _json_renderer(orjson, as_text=False)]
            factory = structlog.BytesLoggerFactory(file=binary)
        else:
            tail = [_TRACEBACKS, _json_renderer(orjson, as_text=True)]
        stdlib_tail = [_TRACEBACKS, _json_renderer(orjson, as_text=True)]
    else:
        console = structlog.dev.ConsoleRenderer(
            colors=_is_terminal(out), exception_formatter=_console_tracebacks()
        )
        tail = stdlib_tail = [console]

    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        timestamper,
        structlog.processors.StackInfoRenderer(),
        redact,
        *tail,
    ]
    wrapper_class = structlog.make_filtering_bound_logger(number)
    structlog.configure(
        processors=processors,
        wrapper_class=wrapper_class,
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    use_line_writer(
        _DirectLines(
            processors,
            wrapper_class,
            factory,
            number,
            timestamper=timestamper,
            redact=redact,
            render=tail[-1],
        )
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            _drop_color_message,
            _request_id_of_error,
            timestamper,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact,
            *stdlib_tail,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(_not_logged_by_the_middleware)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(number)

    for name in _UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = not uvicorn_access


class _DirectLines:
    """Writes a line exactly as this setup's processors would, at a third of the cost.

    The request context middleware's access line goes through here (see
    :class:`~scalekit.observability.context.LineWriter`). The event dict is
    built as structlog builds it (fields, then ``event``, then the bound
    context, level and timestamp, in that order) and goes through the same
    redaction and renderer to the same output; what is skipped is structlog's
    logger machinery and the two processors that do nothing to such a line
    (stack info and exception rendering: a line whose bound context carries
    ``exc_info`` or ``stack_info`` takes the whole chain). It stands aside
    (returns False) as soon as structlog is configured differently: another
    ``structlog.configure``, ``reset_defaults``, or ``capture_logs`` (which
    edits the processor list in place).
    """

    __slots__ = (
        "_expected",
        "_factory",
        "_logger",
        "_min_level",
        "_processors",
        "_redact",
        "_render",
        "_timestamper",
        "_wrapper",
    )

    def __init__(
        self,
        processors: list[Processor],
        wrapper: type,
        factory: Any,
        min_level: int,
        *,
        timestamper: _UTCTimestamp,
        redact: _Redact,
        render: Processor,
    ) -> None:
        self._processors = processors  # the list structlog holds
        self._expected = tuple(processors)
        self._wrapper = wrapper
        self._factory = factory
        self._logger = factory()
        self._min_level = min_level
        self._timestamper = timestamper
        self._redact = redact
        self._render = render

    def _in_force(self) -> bool:
        config = structlog.get_config()
        processors = config["processors"]
        return (
            processors is self._processors
            and config["wrapper_class"] is self._wrapper
            and config["logger_factory"] is self._factory
            and tuple(processors) == self._expected
        )

    def in_force(self) -> bool:
        return self._in_force()

    def __call__(self, method_name: str, event: str, fields: dict[str, Any]) -> bool:
        if method_name not in _DIRECT_LEVELS or not self._in_force():
            return False
        if _DIRECT_LEVELS[method_name] < self._min_level:
            return True  # the filtering logger drops it too
        logger = self._logger
        event_dict: Any = fields
        event_dict["event"] = event
        # merge_contextvars, noting whether it brought anything but plain values
        plain = True
        prefix, cut = _CONTEXT_PREFIX, len(_CONTEXT_PREFIX)
        for var, value in contextvars.copy_context().items():
            name = var.name
            if value is not Ellipsis and name.startswith(prefix):
                key = name[cut:]
                if key not in event_dict:
                    event_dict[key] = value
                    if type(value) not in _SCALARS:
                        plain = False
        if "exc_info" in event_dict or "stack_info" in event_dict:
            for processor in self._expected[1:-1]:
                event_dict = processor(logger, method_name, event_dict)
        else:
            event_dict["level"] = method_name  # add_log_level, for these two levels
            event_dict["timestamp"] = self._timestamper.text()
            if not plain or not self._redact.all_safe(event_dict):
                event_dict = self._redact(logger, method_name, event_dict)
        logger.msg(self._render(logger, method_name, event_dict))
        return True


_DIRECT_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO}
_CONTEXT_PREFIX: str = getattr(structlog.contextvars, "STRUCTLOG_KEY_PREFIX", "structlog_")


_TRACEBACKS = structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
"""``dict_tracebacks`` without frame locals (structlog shows them by default)."""


def _console_tracebacks() -> Any:
    """rich's tracebacks without locals when rich is installed, else plain ones."""
    if importlib.util.find_spec("rich") is not None:
        return structlog.dev.RichTracebackFormatter(show_locals=False)
    return structlog.dev.plain_traceback


def _header_names(names: Iterable[str]) -> frozenset[str]:
    if isinstance(names, (str, bytes)) or not all(isinstance(name, str) and name for name in names):
        raise ConfigurationError(
            f"redact_headers must be a list of header names such as ['X-API-Key'], got {names!r}"
        )
    return SENSITIVE_HEADERS | {_normalise(name) for name in names}


def _normalise(name: str | bytes) -> str:
    text = name.decode("latin-1") if isinstance(name, bytes) else name
    # HTTP_AUTHORIZATION (CGI/WSGI spelling) names the same header.
    return text.lower().replace("_", "-").removeprefix("http-")


_SCALARS = frozenset({str, int, float, bool, type(None)})


class _Redact:
    """Replaces the values of sensitive headers wherever an event carries them.

    Looks at the event's keys, and into mappings and lists of ``(name, value)``
    pairs down to a few levels. A key already known to be harmless with a
    plain value (every field of the access line) costs two set lookups.
    """

    __slots__ = ("_names", "_safe")

    def __init__(self, names: frozenset[str]) -> None:
        self._names = names
        self._safe: set[str] = set()

    def _sensitive(self, key: Any) -> bool:
        if not isinstance(key, (str, bytes)):
            return False
        if _normalise(key) in self._names:
            return True
        if isinstance(key, str) and len(self._safe) < 4096:
            self._safe.add(key)
        return False

    def all_safe(self, event_dict: Mapping[str, Any]) -> bool:
        """True when every key is known harmless (the caller knows the values are plain)."""
        return self._safe.issuperset(event_dict)

    def __call__(self, logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
        safe = self._safe
        for key, value in event_dict.items():
            if type(value) in _SCALARS and key in safe:
                continue
            if self._sensitive(key):
                event_dict[key] = REDACTED
            elif type(value) not in _SCALARS:
                event_dict[key] = self._scrub(value, 0)
        return event_dict

    def _scrub(self, value: Any, depth: int) -> Any:
        if depth > 4 or type(value) in _SCALARS:
            return value
        if isinstance(value, Mapping):
            items = list(value.items())
            scrubbed = {
                key: REDACTED if self._sensitive(key) else self._scrub(item, depth + 1)
                for key, item in items
            }
            if any(scrubbed[key] is not item for key, item in items):
                return scrubbed
            return value
        if isinstance(value, (list, tuple)):
            if len(value) == 2 and self._sensitive(value[0]):
                return (value[0], REDACTED)
            scrubbed_items = [self._scrub(item, depth + 1) for item in value]
            if any(new is not old for new, old in zip(scrubbed_items, value, strict=True)):
                return scrubbed_items
            return value
        return value


def _not_logged_by_the_middleware(record: logging.LogRecord) -> bool:
    """Drop a server's record of an error the request context middleware already logged."""
    error = record.exc_info[1] if record.exc_info else None
    return error is None or logged_request_id(error) is None


def _request_id_of_error(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    """Give a server's error line the id of the request that failed (it logs outside it)."""
    if "request_id" not in event_dict:
        record = event_dict.get("_record")
        error = record.exc_info[1] if record is not None and record.exc_info else None
        for _ in range(8):  # an outer layer may have wrapped it: raise X from error
            if error is None:
                break
            request_id = request_id_of(error)
            if request_id is not None:
                event_dict["request_id"] = request_id
                break
            error = error.__cause__ or error.__context__
    return event_dict


class _UTCTimestamp:
    """``timestamp``: ISO 8601 UTC with microseconds, as ``TimeStamper(fmt="iso", utc=True)``.

    Formats the date and time once per second and only appends the
    microseconds per line: a third of the cost of formatting a datetime.
    """

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: tuple[int, str] = (-1, "")

    def text(self) -> str:
        """The timestamp of now."""
        now = time.time()
        second = int(now)
        cache = self._cache
        if cache[0] != second:
            cache = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._cache = cache
        return "%s.%06dZ" % (cache[1], (now - second) * 1_000_000)  # noqa: UP031 - faster

    def __call__(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        event_dict["timestamp"] = self.text()
        return event_dict


def _drop_color_message(logger: Any, method_name: str, event_dict: Any) -> Any:
    """uvicorn passes an ANSI-coloured copy of its message as an extra; keep the plain one."""
    event_dict.pop("color_message", None)
    return event_dict


def _orjson() -> ModuleType | None:
    try:
        return importlib.import_module("orjson")
    except ImportError:
        return None


def _json_renderer(orjson: ModuleType | None, *, as_text: bool) -> Processor:
    """JSON lines: orjson when installed (about twice as fast), else the standard library."""
    if orjson is None:
        return structlog.processors.JSONRenderer(serializer=_never_raising(json.dumps))
    dumps = orjson.dumps
    if not as_text:
        return structlog.processors.JSONRenderer(serializer=_never_raising(dumps))

    def dumps_text(value: Any, **options: Any) -> str:
        return str(dumps(value, **options).decode("utf-8"))

    return structlog.processors.JSONRenderer(serializer=_never_raising(dumps_text))


def _never_raising(dumps: Callable[..., Any]) -> Callable[..., Any]:
    """``dumps``, but a value JSON cannot hold is rendered rather than raised into the caller.

    A mapping with keys JSON refuses (an ASGI scope's exception handlers are
    keyed by class: redacting a logged ``Request`` turns it into that scope)
    made the log call raise, and the request a 500.
    """

    def serialize(value: Any, **options: Any) -> Any:
        try:
            return dumps(value, **options)
        except (TypeError, ValueError):
            return dumps(_json_safe(value, 0), **options)

    return serialize


def _json_safe(value: Any, depth: int) -> Any:
    """``value`` with every mapping key a string and cycles and depth cut by ``repr``."""
    if depth > 16:
        return repr(value)
    if isinstance(value, Mapping):
        return {
            key if isinstance(key, str) else repr(key): _json_safe(item, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_json_safe(item, depth + 1) for item in value]
    if type(value) in _SCALARS:
        return value
    return repr(value)


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # a closed stream
        return False
