"""scalekit.cache on a real redis-server: poisoning, foreign data, locks, metric labels."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from cache_helpers import Message, RecordingApp, Response, User, call
from harness import RedisServer
from prometheus_client import CollectorRegistry

from scalekit._clock import ManualClock
from scalekit.cache import CacheMiddleware, CacheRule, RedisCache
from scalekit.observability import subscribe_component_metrics

pytestmark = pytest.mark.anyio


@pytest.fixture
async def backend(redis_server: RedisServer) -> AsyncIterator[RedisCache]:
    cache = RedisCache.from_url(
        redis_server.url,
        prefix=f"h{uuid.uuid4().hex[:8]}:",
        socket_timeout=2,
        socket_connect_timeout=2,
    )
    try:
        yield cache
    finally:
        await cache.aclose()


def entry_keys_in(redis_server: RedisServer, backend: RedisCache) -> list[bytes]:
    client = redis_server.client()
    return [key for key in client.keys(f"{backend.prefix}*:e:*") if client.type(key) == b"hash"]


async def test_host_header_cannot_poison_other_hosts(backend: RedisCache) -> None:
    app = RecordingApp(body_of=lambda scope: dict(scope["headers"]).get(b"host", b"?"))
    middleware = CacheMiddleware(app, backend, [CacheRule("/items", ttl=60)])
    await call(middleware, headers=[("host", "evil.example")])
    victim = await call(middleware, headers=[("host", "good.example")])
    assert victim.body == b"good.example"
    assert (await call(middleware, headers=[("host", "evil.example")])).body == b"evil.example"
    assert app.runs == 2


async def test_api_key_user_is_never_served_to_another(backend: RedisCache) -> None:
    app = RecordingApp(body_of=lambda scope: f"secret of {scope['user'].identity}".encode())
    middleware = CacheMiddleware(app, backend, [CacheRule("/items", ttl=60)])
    await call(middleware, headers=[("x-api-key", "alice")], user=User("alice"))
    bob = await call(middleware, headers=[("x-api-key", "bob")], user=User("bob"))
    assert bob.body == b"secret of bob"
    anonymous = await call(middleware, user=User("", is_authenticated=False))
    assert b"alice" not in anonymous.body
    assert b"bob" not in anonymous.body


@pytest.mark.parametrize("kind", ["garbage-entry", "foreign-type", "garbage-fields"])
async def test_foreign_or_corrupt_entry_is_a_miss(
    redis_server: RedisServer, backend: RedisCache, kind: str
) -> None:
    app = RecordingApp()
    middleware = CacheMiddleware(app, backend, [CacheRule("/items", ttl=60)])
    await call(middleware)
    (key,) = entry_keys_in(redis_server, backend)
    client = redis_server.client()
    if kind == "garbage-entry":
        client.hset(key, "d", b"\x00\x00\x00\x05{oops")
    elif kind == "foreign-type":
        client.delete(key)
        client.set(key, b"someone else's string")
    else:
        client.hset(key, mapping={"t": "soon", "v": "\xff", "m": ""})
    calls = backend.calls
    response = await call(middleware)
    assert response.status == 200
    assert response.header("cache-status") == "scalekit; fwd=miss; stored"
    assert backend.calls - calls == 2  # lookup, store: no waiting for a filler that is not there
    assert (await call(middleware)).header("cache-status") == "scalekit; hit"
    assert backend.errors == 0  # not a backend failure: the breaker never hears of it
    assert app.runs == 2


async def test_head_on_a_stale_entry_takes_no_fill_lock(
    redis_server: RedisServer, backend: RedisCache
) -> None:
    clock = ManualClock()
    app = RecordingApp()
    middleware = CacheMiddleware(
        app, backend, [CacheRule("/items", ttl=10, stale_ttl=600)], clock=clock
    )
    await call(middleware)
    clock.advance(20)
    head = await call(middleware, method="HEAD")
    assert head.header("cache-status") == "scalekit; hit; ttl=-10"
    assert redis_server.client().keys(f"{backend.prefix}*:l:*") == []
    await call(middleware)  # stale, and refreshes
    assert app.runs == 2


async def test_no_follower_is_served_an_entry_older_than_an_invalidation(
    redis_server: RedisServer, backend: RedisCache
) -> None:
    other_instance = RedisCache.from_url(
        redis_server.url, prefix=backend.prefix, socket_timeout=2, socket_connect_timeout=2
    )
    app = RecordingApp()
    middleware = CacheMiddleware(app, backend, [CacheRule("/items", ttl=60, tags=["t"])])
    old = await call(middleware)
    reading, sending = anyio.Event(), anyio.Event()

    async def slow_client(message: Message) -> None:
        if message["type"] == "http.response.body":
            sending.set()
            await reading.wait()

    after: list[Response] = []
    try:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as group:
                group.start_soon(lambda: call(middleware, send_hook=slow_client))
                await sending.wait()
                await other_instance.invalidate("t")
                after.append(await call(middleware))
                reading.set()
    finally:
        await other_instance.aclose()
    assert after[0].body != old.body
    assert after[0].header("cache-status") == "scalekit; fwd=miss; stored"


async def test_invalidations_are_counted_once_per_rule_never_per_tag(
    backend: RedisCache,
) -> None:
    registry = CollectorRegistry()
    unsubscribe = subscribe_component_metrics(registry)
    rule = CacheRule(
        "/users/{uid}/tasks",
        ttl=60,
        tags=["user:{uid}:tasks", "all-tasks"],
        invalidate_on=("POST",),
        name="tasks",
    )
    middleware = CacheMiddleware(RecordingApp(), backend, [rule])
    try:
        for uid in range(5):
            await call(middleware, method="POST", path=f"/users/{uid}/tasks")
        await backend.invalidate("user:99:tasks")
    finally:
        unsubscribe()
    samples: list[Any] = [
        sample
        for family in registry.collect()
        if family.name == "scalekit_cache_events"
        for sample in family.samples
        if sample.name == "scalekit_cache_events_total"
    ]
    assert {(s.labels["rule"], s.labels["event"], s.value) for s in samples} == {
        ("tasks", "invalidate", 5.0)
    }
