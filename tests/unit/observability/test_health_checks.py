"""Health: live/ready, single flight and cache on the injected clock, timeouts, statuses."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from scalekit._clock import ManualClock
from scalekit.observability import (
    CallableCheck,
    CheckResult,
    Health,
    PoolCheck,
    RedisCheck,
    ReplicaSetCheck,
)


class CountingPool:
    """A duck-typed pool: ``query`` counts calls and can be made to fail."""

    def __init__(self) -> None:
        self.calls = 0
        self.down = False

    def query(self, sql: str) -> list[dict[str, Any]]:
        self.calls += 1
        if self.down:
            raise ConnectionRefusedError("mysql://app:s3cret@10.0.0.5:3306/tasks refused")
        return [{"1": 1}]


def app_for(health: Health) -> Starlette:
    return Starlette(
        routes=[Route("/health/live", health.live), Route("/health/ready", health.ready)]
    )


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at teardown so threads a test left blocked end."""
    event = threading.Event()
    yield event
    event.set()


@pytest.mark.anyio
async def test_concurrent_probes_share_one_run_while_the_clock_stands_still() -> None:
    pool = CountingPool()
    clock = ManualClock()
    health = Health([PoolCheck("db", pool)], clock=clock)
    statuses: list[int] = []
    async with client(app_for(health)) as http:

        async def probe() -> None:
            statuses.append((await http.get("/health/ready")).status_code)

        async with anyio.create_task_group() as group:
            for _ in range(200):
                group.start_soon(probe)
        assert statuses == [200] * 200
        assert pool.calls == 1
        await http.get("/health/ready")
        assert pool.calls == 1
        clock.advance(0.999)
        await http.get("/health/ready")
        assert pool.calls == 1
        clock.advance(0.001)
        await http.get("/health/ready")
        assert pool.calls == 2


@pytest.mark.anyio
async def test_body_follows_the_health_check_draft() -> None:
    clock = ManualClock(wall=1_764_385_200.0)
    health = Health([PoolCheck("db", CountingPool())], clock=clock, version="1", service_id="api")
    async with client(app_for(health)) as http:
        response = await http.get("/health/ready")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/health+json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["status"] == "pass"
    assert body["version"] == "1"
    assert body["serviceId"] == "api"
    [entry] = body["checks"]["db:responseTime"]
    assert entry["componentType"] == "datastore"
    assert entry["observedUnit"] == "ms"
    assert entry["observedValue"] >= 0
    assert entry["status"] == "pass"
    assert entry["time"] == "2025-11-29T03:00:00.000Z"
    assert "output" not in entry


@pytest.mark.anyio
async def test_a_check_that_never_returns_fails_with_timeout(release: threading.Event) -> None:
    async def hangs() -> None:
        await anyio.sleep_forever()

    calls = 0

    def blocks() -> None:
        nonlocal calls
        calls += 1
        release.wait()

    clock = ManualClock()
    health = Health(
        [CallableCheck("async-hang", hangs), CallableCheck("sync-hang", blocks, critical=False)],
        timeout=0.05,
        clock=clock,
    )
    async with client(app_for(health)) as http:
        response = await http.get("/health/ready")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "fail"
        for key in ("async-hang:status", "sync-hang:status"):
            [entry] = body["checks"][key]
            assert entry["status"] == "fail"
            assert entry["output"] == "timeout"
        # The blocked thread is not joined by a second one: the next run fails at once.
        clock.advance(5)
        again = (await http.get("/health/ready")).json()
        assert again["checks"]["sync-hang:status"][0]["output"] == "timeout"
        assert calls == 1
        assert (await http.get("/health/live")).status_code == 200


@pytest.mark.anyio
async def test_critical_and_non_critical_failures() -> None:
    primary = CountingPool()
    cache = CountingPool()
    clock = ManualClock()
    health = Health(
        [PoolCheck("db", primary), PoolCheck("cache-db", cache, critical=False)], clock=clock
    )
    async with client(app_for(health)) as http:
        assert (await http.get("/health/ready")).json()["status"] == "pass"

        cache.down = True
        clock.advance(1)
        response = await http.get("/health/ready")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "warn"
        assert body["checks"]["cache-db:responseTime"][0]["status"] == "fail"
        assert body["checks"]["cache-db:responseTime"][0]["output"] == "ConnectionRefusedError"
        assert (await http.get("/health/live")).status_code == 200

        primary.down = True
        clock.advance(1)
        response = await http.get("/health/ready")
        assert response.status_code == 503
        assert response.json()["status"] == "fail"
        assert "s3cret" not in response.text
        assert "mysql://" not in response.text
        assert "Traceback" not in response.text
        assert (await http.get("/health/live")).status_code == 200

        primary.down = cache.down = False
        clock.advance(1)
        assert (await http.get("/health/ready")).status_code == 200


