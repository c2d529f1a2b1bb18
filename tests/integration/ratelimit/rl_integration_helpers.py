"""Helpers for the rate-limiter integration tests."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route


async def _home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def _login(request: Request) -> JSONResponse:
    ok = request.query_params.get("ok") == "1"
    return JSONResponse({"ok": ok}, status_code=200 if ok else 401)


def make_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/", _home),
            Route("/items/{id}", _home),
            Route("/other", _home),
            Route("/login", _login, methods=["POST"]),
        ]
    )


def client(app: Any, peer: str = "203.0.113.7") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(peer, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def command_calls(server: Any) -> dict[str, int]:
    """``INFO commandstats`` as {command: calls}."""
    stats = server.client().info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
