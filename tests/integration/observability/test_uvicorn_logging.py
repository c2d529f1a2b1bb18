"""Logs under a real uvicorn: one record per unhandled error, and no credential anywhere."""

from __future__ import annotations

import http.client
import json
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import ServerProcess, require_binary

SECRETS = {
    "Authorization": "Bearer auth-s3cret",
    "Proxy-Authorization": "Basic proxy-s3cret",
    "X-API-Key": "apikey-s3cret",
    "Cookie": "session=cookie-s3cret",  # last: the header loop's last local
}

APP = textwrap.dedent(
    """
    import logging

    import structlog
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from scalekit.observability import RequestContextMiddleware, configure_logging

    configure_logging(json=True, redact_headers=["X-API-Key"])


    async def boom(request):
        raise RuntimeError("handler failed")


    async def echo(request):
        structlog.get_logger("app").info("headers", headers=dict(request.headers))
        extra = {"scope_headers": request.scope["headers"]}
        logging.getLogger("app.stdlib").info("scope", extra=extra)
        response = PlainTextResponse("ok")
        response.set_cookie("session", "set-cookie-s3cret")
        structlog.get_logger("app").info("response", headers=dict(response.headers))
        return response


    async def ping(request):
        return PlainTextResponse("pong")


    app = Starlette(
        routes=[Route("/boom", boom), Route("/echo", echo), Route("/ping", ping)],
        middleware=[Middleware(RequestContextMiddleware, quiet_paths=["/ping"])],
    )
    """
)


class Uvicorn(ServerProcess):
    """``uvicorn log_app:app`` with uvicorn's default logging flags."""

    name = "uvicorn"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        (workdir / "log_app.py").write_text(APP)

    def argv(self) -> Sequence[str]:
        return [
            sys.executable, "-m", "uvicorn", "log_app:app",
            "--app-dir", str(self.workdir), "--host", self.host, "--port", str(self.port),
        ]  # fmt: skip

    def heal(self) -> None:
        """Each test starts its own server."""

    def probe(self) -> bool:
        return httpx.get(f"http://{self.host}:{self.port}/ping", timeout=1.0).status_code == 200


@pytest.fixture
def uvicorn(tmp_path: Path) -> Iterator[Uvicorn]:
    require_binary(sys.executable, "python3")
    server = Uvicorn(tmp_path / "uvicorn")
    try:
        server.start_on_free_port()
        yield server
    finally:
        server.stop()


def request(server: Uvicorn, path: str) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    connection.putrequest("GET", path)
    for name, value in SECRETS.items():  # http.client keeps this order
        connection.putheader(name, value)
    connection.endheaders()
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def records(server: Uvicorn) -> list[dict[str, Any]]:
    found = []
    for line in server.log_path.read_text().splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def test_an_unhandled_error_is_one_record_with_its_request_id_and_no_secret(
    uvicorn: Uvicorn,
) -> None:
    failed = request(uvicorn, "/boom")
    assert failed.status == 500
    request_id = failed.getheader("x-request-id")
    assert request_id
    echoed = request(uvicorn, "/echo")
    assert echoed.status == 200
    uvicorn.stop()  # flushes and closes the log

    text = uvicorn.log_path.read_text()
    lines = records(uvicorn)
    errors = [line for line in lines if line["level"] == "error"]
    assert len(errors) == 1, errors
    assert errors[0]["request_id"] == request_id
    assert errors[0]["exception"][0]["exc_type"] == "RuntimeError"
    assert "Exception in ASGI application" not in text
    for secret in [*SECRETS.values(), "set-cookie-s3cret"]:
        assert secret.split("=")[-1].split()[-1] not in text
    # The logged header fields are there, with their values redacted.
    logged = next(line for line in lines if line["event"] == "headers")["headers"]
    assert logged["authorization"] == logged["cookie"] == logged["x-api-key"] == "[redacted]"
    assert logged["host"].startswith("127.0.0.1")
    assert max(len(line) for line in text.splitlines()) < 20_000  # no locals dump
