"""A rate-limited, cached hit on one standalone Redis: one round trip, counted by a TCP proxy.

Issue 14, point 2: ``install()`` with one ``redis_url`` sends the cache's
lookup in the same write as the rate-limit check, so a hit behind a limit
costs one Redis round trip, not two; a limited request serves and stores
nothing, and an invalidation is never bypassed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from harness import RedisServer
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from scalekit import Settings, Stack, install
from scalekit.cache import CacheRule
from scalekit.ratelimit import Rule

pytestmark = pytest.mark.anyio


def notes_app(redis_url: str, computed: list[int], limit: str = "100/minute") -> Starlette:
    async def notes(request: Request) -> JSONResponse:
        computed.append(len(computed))
        return JSONResponse({"version": len(computed)})

    app = Starlette(routes=[Route("/notes", notes)])
    install(
        app,
        Settings(redis_url=redis_url),
        rate_rules=[Rule(limit, path="/notes")],
        cache_rules=[CacheRule("/notes", ttl=60, tags=["notes"])],
        registry=CollectorRegistry(),
    )
    return app


@asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def test_a_limited_cached_hit_costs_one_round_trip(
    redis_server: RedisServer, counting_proxy: Any
) -> None:
    redis_server.flushall()
    proxy = counting_proxy(redis_server.host, redis_server.port)
    computed: list[int] = []
    app = notes_app(proxy.url_for(redis_server.url), computed)
    async with serve(app) as client:
        first = await client.get("/notes")  # a miss and a store: whatever it costs
        assert first.status_code == 200
        assert "fwd=miss" in first.headers["cache-status"]
        proxy.reset()
        hits = [await client.get("/notes") for _ in range(3)]
        assert proxy.round_trips == 3  # one per hit: the limit and the lookup together
    assert computed == [0]
    for hit in hits:
        assert hit.status_code == 200
        assert hit.headers["cache-status"].endswith("hit")
        assert hit.json() == {"version": 1}
        assert hit.headers["ratelimit-policy"] == '"/notes";q=100;w=60'
        assert "ratelimit" in hit.headers
    assert [hit.headers["ratelimit"].split(";t=")[0] for hit in hits] == [
        f'"/notes";r={remaining}' for remaining in (98, 97, 96)
    ]


async def test_a_limited_request_is_neither_served_from_nor_stored_in_the_cache(
    redis_server: RedisServer, counting_proxy: Any
) -> None:
    redis_server.flushall()
    proxy = counting_proxy(redis_server.host, redis_server.port)
    computed: list[int] = []
    app = notes_app(proxy.url_for(redis_server.url), computed, limit="2/minute")
    async with serve(app) as client:
        answers = [await client.get("/notes") for _ in range(3)]
    assert [answer.status_code for answer in answers] == [200, 200, 429]
    assert "cache-status" not in answers[2].headers
    assert answers[2].json() != {"version": 1}
    assert computed == [0]


async def test_an_invalidation_is_never_bypassed_by_the_combined_lookup(
    redis_server: RedisServer, counting_proxy: Any
) -> None:
    redis_server.flushall()
    proxy = counting_proxy(redis_server.host, redis_server.port)
    computed: list[int] = []
    app = notes_app(proxy.url_for(redis_server.url), computed)
    async with serve(app) as client:
        assert (await client.get("/notes")).json() == {"version": 1}
        assert (await client.get("/notes")).headers["cache-status"].endswith("hit")
        assert await Stack.of(app).invalidate("notes")
        after = await client.get("/notes")
        assert after.json() == {"version": 2}
        assert "fwd=miss" in after.headers["cache-status"]
        proxy.reset()
        again = await client.get("/notes")
        assert proxy.round_trips == 1
    assert again.json() == {"version": 2}
    assert again.headers["cache-status"].endswith("hit")


async def test_a_flushed_script_cache_costs_the_combined_lookup_nothing_but_a_call(
    redis_server: RedisServer, counting_proxy: Any
) -> None:
    import redis

    redis_server.flushall()
    proxy = counting_proxy(redis_server.host, redis_server.port)
    computed: list[int] = []
    app = notes_app(proxy.url_for(redis_server.url), computed)
    async with serve(app) as client:
        await client.get("/notes")
        with redis.Redis(host=redis_server.host, port=redis_server.port) as direct:
            direct.script_flush()  # the lookup carried by the limiter answers NOSCRIPT
        reloaded = await client.get("/notes")
        proxy.reset()
        hit = await client.get("/notes")
        assert proxy.round_trips == 1
    assert reloaded.status_code == hit.status_code == 200
    assert reloaded.headers["cache-status"].endswith("hit")
    assert hit.headers["cache-status"].endswith("hit")
    assert computed == [0]


async def test_a_limiter_on_another_database_keeps_its_own_call(
    redis_server: RedisServer, counting_proxy: Any
) -> None:
    from scalekit import RateLimitOptions

    redis_server.flushall()
    proxy = counting_proxy(redis_server.host, redis_server.port)
    url = proxy.url_for(redis_server.url)
    app = Starlette(routes=[Route("/notes", lambda request: JSONResponse({}))])
    install(
        app,
        Settings(redis_url=url),
        rate_rules=[Rule("100/minute", path="/notes")],
        cache_rules=[CacheRule("/notes", ttl=60)],
        registry=CollectorRegistry(),
        ratelimit=RateLimitOptions(storage=url.rsplit("/", 1)[0] + "/1"),
    )
    async with serve(app) as client:
        await client.get("/notes")
        proxy.reset()
        hit = await client.get("/notes")
        assert proxy.round_trips == 2
    assert hit.headers["cache-status"].endswith("hit")
