"""RedisCache's lookups on their held connection, on a real redis-server, counted.

A hit is one round trip whatever the path; lookups issued together share one
write and one read; a flushed script cache costs one extra call; after Redis
restarts the first call opens a fresh connection instead of a pooled stale one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from harness import CountingProxy, RedisServer

from scalekit._clock import ManualClock
from scalekit.cache import RedisCache
from scalekit.cache.errors import CacheBackendError, CacheUnavailable
from scalekit.cache.keys import EntryKeys
from scalekit.cache.pipe import ScriptPipe

pytestmark = pytest.mark.anyio


def keys(name: str) -> EntryKeys:
    return EntryKeys(base=f"{name}:b", variant=f"{name}:v", lock=f"{name}:l", vary=())


@pytest.fixture
async def proxied(
    redis_server: RedisServer, counting_proxy: Any
) -> AsyncIterator[tuple[RedisCache, CountingProxy]]:
    proxy: CountingProxy = counting_proxy(redis_server.host, redis_server.port)
    backend = RedisCache.from_url(
        proxy.url_for(redis_server.url), prefix=f"p{uuid.uuid4().hex[:8]}:", socket_timeout=5
    )
    assert isinstance(backend._lookup_pipe, ScriptPipe)
    await backend.lookup(keys("warm"), ["t"], now=time.time(), lock_ttl=None)  # connect
    try:
        yield backend, proxy
    finally:
        await backend.aclose()


async def test_a_lookup_is_one_round_trip_and_concurrent_ones_share_it(
    proxied: tuple[RedisCache, CountingProxy],
) -> None:
    backend, proxy = proxied
    proxy.reset()
    await backend.lookup(keys("one"), ["t"], now=time.time(), lock_ttl=5.0)
    assert proxy.round_trips == 1
    proxy.reset()
    found = await asyncio.gather(
        *(backend.lookup(keys(f"k{n}"), ["t"], now=time.time(), lock_ttl=5.0) for n in range(50))
    )
    assert proxy.round_trips == 1  # one write of 50 scripts, their 50 replies in order
    assert all(lookup.data is None and lookup.lock_token for lookup in found)  # each its own


async def test_a_flushed_script_cache_costs_one_more_call_then_none(
    redis_server: RedisServer, proxied: tuple[RedisCache, CountingProxy]
) -> None:
    backend, proxy = proxied
    with redis_server.client() as client:
        client.script_flush()
    proxy.reset()
    await backend.lookup(keys("flushed"), ["t"], now=time.time(), lock_ttl=None)
    assert proxy.round_trips == 2  # EVALSHA answered NOSCRIPT, then EVAL
    proxy.reset()
    await backend.lookup(keys("flushed"), ["t"], now=time.time(), lock_ttl=None)
    assert proxy.round_trips == 1


async def test_after_a_restart_the_trial_call_succeeds(redis_server: RedisServer) -> None:
    clock = ManualClock()
    backend = RedisCache.from_url(redis_server.url, prefix=f"r{uuid.uuid4().hex[:8]}:", clock=clock)
    try:
        await backend.lookup(keys("a"), ["t"], now=time.time(), lock_ttl=None)
        await backend.client.ping()  # a pooled connection too, soon stale
        redis_server.kill()
        for _ in range(backend.breaker.failure_threshold):
            with pytest.raises((CacheBackendError, CacheUnavailable)):
                await backend.lookup(keys("a"), ["t"], now=time.time(), lock_ttl=None)
        redis_server.start()
        clock.advance(backend.breaker.cooldown)
        found = await backend.lookup(keys("a"), ["t"], now=time.time(), lock_ttl=None)
        assert found.data is None
        assert backend.breaker.state.value == "closed"
    finally:
        await backend.aclose()
