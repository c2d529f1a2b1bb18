"""A planned Sentinel failover under load: the limiter's counters move with the promotion."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
import redis
from harness import SERVICE_NAME, RedisSentinel, wait_until
from rl_integration_helpers import client, make_app

from scalekit.ratelimit import RateLimitMiddleware, RedisRateLimitBackend, Rule, identity_tag

pytestmark = pytest.mark.anyio

LIMIT = 50


async def test_graceful_failover_under_load_never_admits_more_than_the_limit(
    redis_sentinel_factory: Any,
) -> None:
    # SENTINEL FAILOVER promotes the replica while the old master stays up and
    # accepts writes until the sentinels demote it (~10 s later). A limiter that
    # keeps its connection to the old master counts there, and those counts
    # are discarded when it resyncs: 100 admitted in 11 s under 50/minute.
    sentinel: RedisSentinel = redis_sentinel_factory()
    old_master = sentinel.master
    app = RateLimitMiddleware(
        make_app(),
        sentinel.url + "?socket_timeout=1&socket_connect_timeout=1",
        [Rule(f"{LIMIT}/minute", path="/", name="api")],
        strategy="fixed-window",  # a window that starts with the first hit: exact over 60 s
        on_backend_error="deny",  # a request the limiter could not count is not admitted
    )
    statuses: list[int] = []
    started = time.monotonic()
    try:
        async with client(app) as http:
            stop = anyio.Event()
            some_admitted = anyio.Event()

            async def load() -> None:
                # ~10 requests a second from each worker: the budget lasts
                # through the failover instead of being spent before it
                while not stop.is_set():
                    statuses.append((await http.get("/")).status_code)
                    if statuses.count(200) >= 5:
                        some_admitted.set()
                    await anyio.sleep(0.1)

            async with anyio.create_task_group() as group:
                group.start_soon(load)
                group.start_soon(load)
                await some_admitted.wait()
                assert isinstance(app.backend, RedisRateLimitBackend)
                follower = app.backend.sentinel_follower
                assert follower is not None
                with anyio.fail_after(10):
                    await follower.wait_subscribed()
                with sentinel.sentinels[0].client() as control:
                    control.execute_command("SENTINEL", "FAILOVER", SERVICE_NAME)
                await anyio.to_thread.run_sync(sentinel.wait_for_failover, 30.0)
                # until after the sentinels demoted the old master, which is
                # when a limiter still talking to it would move on
                await anyio.to_thread.run_sync(_wait_for_role, old_master, "slave", 30.0)
                await anyio.sleep(2.0)
                stop.set()
    finally:
        await app.aclose()

    admitted = statuses.count(200)
    assert statuses.count(429) > 0  # the load outlasted the budget
    assert admitted <= LIMIT, f"{admitted} admitted under {LIMIT}/minute"
    key = f"rl:{identity_tag('ip:203.0.113.7')}:api:{LIMIT}/60:fixed"
    with sentinel.master.client() as redis:
        counted = int(redis.hget(key, "c") or 0)
    assert counted == admitted  # every admission is counted on the surviving master
    assert time.monotonic() - started < 60  # all inside one fixed window


def _wait_for_role(server: Any, role: str, timeout: float) -> None:
    def has_role() -> bool:
        try:
            return bool(server.info("replication")["role"] == role)
        except redis.ConnectionError:  # the sentinels kill clients while they reconfigure it
            return False

    wait_until(has_role, timeout=timeout, what=f"{server} to become a {role}")
