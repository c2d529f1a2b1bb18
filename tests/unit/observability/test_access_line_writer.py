"""The access line written directly is byte for byte what structlog writes.

configure_logging registers a line writer so the request context middleware
skips structlog's logger machinery; these tests write the same event both
ways, under every output configure_logging can choose and with awkward bound
context, and compare the output (timestamps aside). Also: the writer stands
aside whenever structlog is configured otherwise.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from scalekit.observability import configure_logging
from scalekit.observability import context as context_module

FIELDS: dict[str, Any] = {
    "method": "GET",
    "path": "/items/42",
    "route": "/items/{item_id}",
    "status": 200,
    "duration_ms": 1.234,
    "bytes": 1100,
    "client_ip": "203.0.113.9",
    "user": None,
    "request_id": "r-1",
}

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")

CONTEXTS: list[dict[str, Any]] = [
    {},
    {"tenant": "acme", "attempt": 2, "ratio": 0.5, "flag": True, "nothing": None},
    {"authorization": "Bearer secret-token"},  # a sensitive key: redacted
    {"headers": {"Cookie": "session=secret", "Accept": "*/*"}},  # a mapping: scrubbed
    {"pairs": [(b"x-api-key", b"secret")]},
    {"exc_info": None, "stack_info": False},  # popped by the processors the fast path skips
    {"request_id": "bound-earlier", "event": "shadowed"},  # never overrides the fields
    {"user": "bound-user"},
]


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    context_module.use_line_writer(None)


class BinaryStream(io.TextIOWrapper):
    """A text stream with a ``buffer`` (what orjson's bytes path writes to)."""


def streams() -> list[tuple[str, Any]]:
    binary = io.BytesIO()
    return [("text", io.StringIO()), ("binary", BinaryStream(binary, write_through=True))]


def output(stream: Any) -> str:
    if isinstance(stream, io.TextIOWrapper):
        stream.flush()
        value: bytes = stream.buffer.getvalue()  # type: ignore[attr-defined]
        return value.decode()
    text: str = stream.getvalue()
    return text


def both_ways(stream: Any, level: str) -> tuple[str, str]:
    writer = context_module._line_writer
    assert writer is not None
    start = len(output(stream))
    assert writer(level, "request", dict(FIELDS)) is True
    direct = output(stream)[start:]
    getattr(structlog.get_logger("scalekit.access"), level)("request", **FIELDS)
    through_structlog = output(stream)[start + len(direct) :]
    return TIMESTAMP.sub("<ts>", direct), TIMESTAMP.sub("<ts>", through_structlog)


@pytest.mark.parametrize("bound", CONTEXTS, ids=lambda bound: ",".join(bound) or "nothing")
@pytest.mark.parametrize("as_json", [True, False], ids=["json", "console"])
@pytest.mark.parametrize("stream_kind", ["text", "binary"])
def test_the_direct_line_is_what_structlog_writes(
    bound: dict[str, Any], as_json: bool, stream_kind: str
) -> None:
    stream = dict(streams())[stream_kind]
    configure_logging(json=as_json, stream=stream, redact_headers=["X-API-Key"])
    structlog.contextvars.bind_contextvars(**bound)
    for level in ("info", "debug"):
        direct, through_structlog = both_ways(stream, level)
        assert direct == through_structlog
    assert "secret" not in output(stream)


def test_levels_below_the_configured_one_are_dropped_both_ways() -> None:
    stream = io.StringIO()
    configure_logging(json=True, stream=stream, level="WARNING")
    direct, through_structlog = both_ways(stream, "info")
    assert direct == through_structlog == ""


def test_the_writer_stands_aside_when_structlog_is_configured_otherwise() -> None:
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    writer = context_module._line_writer
    assert writer is not None
    with structlog.testing.capture_logs() as captured:
        assert writer("info", "request", dict(FIELDS)) is False
    assert captured == []
    assert writer("info", "request", dict(FIELDS)) is True  # capture_logs restored the list
    structlog.configure(processors=[structlog.processors.JSONRenderer()])
    assert writer("info", "request", dict(FIELDS)) is False
    structlog.reset_defaults()
    assert writer("info", "request", dict(FIELDS)) is False
    assert writer("warning", "request", dict(FIELDS)) is False  # only debug and info
