"""Shared helpers for the rate-limiter tests: a tiny app and a request runner."""

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


async def _boom(request: Request) -> PlainTextResponse:
    raise RuntimeError("handler failed")


def make_app() -> Starlette:
    """``/``, ``/items/{id}``, ``POST /login?ok=1|0`` and ``/boom``."""
    return Starlette(
        routes=[
            Route("/", _home),
            Route("/items/{id}", _home),
            Route("/other", _home),
            Route("/login", _login, methods=["POST"]),
            Route("/boom", _boom),
        ]
    )


def client(app: Any, peer: str = "203.0.113.7") -> httpx.AsyncClient:
    """An httpx client calling ``app`` in process, from TCP peer ``peer``."""
    transport = httpx.ASGITransport(app=app, client=(peer, 50000), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")
