"""Exactness across processes, on real Redis, the real Cluster and Sentinel."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from harness import RedisCluster, RedisSentinel, RedisServer, require_binary
from harness.process import ServerProcess
from rl_integration_helpers import client, make_app

from scalekit.ratelimit import RateLimitMiddleware, Rule, identity_tag

HERE = Path(__file__).resolve().parent


class UvicornApp(ServerProcess):
    """One ``uvicorn`` process serving ``rl_process_app:app`` against ``storage``."""

    name = "uvicorn"

    def __init__(self, workdir: Path, storage: str, prefix: str) -> None:
        super().__init__(workdir)
        self.storage = storage
        self.prefix = prefix

    def argv(self) -> Sequence[str]:
        return [
            sys.executable, "-m", "uvicorn", "rl_process_app:app",
            "--app-dir", str(HERE), "--host", self.host, "--port", str(self.port),
            "--workers", "1", "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip

    def start(self) -> None:
        # 50 concurrent requests on a shared 2-core machine: a 50 ms socket
        # timeout would fail open here and the test would measure the machine
        os.environ["RL_STORAGE"] = self.storage + "?socket_timeout=2&socket_connect_timeout=2"
        # A window that starts with the first hit: the burst is exact whenever
        # it runs (an epoch-aligned window could straddle a minute boundary).
        os.environ["RL_STRATEGY"] = "fixed-window"
        try:
            super().start()
        finally:
            del os.environ["RL_STORAGE"]
            del os.environ["RL_STRATEGY"]

    def heal(self) -> None:
        """Each test starts and stops its own processes."""

    def probe(self) -> bool:
        return httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@pytest.fixture
def app_processes(tmp_path: Path) -> Iterator[Any]:
    require_binary(sys.executable, "python3")
    started: list[UvicornApp] = []

    def start(storage: str, count: int = 3) -> list[UvicornApp]:
        for index in range(count):
            process = UvicornApp(tmp_path / f"app{len(started)}", storage, f"p{index}")
            started.append(process)
            process.start_on_free_port()
        return started[-count:]

    try:
        yield start
    finally:
        for process in started:
            process.stop()


async def _burst(urls: list[str], total: int, concurrency: int) -> list[int]:
    statuses: list[int] = []
    limiter = anyio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=10.0) as http:

        async def one(index: int) -> None:
            async with limiter:
                response = await http.get(urls[index % len(urls)] + "/")
                statuses.append(response.status_code)

        async with anyio.create_task_group() as group:
            for index in range(total):
                group.start_soon(one, index)
    return statuses


@pytest.mark.anyio
async def test_exactly_the_limit_across_three_processes_on_redis(
    redis_server: RedisServer, app_processes: Any
) -> None:
    redis_server.flushall()
    processes = app_processes(redis_server.url)
    statuses = await _burst([p.url for p in processes], total=200, concurrency=50)
    assert statuses.count(200) == 50
    assert statuses.count(429) == 150


@pytest.mark.anyio
async def test_exactly_the_limit_across_three_processes_on_the_cluster(
    redis_cluster: RedisCluster, app_processes: Any
) -> None:
    redis_cluster.flushall()
    processes = app_processes(redis_cluster.url)
    statuses = await _burst([p.url for p in processes], total=200, concurrency=50)
    assert statuses.count(200) == 50
    assert statuses.count(429) == 150


@pytest.mark.anyio
async def test_cluster_two_rules_one_call_and_nothing_consumed_on_rejection(
    redis_cluster: RedisCluster,
) -> None:
    redis_cluster.flushall()
    rules = [Rule("100/minute", name="wide"), Rule("2/minute", path="/items/{id}", name="narrow")]
    # a generous timeout: a call timed out by a busy machine would fail open
    url = redis_cluster.url + "?socket_timeout=2"
    app = RateLimitMiddleware(make_app(), url, rules, strategy="fixed-window")
    try:
        async with client(app) as http:
            assert (await http.get("/items/1")).status_code == 200
            assert (await http.get("/items/2")).status_code == 200
            for _ in range(5):
                assert (await http.get("/items/3")).status_code == 429
            response = await http.get("/other")
            assert response.headers["ratelimit"].startswith('"wide";r=97;')
    finally:
        await app.aclose()
    # both keys live on the node that owns the identity's hash tag
    tag = identity_tag("ip:203.0.113.7")
    owner = redis_cluster.node_for_key(tag)
    assert owner.client().exists(f"rl:{tag}:wide:100/60:fixed", f"rl:{tag}:narrow:2/60:fixed") == 2


@pytest.mark.anyio
async def test_sentinel_failover_limits_hold_on_the_promoted_master(
    redis_sentinel_factory: Any,
) -> None:
    sentinel: RedisSentinel = redis_sentinel_factory()
    url = sentinel.url + "?socket_timeout=2"  # the dead master refuses at once anyway
    app = RateLimitMiddleware(make_app(), url, [Rule("3/minute")], strategy="fixed-window")
    try:
        async with client(app) as http:
            assert (await http.get("/")).status_code == 200
            sentinel.kill_master()
            sentinel.wait_for_failover(30)
            # the first calls may land on the dead master and fail open; the
            # client then follows the sentinels to the promoted master (the
            # breaker's probe closes it within a second of that)
            for _ in range(300):
                await http.get("/")
                if (await http.get("/")).status_code == 429:
                    break
                await anyio.sleep(0.1)
            statuses = [(await http.get("/")).status_code for _ in range(5)]
            assert statuses == [429] * 5
    finally:
        await app.aclose()
