"""scalekit.cache on a real 3-node Redis Cluster while the circuit breaker is open."""

from __future__ import annotations

import contextlib
import uuid

import pytest
from cache_helpers import RecordingApp, User, call
from harness import RedisCluster

from scalekit._clock import ManualClock
from scalekit.cache import CacheMiddleware, CacheRule, RedisCache
from scalekit.cache.keys import entry_keys

pytestmark = pytest.mark.anyio


def script_and_read_calls(cluster: RedisCluster) -> int:
    return sum(
        stats.get(name, {}).get("calls", 0)
        for stats in (node.info("commandstats") for node in cluster.nodes)
        for name in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_mget", "cmdstat_get")
    )


async def test_open_breaker_with_tags_in_other_slots_bypasses_and_sends_nothing(
    redis_cluster: RedisCluster,
) -> None:
    clock = ManualClock()
    backend = RedisCache.from_url(
        redis_cluster.url,
        prefix=f"b{uuid.uuid4().hex[:6]}:",
        clock=clock,
        socket_timeout=2,
        socket_connect_timeout=2,
    )
    tags = ["user:{user}", "everyone"]
    rule = CacheRule("/u", ttl=60, vary_user=True, tags=tags)
    keys = entry_keys("d", ["user:1", "everyone"], (), [])
    _, other = backend._split_tags(keys, ["user:1", "everyone"])
    assert other, "the second tag must live in another slot for this test"
    app = RecordingApp()
    middleware = CacheMiddleware(app, backend, [rule], clock=clock)
    try:
        assert (await call(middleware, path="/u", user=User("1"))).status == 200
        for _ in range(backend.breaker.failure_threshold):  # Redis "fails": the breaker opens
            with (
                contextlib.suppress(ConnectionError),
                backend.breaker.guard(failures=(ConnectionError,)),
            ):
                raise ConnectionError("down")
        before = script_and_read_calls(redis_cluster)
        responses = [await call(middleware, path="/u", user=User("1")) for _ in range(20)]
        assert {r.status for r in responses} == {200}
        assert {r.header("cache-status") for r in responses} == {
            "scalekit; fwd=bypass; detail=backend"
        }
        assert script_and_read_calls(redis_cluster) == before  # nothing was scheduled
        clock.advance(backend.breaker.cooldown)
        await call(middleware, path="/u", user=User("1"))
        assert (await call(middleware, path="/u", user=User("1"))).header("cache-status") == (
            "scalekit; hit"
        )
    finally:
        await backend.aclose()
