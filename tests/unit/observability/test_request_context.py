"""RequestContextMiddleware: request ids, structlog context, the access line."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route, Router

from scalekit.observability import RequestContextMiddleware, current_request_id
from scalekit.observability.context import REQUEST_ID_PATTERN

log = structlog.get_logger("tests.app")


def log_in_thread() -> str:
    log.info("from thread", thread=threading.current_thread().name)
    return current_request_id() or ""


async def async_endpoint(request: Request) -> Response:
    log.info("from async")
    structlog.contextvars.bind_contextvars(bound_by_endpoint="yes")
    await run_in_threadpool(log_in_thread)
    return PlainTextResponse(current_request_id() or "")


def sync_endpoint(request: Request) -> Response:
    log.info("from sync")
    return PlainTextResponse(current_request_id() or "")


async def boom(request: Request) -> Response:
    log.info("about to fail")
    raise RuntimeError("kaboom")


async def item(request: Request) -> Response:
    return PlainTextResponse("x" * 7)


def make_app(*, inside: bool = True, **options: Any) -> Any:
    routes = [
        Route("/async", async_endpoint),
        Route("/sync", sync_endpoint),
        Route("/boom", boom),
        Mount("/api", routes=[Route("/items/{item_id}", item)]),
    ]
    if inside:  # added the usual way, inside Starlette's ServerErrorMiddleware
        return Starlette(
            routes=routes, middleware=[Middleware(RequestContextMiddleware, **options)]
        )
    return RequestContextMiddleware(Starlette(routes=routes), **options)


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as captured:
        yield captured


def client(app: Any, **kwargs: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=("10.1.2.3", 555))
    return httpx.AsyncClient(transport=transport, base_url="http://test", **kwargs)


def access_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in logs if line["event"] == "request"]


@pytest.mark.anyio
async def test_every_line_of_a_request_carries_its_id_and_only_its_own(
    logs: list[dict[str, Any]],
) -> None:
    async with client(make_app()) as http:
        first = await http.get("/async", headers={"X-Request-ID": "first-id"})
        second = await http.get("/sync", headers={"X-Request-ID": "second-id"})
        third = await http.get("/async")
    assert first.text == "first-id"
    assert first.headers["x-request-id"] == "first-id"
    assert second.text == "second-id"
    generated = third.headers["x-request-id"]
    assert third.text == generated
    assert len(generated) == 32

    by_event: dict[str, list[str]] = {}
    for line in logs:
        by_event.setdefault(line["event"], []).append(line.get("request_id"))
    assert by_event["from async"] == ["first-id", generated]
    assert by_event["from thread"] == ["first-id", generated]
    assert by_event["from sync"] == ["second-id"]
    assert by_event["request"] == ["first-id", "second-id", generated]
    # What the endpoint bound during the first request is gone in the second.
    sync_line = next(line for line in logs if line["event"] == "from sync")
    assert "bound_by_endpoint" not in sync_line
    assert structlog.contextvars.get_contextvars() == {}


@pytest.mark.anyio
async def test_context_bound_before_the_request_survives_it(logs: list[dict[str, Any]]) -> None:
    structlog.contextvars.bind_contextvars(service="tasks")
    try:
        async with client(make_app()) as http:
            await http.get("/sync")
        assert structlog.contextvars.get_contextvars() == {"service": "tasks"}
    finally:
        structlog.contextvars.clear_contextvars()


@pytest.mark.anyio
@pytest.mark.parametrize("inside", [True, False], ids=["add_middleware", "wrapping"])
async def test_a_500_from_an_unhandled_exception_carries_the_id(
    logs: list[dict[str, Any]], inside: bool
) -> None:
    async with client(make_app(inside=inside)) as http:
        response = await http.get("/boom", headers={"X-Request-ID": "err-1"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "err-1"
    if inside:  # answered by the middleware: JSON in the shape of the 429
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"error": "internal_error", "detail": "Internal Server Error"}
    [access] = access_lines(logs)
    assert access["status"] == 500
    assert access["error"] == "RuntimeError"
    assert access["log_level"] == "error"
    assert next(line for line in logs if line["event"] == "about to fail")["request_id"] == "err-1"


HOSTILE_IDS = [
    b"abc\ndef",
    b"a" * 10_240,
    "\u00e9t\u00e9".encode(),
    b"\xff\xfe",
    b"",
    b"a" * 129,
    b"has space",
    b"semi;colon",
    b"x\r\nSet-Cookie: a=b",
]


async def call_raw(app: Any, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[bytes, bytes]]:
    """Call the ASGI app with raw header bytes (httpx refuses to send some of them)."""
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/sync",
        "raw_path": b"/sync",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test"), *headers],
        "client": ("127.0.0.1", 1234),
        "server": ("test", 80),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    return start["status"], dict(start["headers"])


@pytest.mark.anyio
@pytest.mark.parametrize("hostile", HOSTILE_IDS, ids=lambda raw: repr(raw[:12]))
async def test_hostile_ids_are_replaced_and_never_logged(
    logs: list[dict[str, Any]], hostile: bytes
) -> None:
    status, headers = await call_raw(make_app(), [(b"x-request-id", hostile)])
    assert status == 200
    replaced = headers[b"x-request-id"].decode()
    assert replaced != hostile.decode("latin-1")
    assert len(replaced) == 32
    assert logs, "nothing was logged"
    for line in logs:
        assert line["request_id"] == replaced
        text = repr(line)
        if hostile:
            assert hostile.decode("latin-1") not in text
    rejected = [line for line in logs if line["event"] == "request id rejected"]
    assert len(rejected) == 1
    assert rejected[0]["log_level"] == "warning"


@pytest.mark.anyio
async def test_nginx_request_id_is_kept(logs: list[dict[str, Any]]) -> None:
    nginx_id = "0f3c2a9e8b7d6c5b4a3f2e1d0c9b8a7f"
    _status, headers = await call_raw(make_app(), [(b"x-request-id", nginx_id.encode())])
    assert headers[b"x-request-id"] == nginx_id.encode()
    assert not [line for line in logs if line["event"] == "request id rejected"]


@given(st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_an_id_is_kept_exactly_when_it_matches_the_pattern(raw: bytes) -> None:
    import re

    import anyio

    app = make_app(access_log=False)
    _status, headers = anyio.run(call_raw, app, [(b"x-request-id", raw)])
    kept = headers[b"x-request-id"] == raw
    assert kept == bool(re.fullmatch(REQUEST_ID_PATTERN.encode(), raw))
    assert re.fullmatch(REQUEST_ID_PATTERN.encode(), headers[b"x-request-id"])


@pytest.mark.anyio
async def test_the_access_line_is_canonical(logs: list[dict[str, Any]]) -> None:
    async with client(make_app(trusted_proxies=["10.0.0.0/8"])) as http:
        response = await http.get(
            "/api/items/42?q=1", headers={"X-Request-ID": "r1", "X-Forwarded-For": "203.0.113.9"}
        )
    assert response.status_code == 200
    [access] = access_lines(logs)
    assert access["method"] == "GET"
    assert access["path"] == "/api/items/42"
    assert access["route"] == "/api/items/{item_id}"
    assert access["status"] == 200
    assert access["bytes"] == 7
    assert access["client_ip"] == "203.0.113.9"
    assert access["user"] is None
    assert access["request_id"] == "r1"
    assert isinstance(access["duration_ms"], float)
    assert access["duration_ms"] >= 0
    assert access["log_level"] == "info"


@pytest.mark.anyio
async def test_client_ip_ignores_forwarded_headers_from_untrusted_peers(
    logs: list[dict[str, Any]],
) -> None:
    async with client(make_app()) as http:
        await http.get("/sync", headers={"X-Forwarded-For": "203.0.113.9"})
    assert access_lines(logs)[0]["client_ip"] == "10.1.2.3"


@pytest.mark.anyio
async def test_client_ip_reads_only_the_configured_forwarding_header(
    logs: list[dict[str, Any]],
) -> None:
    # behind nginx (appends to X-Forwarded-For) a client's own Forwarded
    # header reaches the app untouched; it must not choose the logged address
    async with client(make_app(trusted_proxies=["10.0.0.0/8"])) as http:
        await http.get(
            "/sync", headers={"X-Forwarded-For": "203.0.113.9", "Forwarded": "for=6.6.6.6"}
        )
    app = make_app(trusted_proxies=["10.0.0.0/8"], forwarded_header="x-real-ip")
    async with client(app) as http:
        await http.get("/sync", headers={"X-Real-IP": "198.51.100.4", "X-Forwarded-For": "6.6.6.6"})
    assert [line["client_ip"] for line in access_lines(logs)] == ["203.0.113.9", "198.51.100.4"]
    with pytest.raises(ValueError, match="forwarded_header must be one of"):
        make_app(inside=False, forwarded_header="via")


class HeaderAuth(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        name = conn.headers.get("x-user")
        return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None


@pytest.mark.anyio
async def test_the_access_line_names_the_authenticated_user(logs: list[dict[str, Any]]) -> None:
    app = Starlette(
        routes=[Route("/sync", sync_endpoint)],
        middleware=[
            Middleware(RequestContextMiddleware),
            Middleware(AuthenticationMiddleware, backend=HeaderAuth()),
        ],
    )
    async with client(app) as http:
        await http.get("/sync", headers={"X-User": "alice"})
        await http.get("/sync")
    assert [line["user"] for line in access_lines(logs)] == ["alice", None]


@pytest.mark.anyio
async def test_unmatched_paths_share_one_route_value(logs: list[dict[str, Any]]) -> None:
    async with client(make_app()) as http:
        for path in ("/nope", "/api/nothing", "/x/y/z"):
            await http.get(path)
    assert {line["route"] for line in access_lines(logs)} == {"<unmatched>"}
    assert {line["status"] for line in access_lines(logs)} == {404}


@pytest.mark.anyio
async def test_quiet_paths_log_at_debug(logs: list[dict[str, Any]]) -> None:
    async with client(make_app(quiet_paths=["/sync"])) as http:
        await http.get("/sync")
    assert access_lines(logs)[0]["log_level"] == "debug"


@pytest.mark.anyio
async def test_an_app_header_of_the_same_name_is_replaced(logs: list[dict[str, Any]]) -> None:
    async def sets_header(request: Request) -> Response:
        return PlainTextResponse("x", headers={"X-Request-ID": "from-app"})

    app = RequestContextMiddleware(Router([Route("/", sets_header)]))
    async with client(app) as http:
        response = await http.get("/", headers={"X-Request-ID": "mine"})
    assert response.headers.get_list("x-request-id") == ["mine"]


@pytest.mark.anyio
async def test_custom_header_and_id_factory(logs: list[dict[str, Any]]) -> None:
    app = make_app(header="X-Correlation-ID", id_factory=lambda: "fixed")
    async with client(app) as http:
        response = await http.get("/sync")
    assert response.headers["x-correlation-id"] == "fixed"
    assert "x-request-id" not in response.headers


def test_bad_header_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="header"):
        RequestContextMiddleware(Router([]), header="")


def test_bad_trusted_proxy_is_rejected() -> None:
    with pytest.raises(ValueError, match="trusted_proxies"):
        RequestContextMiddleware(Router([]), trusted_proxies=["not-an-ip"])


@pytest.mark.anyio
async def test_stdlib_logging_lines_carry_the_id_through_configure_logging() -> None:
    import io
    import json

    from scalekit.observability import configure_logging

    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    stdlib_logger = logging.getLogger("tests.stdlib")

    def stdlib_endpoint(request: Request) -> Response:
        stdlib_logger.info("stdlib line")
        return PlainTextResponse("ok")

    try:
        app = RequestContextMiddleware(Router([Route("/", stdlib_endpoint)]))
        async with client(app) as http:
            await http.get("/", headers={"X-Request-ID": "std-1"})
    finally:
        structlog.reset_defaults()
        for handler in list(logging.getLogger().handlers):
            if handler.get_name() == "scalekit":
                logging.getLogger().removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    stdlib_line = next(line for line in lines if line["event"] == "stdlib line")
    assert stdlib_line["request_id"] == "std-1"
    assert stdlib_line["logger"] == "tests.stdlib"
    access = next(line for line in lines if line["event"] == "request")
    assert access["request_id"] == "std-1"
    assert access["timestamp"].endswith("Z")


@pytest.mark.anyio
async def test_lifespan_and_websocket_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    middleware = RequestContextMiddleware(app)
    await middleware({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    await middleware({"type": "websocket", "headers": []}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan", "websocket"]
