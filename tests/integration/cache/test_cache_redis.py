"""scalekit.cache on a real redis-server: round trips, isolation, failures."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from cache_helpers import RecordingApp, call
from harness import CountingProxy, RedisServer
from isolation import run_isolation

from scalekit._clock import ManualClock
from scalekit.cache import CacheMiddleware, CacheRule, RedisCache
from scalekit.cache.keys import entry_keys

pytestmark = pytest.mark.anyio


def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def proxied(
    redis_server: RedisServer, counting_proxy: Any
) -> AsyncIterator[tuple[RedisCache, CountingProxy]]:
    proxy: CountingProxy = counting_proxy(redis_server.host, redis_server.port)
    backend = RedisCache.from_url(proxy.url_for(redis_server.url), prefix=prefix())
    await backend.client.ping()
    try:
        yield backend, proxy
    finally:
        await backend.aclose()


def scan_counts(redis_server: RedisServer) -> tuple[int, int]:
    stats = redis_server.info("commandstats")
    return (
        stats.get("cmdstat_keys", {}).get("calls", 0),
        stats.get("cmdstat_scan", {}).get("calls", 0),
    )


async def test_round_trips_hit_1_miss_and_store_2_invalidate_1(
    redis_server: RedisServer, proxied: tuple[RedisCache, CountingProxy]
) -> None:
    backend, proxy = proxied
    before = scan_counts(redis_server)
    app = RecordingApp()
    middleware = CacheMiddleware(app, backend, [CacheRule("/items", ttl=60, tags=["items"])])
    await call(middleware, path="/items", query="warm=1")  # loads the scripts
    await call(middleware, path="/items", query="warm=1")
    proxy.reset()
    miss = await call(middleware)
    assert miss.header("cache-status") == "scalekit; fwd=miss; stored"
    assert proxy.round_trips == 2  # lookup + lock in one Lua call, store + unlock in one
    proxy.reset()
    hit = await call(middleware)
    assert hit.header("cache-status") == "scalekit; hit"
    assert proxy.round_trips == 1
    proxy.reset()
    await backend.invalidate("items")
    assert proxy.round_trips == 1
    assert (await call(middleware)).header("cache-status") == "scalekit; fwd=miss; stored"
    assert scan_counts(redis_server) == before


@pytest.mark.parametrize("entries", [10, 10_000])
async def test_invalidate_is_one_round_trip_whatever_the_entries(
    redis_server: RedisServer, proxied: tuple[RedisCache, CountingProxy], entries: int
) -> None:
    backend, proxy = proxied
    before = scan_counts(redis_server)
    direct = RedisCache.from_url(redis_server.url, prefix=backend.prefix, socket_timeout=5)
    tags = ["user:7:tasks"]
    keys = [entry_keys(f"d{n}", tags, (), []) for n in range(entries)]
    try:
        # the tag's counter, created by a first lookup: what RedisCache.store records
        current = (await direct.lookup(keys[0], tags, now=0, lock_ttl=None)).versions
        pipe = direct.client.pipeline(transaction=False)
        for key in keys:
            # What RedisCache.store writes, in one pipeline to fill fast.
            pipe.hset(
                direct.prefix + key.variant,
                mapping={"d": b"x", "t": 2_000_000_000_000, "v": current},
            )
            pipe.pexpire(direct.prefix + key.variant, 60_000)
        await pipe.execute()
        assert (await direct.lookup(keys[-1], tags, now=0, lock_ttl=None)).usable
        proxy.reset()
        await backend.invalidate("user:7:tasks")
        assert proxy.round_trips == 1
        for key in (keys[0], keys[-1]):
            found = await direct.lookup(key, tags, now=0, lock_ttl=None)
            assert found.data == b"x"
            assert not found.usable
    finally:
        await direct.aclose()
    assert scan_counts(redis_server) == before


async def test_isolation_on_redis_with_two_instances(redis_server: RedisServer) -> None:
    shared = prefix()
    first = RedisCache.from_url(
        redis_server.url, prefix=shared, socket_timeout=2, socket_connect_timeout=2
    )
    second = RedisCache.from_url(
        redis_server.url, prefix=shared, socket_timeout=2, socket_connect_timeout=2
    )
    try:
        await run_isolation(first, second, seed=2)
    finally:
        await first.aclose()
        await second.aclose()


async def test_redis_killed_during_1000_requests_never_5xx(redis_server: RedisServer) -> None:
    clock = ManualClock()
    backend = RedisCache.from_url(redis_server.url, prefix=prefix(), clock=clock)
    app = RecordingApp()
    middleware = CacheMiddleware(app, backend, [CacheRule("/items", ttl=600)], clock=clock)
    try:
        statuses = []
        for n in range(1000):
            if n == 300:
                redis_server.kill()
            response = await call(middleware, query=f"n={n % 20}")
            statuses.append(response.status)
        assert statuses.count(200) == 1000
        assert app.runs >= 700  # after the kill every request reached the app
        assert backend.errors >= 1
        assert backend.errors <= backend.breaker.failure_threshold
        redis_server.start()
        clock.advance(backend.breaker.cooldown)
        await call(middleware, query="after=1")
        await call(middleware, query="after=1")
        assert (await call(middleware, query="after=1")).header("cache-status") == "scalekit; hit"
    finally:
        await backend.aclose()


async def test_frozen_redis_breaker_lets_one_call_per_cooldown(redis_server: RedisServer) -> None:
    clock = ManualClock()
    backend = RedisCache.from_url(redis_server.url, prefix=prefix(), clock=clock)
    app = RecordingApp()
    middleware = CacheMiddleware(app, backend, [CacheRule("/items", ttl=600)], clock=clock)
    try:
        await call(middleware)
        assert (await call(middleware)).header("cache-status") == "scalekit; hit"
        redis_server.freeze()
        runs = app.runs
        statuses = [(await call(middleware)).status for _ in range(100)]
        assert statuses == [200] * 100
        assert app.runs == runs + 100
        calls = backend.calls
        for _ in range(3):
            clock.advance(backend.breaker.cooldown)
            for _ in range(20):
                assert (await call(middleware)).status == 200
            assert backend.calls == calls + 1  # one trial per cool-down
            calls = backend.calls
        redis_server.thaw()
        clock.advance(backend.breaker.cooldown)
        await call(middleware, query="thawed=1")
        assert (await call(middleware, query="thawed=1")).header("cache-status") == "scalekit; hit"
    finally:
        redis_server.thaw()
        await backend.aclose()


async def test_invalidate_failure_is_raised(redis_server: RedisServer) -> None:
    from scalekit.cache import CacheBackendError

    backend = RedisCache.from_url(redis_server.url, prefix=prefix())
    try:
        redis_server.kill()
        with pytest.raises(CacheBackendError, match="invalidate failed"):
            await backend.invalidate("t")
        with pytest.raises(CacheBackendError, match="invalidate failed"):
            await anyio.to_thread.run_sync(backend.invalidate_sync, "t")
    finally:
        redis_server.start()
        await backend.aclose()


async def test_invalidate_sync_from_worker_threads(redis_server: RedisServer) -> None:
    backend = RedisCache.from_url(
        redis_server.url, prefix=prefix(), socket_timeout=2, socket_connect_timeout=2
    )
    try:
        redis_server.client().set(f"{backend.prefix}{{t}}:v:t", 0)
        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(anyio.to_thread.run_sync, backend.invalidate_sync, "t")
        version = redis_server.client().get(f"{backend.prefix}{{t}}:v:t")
        assert version == b"20"
    finally:
        await backend.aclose()


async def test_stampede_of_100_in_one_process_on_redis(redis_server: RedisServer) -> None:
    backend = RedisCache.from_url(
        redis_server.url, prefix=prefix(), socket_timeout=2, socket_connect_timeout=2
    )
    app = RecordingApp()
    middleware = CacheMiddleware(app, backend, [CacheRule("/items", ttl=60)])
    responses = []

    async def one() -> None:
        responses.append(await call(middleware))

    try:
        async with anyio.create_task_group() as group:
            for _ in range(100):
                group.start_soon(one)
        assert app.runs == 1
        assert len(responses) == 100
        assert len({response.body for response in responses}) == 1
    finally:
        await backend.aclose()