@pytest.mark.anyio
async def test_draining_makes_ready_503_and_leaves_live_alone() -> None:
    pool = CountingPool()
    health = Health([PoolCheck("db", pool)], clock=ManualClock())
    async with client(app_for(health)) as http:
        assert (await http.get("/health/ready")).status_code == 200
        health.start_draining()
        assert health.draining
        response = await http.get("/health/ready")
        assert response.status_code == 503
        assert response.json() == {"status": "fail", "output": "draining"}
        assert (await http.get("/health/live")).status_code == 200
        health.stop_draining()
        assert (await http.get("/health/ready")).status_code == 200
    assert pool.calls == 1


@pytest.mark.anyio
async def test_live_checks_nothing() -> None:
    pool = CountingPool()
    health = Health([PoolCheck("db", pool)])
    async with client(app_for(health)) as http:
        response = await http.get("/health/live")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/health+json"
    assert response.json() == {"status": "pass"}
    assert pool.calls == 0


class PingPool:
    def __init__(self) -> None:
        self.pings = 0

    async def aping(self) -> None:
        self.pings += 1


class AsyncQueryPool:
    def __init__(self) -> None:
        self.sql: list[str] = []

    async def aquery(self, sql: str) -> list[dict[str, Any]]:
        self.sql.append(sql)
        return []


class FakeReplicaSet:
    def __init__(self, primary: Any) -> None:
        self.primary = primary


@pytest.mark.anyio
async def test_pool_check_duck_typing() -> None:
    ping, aquery, counting = PingPool(), AsyncQueryPool(), CountingPool()
    health = Health(
        [
            PoolCheck("a", ping),
            PoolCheck("b", aquery, sql="SELECT 2"),
            PoolCheck("c", FakeReplicaSet(counting)),
        ]
    )
    report = await health.report()
    assert report.status == "pass"
    assert ping.pings == 1
    assert aquery.sql == ["SELECT 2"]
    assert counting.calls == 1
    with pytest.raises(TypeError, match="ping"):
        PoolCheck("d", object())


def status_row(lag: int | None, running: str = "Yes") -> dict[str, Any]:
    return {
        "Slave_IO_Running": running,
        "Slave_SQL_Running": "Yes",
        "Seconds_Behind_Master": lag,
    }


class ReplicaPool:
    def __init__(self, name: str, rows: list[dict[str, Any]] | Exception) -> None:
        self.name = name
        self.rows = rows

    def query(self, sql: str) -> list[dict[str, Any]]:
        if isinstance(self.rows, Exception):
            raise self.rows
        return self.rows


class Replicas:
    def __init__(self, *replicas: ReplicaPool, max_lag: float = 2.0) -> None:
        self.replicas = replicas
        self.max_lag = max_lag


@pytest.mark.anyio
async def test_replica_set_check_reports_lag_per_replica() -> None:
    replicas = Replicas(
        ReplicaPool("r1", [status_row(0)]),
        ReplicaPool("r2", [status_row(7)]),
        ReplicaPool("r3", [status_row(None, running="No")]),
        ReplicaPool("r4", OSError("down")),
    )
    report = await Health([ReplicaSetCheck("replicas", replicas)]).report()
    entries = {e["componentId"]: e for e in report.body["checks"]["replicas:replicationLag"]}
    assert entries["r1"]["status"] == "pass"
    assert entries["r1"]["observedValue"] == 0.0
    assert entries["r1"]["observedUnit"] == "s"
    assert entries["r2"]["status"] == "warn"
    assert entries["r2"]["observedValue"] == 7.0
    assert entries["r3"]["status"] == "fail"
    assert entries["r4"]["status"] == "fail"
    assert report.status == "warn"
    assert report.http_status == 200


