"""Health against a real MariaDB primary + replica and a real redis-server.

The pool is a small duck-typed one (``query(sql)`` over one pymysql
connection): observability never imports ``scalekit.db``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pymysql
import pymysql.cursors
import pytest
from harness import MariaDBReplication, MariaDBServer, RedisServer
from starlette.applications import Starlette
from starlette.routing import Route

from scalekit._clock import ManualClock
from scalekit.observability import Health, PoolCheck, RedisCheck, ReplicaSetCheck


class TinyPool:
    """One pymysql connection behind a lock; reconnects after an error."""

    def __init__(self, server: MariaDBServer, name: str = "db") -> None:
        self.server = server
        self.name = name
        self.calls = 0
        self._conn: pymysql.connections.Connection[Any] | None = None
        self._lock = threading.Lock()

    def query(self, sql: str) -> list[dict[str, Any]]:
        with self._lock:
            self.calls += 1
            try:
                if self._conn is None:
                    self._conn = self.server.app_connect(
                        cursorclass=pymysql.cursors.DictCursor, connect_timeout=2, read_timeout=5
                    )
                with self._conn.cursor() as cursor:
                    cursor.execute(sql)
                    return list(cursor.fetchall())
            except Exception:
                self.close()
                raise

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                conn.close()
            except Exception:
                conn._force_close()  # type: ignore[no-untyped-call]


@pytest.fixture
def primary_pool(mariadb_replication: MariaDBReplication) -> Iterator[TinyPool]:
    pool = TinyPool(mariadb_replication.primary)
    pool.query("SELECT 1")  # connect before anything is counted
    pool.calls = 0
    yield pool
    pool.close()


def com_select(server: MariaDBServer) -> int:
    [row] = server.query("SHOW GLOBAL STATUS LIKE 'Com_select'")
    return int(row["Value"])


def client(health: Health) -> httpx.AsyncClient:
    app = Starlette(
        routes=[Route("/health/live", health.live), Route("/health/ready", health.ready)]
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.mark.anyio
async def test_200_concurrent_probes_run_one_select_on_the_server(
    mariadb_replication: MariaDBReplication, primary_pool: TinyPool
) -> None:
    primary = mariadb_replication.primary
    health = Health([PoolCheck("db", primary_pool)], clock=ManualClock())
    # Reading the counter may itself count; measure what one reading adds.
    first = com_select(primary)
    baseline = com_select(primary)
    per_reading = baseline - first
    statuses: list[int] = []
    async with client(health) as http:

        async def probe() -> None:
            statuses.append((await http.get("/health/ready")).status_code)

        async with anyio.create_task_group() as group:
            for _ in range(200):
                group.start_soon(probe)
    assert statuses == [200] * 200
    assert primary_pool.calls == 1
    assert com_select(primary) - baseline - per_reading == 1


@pytest.mark.anyio
async def test_non_critical_redis_down_is_200_warn(
    redis_server: RedisServer, primary_pool: TinyPool
) -> None:
    clock = ManualClock()
    redis_check = RedisCheck("redis", redis_server.url, timeout=0.5)
    health = Health([PoolCheck("db", primary_pool), redis_check], clock=clock)
    try:
        async with client(health) as http:
            response = await http.get("/health/ready")
            assert response.status_code == 200
            assert response.json()["status"] == "pass"

            redis_server.stop()
            clock.advance(1.0)
            response = await http.get("/health/ready")
            assert response.status_code == 200
            body = response.json()
            assert body["status"] == "warn"
            [entry] = body["checks"]["redis:responseTime"]
            assert entry["status"] == "fail"
            assert entry["output"] in {"ConnectionError", "TimeoutError"}
            assert body["checks"]["db:responseTime"][0]["status"] == "pass"
            assert (await http.get("/health/live")).status_code == 200

            redis_server.start()
            clock.advance(1.0)
            assert (await http.get("/health/ready")).json()["status"] == "pass"
    finally:
        await redis_check.aclose()


@pytest.mark.anyio
async def test_critical_primary_down_is_503_fail_and_live_stays_200(
    mariadb_replication: MariaDBReplication, primary_pool: TinyPool
) -> None:
    clock = ManualClock()
    health = Health([PoolCheck("db", primary_pool, critical=True)], clock=clock, timeout=3.0)
    async with client(health) as http:
        assert (await http.get("/health/ready")).status_code == 200
        mariadb_replication.primary.stop()
        try:
            clock.advance(1.0)
            response = await http.get("/health/ready")
            assert response.status_code == 503
            body = response.json()
            assert body["status"] == "fail"
            [entry] = body["checks"]["db:responseTime"]
            assert entry["status"] == "fail"
            assert entry["output"] in {"OperationalError", "InterfaceError", "timeout"}
            assert "app-secret" not in response.text
            assert "Traceback" not in response.text
            assert (await http.get("/health/live")).status_code == 200
        finally:
            mariadb_replication.primary.start()
        clock.advance(1.0)
        assert (await http.get("/health/ready")).status_code == 200
        assert (await http.get("/health/live")).status_code == 200


class Replicas:
    """Duck-typed replica set: ``replicas`` pools and ``max_lag``."""

    def __init__(self, *replicas: TinyPool, max_lag: float = 2.0) -> None:
        self.replicas = replicas
        self.max_lag = max_lag


@pytest.mark.anyio
async def test_replica_lag_is_the_observed_value(mariadb_replication: MariaDBReplication) -> None:
    replica = TinyPool(mariadb_replication.replica, name="replica1")
    clock = ManualClock()
    health = Health([ReplicaSetCheck("db-replicas", Replicas(replica))], clock=clock)
    try:
        report = await health.report()
        [entry] = report.body["checks"]["db-replicas:replicationLag"]
        assert entry["componentId"] == "replica1"
        assert entry["status"] == "pass"
        assert entry["observedUnit"] == "s"
        assert entry["observedValue"] == 0.0

        mariadb_replication.stop_replication()
        clock.advance(1.0)
        report = await health.report()
        [entry] = report.body["checks"]["db-replicas:replicationLag"]
        assert entry["status"] == "fail"
        assert entry["output"] == "replication stopped"
        assert report.http_status == 200  # replicas are not critical by default
    finally:
        replica.close()
