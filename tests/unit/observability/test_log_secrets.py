"""Logs hold no secrets: no traceback locals, no credential headers, one record per error."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import Message, Scope

from scalekit.observability import RequestContextMiddleware, configure_logging

SECRET = "s3cret-Bearer-token"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def fail_with_a_secret_in_a_local() -> None:
    authorization = f"Bearer {SECRET}"  # noqa: F841 - the local a traceback must not show
    raise ValueError("bad")


@pytest.mark.parametrize("as_json", [True, False])
def test_tracebacks_never_show_frame_locals(as_json: bool) -> None:
    stream = io.StringIO()
    configure_logging(json=as_json, stream=stream)
    try:
        fail_with_a_secret_in_a_local()
    except ValueError:
        structlog.get_logger().exception("structlog failed")
        logging.getLogger("stdlib").exception("stdlib failed")
    text = stream.getvalue()
    assert "structlog failed" in text
    assert "stdlib failed" in text
    assert "fail_with_a_secret_in_a_local" in text  # the traceback is there...
    assert SECRET not in text  # ...without its locals
    if as_json:
        for line in lines(stream):
            for frame in line["exception"][0]["frames"]:
                assert "locals" not in frame


def test_credential_headers_are_redacted_in_every_shape() -> None:
    stream = io.StringIO()
    configure_logging(json=True, stream=stream, redact_headers=["X-API-Key"])
    log = structlog.get_logger()
    log.info(
        "fields",
        authorization=SECRET,
        Cookie=SECRET,
        set_cookie=SECRET,
        proxy_authorization=SECRET,
        x_api_key=SECRET,
        accept="text/html",
    )
    log.info(
        "containers",
        headers={"Authorization": SECRET, "Accept": "text/html"},
        starlette=Headers({"cookie": SECRET, "x-api-key": SECRET, "accept": "text/html"}),
        asgi=[(b"set-cookie", SECRET.encode()), (b"accept", b"text/html")],
        scope={"headers": [(b"proxy-authorization", SECRET.encode())], "path": "/x"},
    )
    logging.getLogger("stdlib").info(
        "extra", extra={"authorization": SECRET, "headers": {"Cookie": SECRET}}
    )
    text = stream.getvalue()
    assert SECRET not in text
    fields, containers, extra = lines(stream)
    assert fields["authorization"] == fields["Cookie"] == fields["x_api_key"] == "[redacted]"
    assert fields["accept"] == "text/html"
    assert containers["headers"] == {"Authorization": "[redacted]", "Accept": "text/html"}
    assert containers["starlette"]["accept"] == "text/html"
    assert "text/html" in str(containers["asgi"][1])
    assert containers["scope"]["path"] == "/x"
    assert extra["authorization"] == "[redacted]"


def test_unknown_redact_header_names_are_refused() -> None:
    with pytest.raises(ValueError, match="redact_headers"):
        configure_logging(json=True, stream=io.StringIO(), redact_headers="X-API-Key")


async def _boom(request: Request) -> PlainTextResponse:
    raise RuntimeError("handler failed")


async def _run(app: Any, headers: list[tuple[bytes, bytes]]) -> tuple[list[Message], Exception]:
    """Call ``app`` as a server would; return what it sent and the exception that escaped."""
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/boom",
        "raw_path": b"/boom",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("203.0.113.7", 5000),
        "server": ("testserver", 80),
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    with pytest.raises(RuntimeError, match="handler failed") as raised:
        await app(scope, receive, send)
    return sent, raised.value


@pytest.mark.anyio
@pytest.mark.parametrize("access_log", [True, False])
async def test_an_unhandled_error_is_one_record_with_the_request_id(access_log: bool) -> None:
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    app = Starlette(
        routes=[Route("/boom", _boom)],
        middleware=[Middleware(RequestContextMiddleware, access_log=access_log)],
    )
    # The cookie comes last: it is the header loop's last local.
    sent, error = await _run(
        app, [(b"authorization", SECRET.encode()), (b"cookie", SECRET.encode())]
    )
    request_id = dict(sent[0]["headers"])[b"x-request-id"].decode()
    # What uvicorn does with an exception that reaches it (its own words);
    # the end-to-end test under a real uvicorn is in tests/integration/observability.
    logging.getLogger("uvicorn.error").error("Exception in ASGI application\n", exc_info=error)
    errors = [line for line in lines(stream) if line["level"] == "error"]
    assert len(errors) == 1
    assert errors[0]["request_id"] == request_id
    assert errors[0]["exception"][0]["exc_type"] == "RuntimeError"
    assert SECRET not in stream.getvalue()


SHARED = RuntimeError("handler failed")


async def _shared_boom(request: Request) -> PlainTextResponse:
    raise SHARED  # one exception object raised by every request


@pytest.mark.anyio
async def test_a_reraised_exception_object_carries_the_latest_request() -> None:
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    logged = Starlette(
        routes=[Route("/boom", _shared_boom)], middleware=[Middleware(RequestContextMiddleware)]
    )
    quiet = Starlette(
        routes=[Route("/boom", _shared_boom)],
        middleware=[Middleware(RequestContextMiddleware, access_log=False)],
    )
    await _run(logged, [(b"x-request-id", b"first")])
    _, error = await _run(quiet, [(b"x-request-id", b"second")])
    # Nothing logged the second failure yet: the server's line is kept, with its id.
    logging.getLogger("uvicorn.error").error("Exception in ASGI application\n", exc_info=error)
    errors = [line for line in lines(stream) if line["level"] == "error"]
    assert [line["request_id"] for line in errors] == ["first", "second"]


def test_a_wrapped_error_gets_the_request_id_of_the_one_it_wraps() -> None:
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    inner = RuntimeError("inner")
    inner._scalekit_request_id = "abc"  # type: ignore[attr-defined]  # as the middleware tags it
    try:
        raise ValueError("outer") from inner
    except ValueError as outer:
        logging.getLogger("uvicorn.error").error("Exception in ASGI application", exc_info=outer)
    [line] = lines(stream)
    assert line["request_id"] == "abc"


def test_cgi_spelled_header_names_are_redacted() -> None:
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    structlog.get_logger().info("environ", environ={"HTTP_AUTHORIZATION": SECRET, "PATH_INFO": "/"})
    [line] = lines(stream)
    assert line["environ"] == {"HTTP_AUTHORIZATION": "[redacted]", "PATH_INFO": "/"}


@pytest.mark.anyio
@pytest.mark.parametrize("orjson", [True, False])
async def test_logging_a_request_with_credentials_is_no_500(
    orjson: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Redacting a logged Request rebuilt it as its scope, whose exception
    # handlers are keyed by class: JSON refused the keys, the log call raised,
    # and every request carrying Authorization or Cookie answered 500.
    import httpx

    from scalekit.observability import logging as scalekit_logging

    if not orjson:
        monkeypatch.setattr(scalekit_logging, "_orjson", lambda: None)
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    log = structlog.get_logger("app")

    async def home(request: Request) -> PlainTextResponse:
        log.info("handling", request=request, scope=request.scope)
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", home)])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/", headers={"authorization": f"Bearer {SECRET}"})
    assert response.status_code == 200
    handled = [line for line in lines(stream) if line["event"] == "handling"]
    assert len(handled) == 1
    assert SECRET not in stream.getvalue()


@pytest.mark.anyio
async def test_an_unhandled_error_without_configure_logging_shows_no_locals() -> None:
    # structlog's defaults render tracebacks with rich and show_locals=True: the
    # middleware's own frames hold the scope, whose headers carry the credentials.
    structlog.reset_defaults()
    stream = io.StringIO()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(stream))

    async def boom(request: Request) -> PlainTextResponse:
        fail_with_a_secret_in_a_local()
        return PlainTextResponse("unreachable")

    app = Starlette(
        routes=[Route("/boom", boom)], middleware=[Middleware(RequestContextMiddleware)]
    )
    import httpx

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/boom", headers={"authorization": f"Bearer {SECRET}"})
    assert response.status_code == 500
    text = stream.getvalue()
    assert "fail_with_a_secret_in_a_local" in text  # the traceback is there...
    assert "ValueError" in text
    assert SECRET not in text  # ...without any frame's locals