@pytest.mark.anyio
async def test_replica_set_check_uses_replica_lags_when_offered() -> None:
    class WithLags:
        def replica_lags(self) -> dict[str, float | None]:
            return {"r1": 0.5}

    report = await Health([ReplicaSetCheck("replicas", WithLags(), critical=True)]).report()
    [entry] = report.body["checks"]["replicas:replicationLag"]
    assert entry["observedValue"] == 0.5
    assert report.status == "pass"


@pytest.mark.anyio
async def test_redis_check_with_a_client_and_with_a_dead_url() -> None:
    import socket

    import fakeredis

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    up = RedisCheck("redis", fakeredis.FakeAsyncRedis())
    blocking = RedisCheck("redis-sync", fakeredis.FakeRedis())  # pinged in a thread
    down = RedisCheck("redis-down", f"redis://:hunter2@127.0.0.1:{port}/0", timeout=0.5)
    report = await Health([up, blocking, down]).report()
    assert report.body["checks"]["redis:responseTime"][0]["status"] == "pass"
    assert report.body["checks"]["redis-sync:responseTime"][0]["status"] == "pass"
    failed = report.body["checks"]["redis-down:responseTime"][0]
    assert failed["status"] == "fail"
    assert failed["output"] == "ConnectionError"
    assert "hunter2" not in repr(report.body)
    assert report.status == "warn"
    assert report.http_status == 200
    await down.aclose()


def test_redis_check_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        RedisCheck("redis", "http://not-redis")
    with pytest.raises(TypeError, match="ping"):
        RedisCheck("redis", 42)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("returned", "status", "value"),
    [
        (None, "pass", None),
        (True, "pass", None),
        (False, "fail", None),
        ("warn", "warn", None),
        (12.5, "pass", 12.5),
        (CheckResult("warn", 3, "items", "backlog"), "warn", 3),
    ],
)
async def test_callable_check_return_values(returned: Any, status: str, value: Any) -> None:
    check = CallableCheck("queue", lambda: returned, critical=True, observed_unit="items")
    report = await Health([check]).report()
    [entry] = report.body["checks"]["queue:status"]
    assert entry["status"] == status
    assert entry.get("observedValue") == value


@pytest.mark.anyio
async def test_callable_check_error_output_is_only_the_class_name() -> None:
    def fails() -> None:
        raise RuntimeError("password=hunter2 at mysql://root:hunter2@db")

    report = await Health([CallableCheck("x", fails)]).report()
    [entry] = report.body["checks"]["x:status"]
    assert entry["output"] == "RuntimeError"
    assert "hunter2" not in repr(report.body)
    assert report.http_status == 503


@pytest.mark.anyio
async def test_checks_run_concurrently() -> None:
    both_started = anyio.Event()
    started = 0

    async def waits_for_the_other() -> None:
        nonlocal started
        started += 1
        if started == 2:
            both_started.set()
        await both_started.wait()

    health = Health(
        [CallableCheck("a", waits_for_the_other), CallableCheck("b", waits_for_the_other)],
        timeout=30,
    )
    assert (await health.report()).status == "pass"


@pytest.mark.anyio
async def test_a_check_timeout_overrides_the_health_timeout() -> None:
    async def slow() -> None:
        await anyio.sleep_forever()

    health = Health([CallableCheck("slow", slow, timeout=0.01)], timeout=60)
    report = await health.report()
    assert report.body["checks"]["slow:status"][0]["output"] == "timeout"


def test_configuration_errors() -> None:
    with pytest.raises(ValueError, match="timeout"):
        Health([], timeout=0)
    with pytest.raises(ValueError, match="cache_ttl"):
        Health([], cache_ttl=-1)
    with pytest.raises(ValueError, match="db:responseTime"):
        Health([PoolCheck("db", CountingPool()), PoolCheck("db", CountingPool())])
    with pytest.raises(ValueError, match="name"):
        CallableCheck("a:b", lambda: None)
    with pytest.raises(TypeError):
        Health([object()])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="status"):
        CheckResult("ok")


@pytest.mark.anyio
async def test_no_checks_is_pass() -> None:
    report = await Health().report()
    assert report.status == "pass"
    assert report.body == {"status": "pass", "checks": {}}
