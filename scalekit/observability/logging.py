"""structlog set up for an application: JSON in production, readable on a terminal.

scalekit itself never configures logging: importing it changes nothing, and
its modules only log through :func:`structlog.get_logger`. An application
that wants scalekit's setup calls :func:`configure_logging` once at start.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from types import ModuleType
from typing import IO, Any, TextIO, cast

import structlog
from structlog.types import Processor

__all__ = ["configure_logging"]

_HANDLER_NAME = "scalekit"
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def _level_number(level: int | str) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(
            f"level={level!r} is not a logging level: use DEBUG, INFO, WARNING, ERROR or CRITICAL"
        )
    return number


def configure_logging(
    json: bool | None = None,
    level: int | str = "INFO",
    *,
    stream: IO[str] | None = None,
    uvicorn_access: bool = False,
) -> None:
    """Configure structlog and the standard library's logging for an application.

    Every line, whether logged through structlog or through :mod:`logging`
    (uvicorn's loggers included), goes through the same processors:
    contextvars first (so ``request_id`` is on every line of a request), the
    level, the logger name, an ISO 8601 UTC timestamp, then JSON or a
    readable console rendering. Calling it again replaces the previous setup.

    JSON is rendered with orjson when it is installed (``pip install orjson``
    roughly halves the cost of a log line), else with the standard library.

    Args:
        json: render JSON lines; None (the default) means JSON unless the
            stream is a terminal.
        level: the lowest level written (name or number).
        stream: where lines go (default ``sys.stdout``).
        uvicorn_access: keep uvicorn's own access log; off by default because
            :class:`~scalekit.observability.RequestContextMiddleware` writes
            a richer one.

    Raises:
        ValueError: ``level`` is not a logging level.
    """
    number = _level_number(level)
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
            tail = [structlog.processors.dict_tracebacks, _json_renderer(orjson, as_text=False)]
            factory = structlog.BytesLoggerFactory(file=binary)
        else:
            tail = [structlog.processors.dict_tracebacks, _json_renderer(orjson, as_text=True)]
        stdlib_tail = [structlog.processors.dict_tracebacks, _json_renderer(orjson, as_text=True)]
    else:
        tail = stdlib_tail = [structlog.dev.ConsoleRenderer(colors=_is_terminal(out))]

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.StackInfoRenderer(),
            *tail,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            _drop_color_message,
            timestamper,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *stdlib_tail],
    )
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
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


class _UTCTimestamp:
    """``timestamp``: ISO 8601 UTC with microseconds, as ``TimeStamper(fmt="iso", utc=True)``.

    Formats the date and time once per second and only appends the
    microseconds per line: a third of the cost of formatting a datetime.
    """

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: tuple[int, str] = (-1, "")

    def __call__(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        now = time.time()
        second = int(now)
        cache = self._cache
        if cache[0] != second:
            cache = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._cache = cache
        event_dict["timestamp"] = f"{cache[1]}.{int((now - second) * 1_000_000):06d}Z"
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
        return structlog.processors.JSONRenderer()
    dumps = orjson.dumps
    if not as_text:
        return structlog.processors.JSONRenderer(serializer=dumps)

    def dumps_text(value: Any, **options: Any) -> str:
        return str(dumps(value, **options).decode("utf-8"))

    return structlog.processors.JSONRenderer(serializer=dumps_text)


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # a closed stream
        return False
