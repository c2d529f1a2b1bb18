"""Tag version counters on a real redis-server and Cluster: a counter that vanishes
(evicted under an ``allkeys-*`` policy, deleted, lost in a failover) never makes an
entry stored before an invalidation current again."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from cache_helpers import RecordingApp, User, call
from harness import RedisCluster, RedisServer

from scalekit.cache import CacheMiddleware, CacheRule, RedisCache
from scalekit.cache.keys import entry_keys

pytestmark = pytest.mark.anyio


@pytest.fixture
async def backend(redis_server: RedisServer) -> AsyncIterator[RedisCache]:
    cache = RedisCache.from_url(
        redis_server.url,
        prefix=f"c{uuid.uuid4().hex[:8]}:",
        socket_timeout=5,
        socket_connect_timeout=5,
    )
    try:
        yield cache
    finally:
        await cache.aclose()


async def test_an_evicted_counter_never_serves_the_invalidated_body(
    redis_server: RedisServer, backend: RedisCache
) -> None:
    app = RecordingApp()
    middleware = CacheMiddleware(app, backend, [CacheRule("/items", ttl=300, tags=["items"])])
    first = await call(middleware, path="/items")
    assert first.header("cache-status") == "scalekit; fwd=miss; stored"
    assert (await call(middleware, path="/items")).header("cache-status") == "scalekit; hit"
    await backend.invalidate("items")
    assert redis_server.client().delete(backend._tag_key("items")) == 1  # evicted
    again = await call(middleware, path="/items")
    assert again.header("cache-status") == "scalekit; fwd=miss; stored"
    assert again.body != first.body
    assert app.runs == 2


async def test_a_counter_evicted_between_invalidations_does_not_restart_at_one(
    redis_server: RedisServer, backend: RedisCache
) -> None:
    # INCR on an absent counter gives 1 every time: an entry stored at 1, then an
    # eviction and an invalidation, would read 1 again.
    app = RecordingApp()
    middleware = CacheMiddleware(app, backend, [CacheRule("/items", ttl=300, tags=["items"])])
    direct = redis_server.client()
    await backend.invalidate("items")
    first = await call(middleware, path="/items")
    assert first.header("cache-status") == "scalekit; fwd=miss; stored"
    direct.delete(backend._tag_key("items"))
    await backend.invalidate("items")
    again = await call(middleware, path="/items")
    assert again.header("cache-status") == "scalekit; fwd=miss; stored"
    direct.delete(backend._tag_key("items"))
    backend.invalidate_sync("items")
    assert (await call(middleware, path="/items")).header("cache-status") == (
        "scalekit; fwd=miss; stored"
    )
    assert app.runs == 3


async def test_a_counter_lost_during_a_fill_refuses_the_store(
    redis_server: RedisServer, backend: RedisCache
) -> None:
    keys = entry_keys("d", ["items"], (), [])
    found = await backend.lookup(keys, ["items"], now=0, lock_ttl=5)
    redis_server.client().delete(backend._tag_key("items"))  # it may have been invalidated
    stored = await backend.store(
        keys,
        ["items"],
        data=b"x",
        versions=found.versions,
        fresh_until=10**12,
        expire=60,
        lock_token=found.lock_token,
    )
    assert not stored
    assert not (await backend.lookup(keys, ["items"], now=0, lock_ttl=None)).usable


async def test_counters_live_at_least_as_long_as_their_entries(
    redis_server: RedisServer, backend: RedisCache
) -> None:
    direct = redis_server.client()
    counter = backend._tag_key("items")
    middleware = CacheMiddleware(
        RecordingApp(), backend, [CacheRule("/items", ttl=3 * 86400, tags=["items"])]
    )
    await call(middleware, path="/items")
    assert direct.pttl(counter) > 2 * 86400 * 1000  # beyond COUNTER_TTL (a day)
    legacy = backend._tag_key("legacy")
    direct.set(legacy, 7)  # a counter written by an earlier version: persistent, small
    await backend.invalidate("legacy")
    assert direct.get(legacy) == b"8"
    assert direct.pttl(legacy) == -1


async def test_an_evicted_counter_in_another_cluster_slot_is_a_miss(
    redis_cluster: RedisCluster,
) -> None:
    backend = RedisCache.from_url(
        redis_cluster.url,
        prefix=f"c{uuid.uuid4().hex[:6]}:",
        socket_timeout=5,
        socket_connect_timeout=5,
    )
    tags = ["user:1", "everyone"]
    _, other = backend._split_tags(entry_keys("d", tags, (), []), tags)
    assert other, "the second tag must live in another slot for this test"
    app = RecordingApp()
    rule = CacheRule("/u", ttl=300, vary_user=True, tags=["user:{user}", "everyone"])
    middleware = CacheMiddleware(app, backend, [rule])
    try:
        first = await call(middleware, path="/u", user=User("1"))
        assert (await call(middleware, path="/u", user=User("1"))).header("cache-status") == (
            "scalekit; hit"
        )
        await backend.invalidate("everyone")
        await backend.client.delete(backend._tag_key("everyone"))
        again = await call(middleware, path="/u", user=User("1"))
        assert again.header("cache-status") == "scalekit; fwd=miss; stored"
        assert again.body != first.body
        await backend.client.delete(backend._tag_key("user:1"))  # the entry's own slot
        assert (await call(middleware, path="/u", user=User("1"))).header("cache-status") == (
            "scalekit; fwd=miss; stored"
        )
        assert app.runs == 3
    finally:
        await backend.aclose()
