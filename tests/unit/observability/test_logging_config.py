"""configure_logging: one set of processors for structlog and stdlib (uvicorn too)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from scalekit.observability import configure_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    uvicorn = {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate,
                      logging.getLogger(name).disabled)
               for name in ("uvicorn", "uvicorn.error", "uvicorn.access")}  # fmt: skip
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, (saved, propagate, disabled) in uvicorn.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = saved
        logger.propagate = propagate
        logger.disabled = disabled


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_from_structlog_and_stdlib_share_processors() -> None:
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    structlog.contextvars.bind_contextvars(request_id="abc")
    structlog.get_logger("app").info("hello", answer=42)
    logging.getLogger("uvicorn.error").warning(
        "server says %s", "hi", extra={"color_message": "\x1b[36mhi\x1b[0m"}
    )
    logging.getLogger("uvicorn.access").info("GET / 200")  # off by default: ours is richer
    first, second = lines(stream)
    assert first["event"] == "hello"
    assert first["answer"] == 42
    assert first["level"] == "info"
    assert first["request_id"] == "abc"
    assert str(first["timestamp"]).endswith("Z")
    assert "T" in str(first["timestamp"])
    assert second["event"] == "server says hi"
    assert second["logger"] == "uvicorn.error"
    assert second["level"] == "warning"
    assert second["request_id"] == "abc"
    assert "color_message" not in second


def test_level_filters_both_paths() -> None:
    stream = io.StringIO()
    configure_logging(json=True, level="WARNING", stream=stream)
    structlog.get_logger().info("dropped")
    logging.getLogger("x").info("dropped too")
    structlog.get_logger().warning("kept")
    assert [line["event"] for line in lines(stream)] == ["kept"]


def test_exceptions_render_as_structured_tracebacks_in_json() -> None:
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    try:
        raise ValueError("bad")
    except ValueError:
        structlog.get_logger().exception("failed")
    [line] = lines(stream)
    assert line["exception"][0]["exc_type"] == "ValueError"  # type: ignore[index]


def test_console_rendering_when_not_json() -> None:
    stream = io.StringIO()
    configure_logging(json=False, stream=stream)
    structlog.get_logger().info("hello", key="value")
    text = stream.getvalue()
    assert "hello" in text
    assert "key=value" in text
    assert not text.startswith("{")


def test_json_is_the_default_off_a_terminal() -> None:
    stream = io.StringIO()  # not a TTY
    configure_logging(stream=stream)
    structlog.get_logger().info("x")
    assert lines(stream)[0]["event"] == "x"


def test_calling_twice_keeps_one_handler_and_uvicorn_access_can_stay() -> None:
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    configure_logging(json=True, stream=stream, uvicorn_access=True)
    logging.getLogger("uvicorn.access").info("GET / 200")
    assert [line["event"] for line in lines(stream)] == ["GET / 200"]


def test_bad_level_names_the_fix() -> None:
    with pytest.raises(ValueError, match="DEBUG, INFO"):
        configure_logging(level="LOUD")


def test_a_real_file_gets_whole_json_lines_from_both_paths(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "app.log"
    with path.open("w") as stream:  # has a binary layer: the fast path when orjson is there
        configure_logging(json=True, stream=stream)
        structlog.get_logger().info("one", n=1)
        logging.getLogger("lib").warning("two")
        structlog.get_logger().info("three", text="caf\u00e9")
    events = [json.loads(line)["event"] for line in path.read_text().splitlines()]
    assert events == ["one", "two", "three"]


def test_timestamps_match_structlogs_iso_utc_format() -> None:
    import re
    from datetime import UTC, datetime

    from scalekit.observability.logging import _UTCTimestamp

    stamp = _UTCTimestamp()
    before = datetime.now(tz=UTC)
    first = stamp(None, "info", {})["timestamp"]
    second = stamp(None, "info", {})["timestamp"]
    after = datetime.now(tz=UTC)
    for value in (first, second):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", value)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        assert before.replace(microsecond=0) <= parsed <= after
