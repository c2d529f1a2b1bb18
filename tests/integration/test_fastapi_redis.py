"""A limit declared on a FastAPI route, on a real redis-server: one round trip, same headers.

Issue 12 acceptance: the dependency limit on a route under
``APIRouter(prefix="/api")`` served with ``root_path="/svc"`` limits exactly
that route, costs one Redis round trip per request (counted by a TCP proxy),
and sends the same ``RateLimit`` headers as the equivalent middleware rule.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from harness import RedisServer
from prometheus_client import CollectorRegistry

from scalekit import RateLimitOptions, Settings, Stack, install
from scalekit.fastapi import cached, limit
from scalekit.ratelimit import Rule

pytestmark = pytest.mark.anyio

ROOT = "/svc"


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, root_path=ROOT, client=("203.0.113.7", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


def declared_app(redis_url: str) -> FastAPI:
    router = APIRouter(prefix="/api")

    @router.get("/search", dependencies=[Depends(limit("5/minute"))])
    async def search() -> dict[str, str]:
        return {"route": "search"}

    @router.get("/items")
    async def items() -> dict[str, str]:
        return {"route": "items"}

    app = FastAPI()
    app.include_router(router)
    install(app, Settings(redis_url=redis_url), registry=CollectorRegistry())
    return app


def middleware_app(redis_url: str) -> FastAPI:
    app = FastAPI()

    @app.get("/api/search")
    async def search() -> dict[str, str]:
        return {"route": "search"}

    install(
        app,
        Settings(redis_url=redis_url),
        rate_rules=[Rule("5/minute", path="/api/search")],
        registry=CollectorRegistry(),
        ratelimit=RateLimitOptions(key_prefix="rl-plain"),
    )
    return app


async def test_a_declared_limit_costs_one_round_trip_and_limits_only_its_route(
    redis_server: RedisServer, counting_proxy: Any
) -> None:
    redis_server.flushall()
    proxy = counting_proxy(redis_server.host, redis_server.port)
    app = declared_app(proxy.url_for(redis_server.url))
    async with serve(app) as client:
        await client.get(f"{ROOT}/api/items")  # no rule: no Redis call at all
        assert proxy.round_trips == 0
        first = await client.get(f"{ROOT}/api/search")  # loads the script
        assert first.status_code == 200
        proxy.reset()
        answers = [await client.get(f"{ROOT}/api/search") for _ in range(5)]
        assert proxy.round_trips == 5
        proxy.reset()
        others = {(await client.get(f"{ROOT}/api/items")).status_code for _ in range(10)}
        assert proxy.round_trips == 0
    assert [answer.status_code for answer in answers] == [200, 200, 200, 200, 429]
    assert others == {200}


async def test_declared_and_middleware_rules_send_the_same_headers_on_redis(
    redis_server: RedisServer,
) -> None:
    redis_server.flushall()
    answers = []
    for make in (declared_app, middleware_app):
        async with serve(make(redis_server.url)) as client:
            answers.append([await client.get(f"{ROOT}/api/search") for _ in range(6)])
    for declared, plain in zip(*answers, strict=True):
        assert declared.status_code == plain.status_code
        assert declared.headers["ratelimit-policy"] == plain.headers["ratelimit-policy"]
        assert (
            declared.headers["ratelimit"].split(";t=")[0]
            == (plain.headers["ratelimit"].split(";t=")[0])
        )
    assert answers[0][0].headers["ratelimit-policy"] == '"/api/search";q=5;w=60'
    assert answers[0][-1].status_code == 429


async def test_a_callable_limit_keeps_the_one_round_trip_budget(
    redis_server: RedisServer, counting_proxy: Any
) -> None:
    redis_server.flushall()
    proxy = counting_proxy(redis_server.host, redis_server.port)

    def plan(request: Any) -> str:
        return "100/minute" if request.headers.get("x-plan") == "pro" else "3/minute"

    app = FastAPI()

    @app.get("/api/export", dependencies=[Depends(limit(plan))])
    async def export() -> dict[str, str]:
        return {}

    install(app, Settings(redis_url=proxy.url_for(redis_server.url)), registry=CollectorRegistry())
    async with serve(app) as client:
        await client.get(f"{ROOT}/api/export", headers={"x-plan": "pro"})  # loads the script
        proxy.reset()
        pro = [await client.get(f"{ROOT}/api/export", headers={"x-plan": "pro"}) for _ in range(5)]
        free = [await client.get(f"{ROOT}/api/export") for _ in range(4)]
        assert proxy.round_trips == 9
    assert {answer.status_code for answer in pro} == {200}
    assert pro[-1].headers["ratelimit-policy"] == '"/api/export";q=100;w=60'
    assert [answer.status_code for answer in free] == [200, 200, 200, 429]
    assert free[0].headers["ratelimit-policy"] == '"/api/export";q=3;w=60'


def notes_app(redis_url: str, notes: list[str]) -> FastAPI:
    """The getting-started app: a cached list, and a write that invalidates it."""
    app = FastAPI()

    @app.get("/notes")
    @cached(ttl=30, tags=["notes"])
    async def list_notes() -> list[str]:
        return notes

    @app.post("/notes")
    async def add_note(request: Request, text: str) -> dict[str, object]:
        notes.append(text)
        return {"added": text, "invalidated": await Stack.of(request).invalidate("notes")}

    install(app, Settings(redis_url=redis_url), registry=CollectorRegistry())
    return app


async def test_a_write_during_a_redis_freeze_answers_200_not_500(
    redis_server: RedisServer,
) -> None:
    notes: list[str] = []
    app = notes_app(redis_server.url, notes)
    async with serve(app) as client:
        assert (await client.post("/notes", params={"text": "a"})).json()["invalidated"] is True
        redis_server.freeze()
        try:
            frozen = await client.post("/notes", params={"text": "b"})
            read = await client.get("/notes")
        finally:
            redis_server.thaw()
    assert frozen.status_code == 200
    assert frozen.json() == {"added": "b", "invalidated": False}
    assert read.json() == ["a", "b"]  # the cache is bypassed while Redis is away
