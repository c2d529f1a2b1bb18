"""scalekit.cache across processes, on Redis Cluster and behind Sentinel."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest
from cache_helpers import RecordingApp, User, call
from harness import RedisCluster, RedisSentinel, RedisServer
from isolation import run_isolation

from scalekit._clock import ManualClock
from scalekit.cache import CacheMiddleware, CacheRule, RedisCache

pytestmark = pytest.mark.anyio
WORKER = Path(__file__).with_name("stampede_worker.py")


def test_stampede_across_4_processes_runs_the_app_once(redis_server: RedisServer) -> None:
    prefix = f"st{uuid.uuid4().hex[:8]}:"
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), redis_server.url, prefix, "4", "25"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = []
    for worker in workers:
        out, err = worker.communicate(timeout=90)
        assert worker.returncode == 0, err
        outputs += json.loads(out)
    assert redis_server.client().get(f"{prefix}runs") == b"1"
    assert len(outputs) == 100
    assert {(status, body) for status, _, body in outputs} == {(200, "computed")}


def evalsha_calls(cluster: RedisCluster) -> list[int]:
    return [
        node.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
        for node in cluster.nodes
    ]


async def test_cluster_hit_is_one_script_call_on_one_node(redis_cluster: RedisCluster) -> None:
    backend = RedisCache.from_url(
        redis_cluster.url,
        prefix=f"c{uuid.uuid4().hex[:6]}:",
        socket_timeout=2,
        socket_connect_timeout=2,
    )
    rule = CacheRule("/u/{uid}", ttl=60, vary_user=True, tags=["user:{user}", "all"])
    middleware = CacheMiddleware(RecordingApp(), backend, [rule])
    try:
        for identity in ("1", "2", "3"):
            await call(middleware, path=f"/u/{identity}", user=User(identity))
            before = evalsha_calls(redis_cluster)
            hit = await call(middleware, path=f"/u/{identity}", user=User(identity))
            assert hit.header("cache-status") == "scalekit; hit"
            deltas = [a - b for a, b in zip(evalsha_calls(redis_cluster), before, strict=True)]
            assert sorted(deltas) == [0, 0, 1]
        await backend.invalidate("all")
        miss = await call(middleware, path="/u/1", user=User("1"))
        assert miss.header("cache-status") == "scalekit; fwd=miss; stored"
    finally:
        await backend.aclose()


def keys_and_scans(cluster: RedisCluster) -> int:
    return sum(
        stats.get(name, {}).get("calls", 0)
        for stats in (node.info("commandstats") for node in cluster.nodes)
        for name in ("cmdstat_keys", "cmdstat_scan")
    )


async def test_isolation_on_redis_cluster_with_two_instances(redis_cluster: RedisCluster) -> None:
    before = keys_and_scans(redis_cluster)
    prefix = f"i{uuid.uuid4().hex[:6]}:"
    first = RedisCache.from_url(
        redis_cluster.url, prefix=prefix, socket_timeout=2, socket_connect_timeout=2
    )
    second = RedisCache.from_url(
        redis_cluster.url, prefix=prefix, socket_timeout=2, socket_connect_timeout=2
    )
    try:
        await run_isolation(first, second, seed=3)
    finally:
        await first.aclose()
        await second.aclose()
    assert keys_and_scans(redis_cluster) == before


async def test_sentinel_master_killed_requests_answered_and_hits_resume(
    redis_sentinel: RedisSentinel,
) -> None:
    clock = ManualClock()
    backend = RedisCache.from_url(
        redis_sentinel.url, prefix=f"s{uuid.uuid4().hex[:6]}:", clock=clock, socket_timeout=0.2
    )
    app = RecordingApp()
    middleware = CacheMiddleware(app, backend, [CacheRule("/items", ttl=600)], clock=clock)
    try:
        await call(middleware)
        assert (await call(middleware)).header("cache-status") == "scalekit; hit"
        redis_sentinel.kill_master()
        statuses: list[int] = []
        done = anyio.Event()

        async def failover() -> None:
            await anyio.to_thread.run_sync(redis_sentinel.wait_for_failover, 60.0)
            done.set()

        async with anyio.create_task_group() as group:
            group.start_soon(failover)
            while not done.is_set():
                statuses.append((await call(middleware)).status)
                await anyio.sleep(0.01)
        assert statuses
        assert set(statuses) == {200}
        status = ""
        for _ in range(50):
            clock.advance(backend.breaker.cooldown)
            status = (await call(middleware)).header("cache-status") or ""
            if status == "scalekit; hit":
                break
            await anyio.sleep(0.05)
        assert status == "scalekit; hit"
    finally:
        await backend.aclose()
