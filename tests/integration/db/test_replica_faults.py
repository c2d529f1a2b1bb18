"""ReplicaSet on a real primary + GTID replica under faults: reads fall back, pins hold."""

from __future__ import annotations

import concurrent.futures
import contextvars
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from db_helpers import TABLE, Pools, count_statements, marker
from harness import APP_DATABASE, APP_PASSWORD, CountingProxy, MariaDBReplication
from harness.ports import free_port, wait_until

from scalekit import events
from scalekit._clock import ManualClock
from scalekit.db import (
    NoHealthyServer,
    ReplicaSet,
    RequestScopeMiddleware,
    WriteOutcomeUnknown,
    request_scope,
)


@pytest.fixture
def routing_events() -> Iterator[list[events.DbRouting]]:
    seen: list[events.DbRouting] = []
    unsubscribe = events.subscribe(seen.append, events.DbRouting)
    try:
        yield seen
    finally:
        unsubscribe()


def served_by(rs: ReplicaSet, **options: Any) -> int:
    """The ``@@server_id`` that answered a read (1 primary, 2 replica)."""
    return int(rs.query("SELECT @@server_id AS id", **options)[0]["id"])


PRIMARY, REPLICA = 1, 2


# -- point 3: bounded default timeouts -------------------------------------------------


def test_replica_pools_get_bounded_timeouts_by_default(
    mariadb_replication: MariaDBReplication, pools: Pools
) -> None:
    rs = pools.replica_set()
    assert (rs.primary.connect_timeout, rs.primary.read_timeout) == (2.0, 60.0)
    assert (rs.replicas[0].connect_timeout, rs.replicas[0].read_timeout) == (2.0, 10.0)
    slow = pools.pool(mariadb_replication.replica.url + "?read_timeout=30&connect_timeout=1")
    ReplicaSet(pools.pool(mariadb_replication.primary.url), [slow])
    assert (slow.connect_timeout, slow.read_timeout) == (1.0, 30.0)  # the URL's win
    with rs.replicas[0].connection() as conn:
        raw = conn.dbapi_connection
        assert (raw.connect_timeout, raw._read_timeout) == (2.0, 10.0)


def test_a_hung_replica_read_ends_within_the_default_deadline_on_the_primary(
    mariadb_replication: MariaDBReplication, pools: Pools
) -> None:
    rs = pools.replica_set()
    assert served_by(rs) == REPLICA  # a hot connection: no ping before the next read
    mariadb_replication.replica.freeze()
    try:
        started = time.monotonic()
        assert served_by(rs) == PRIMARY
        elapsed = time.monotonic() - started
    finally:
        mariadb_replication.replica.thaw()
    assert elapsed < rs.replicas[0].read_timeout + 2.0  # the deadline, plus the primary's read


# -- 5d: one deadline per operation; re-probed before serving again --------------------


def test_a_frozen_replica_costs_one_deadline_then_is_probed_before_it_serves(
    general_log: MariaDBReplication, pools: Pools, clock: ManualClock
) -> None:
    rs = pools.replica_set(
        replica_options={"read_timeout": 1.0, "ping_after_idle": 0.0}, backoff=1.0
    )
    assert served_by(rs) == REPLICA
    general_log.replica.freeze()
    try:
        started = time.monotonic()
        for _ in range(5):
            assert served_by(rs) == PRIMARY
        elapsed = time.monotonic() - started
    finally:
        general_log.replica.thaw()
    # The first read paid the 1 s deadline (ping, no reconnect); the others none at all.
    assert elapsed < 1.0 + 1.0
    tag = marker()
    probes = count_statements(general_log.replica, "SHOW REPLICA STATUS")
    clock.advance(0.99)
    assert served_by(rs) == PRIMARY  # still backing off
    clock.advance(0.01)  # the back-off is over: the read probes before it is served there
    assert rs.query(f"SELECT /* {tag} */ @@server_id AS id")[0]["id"] == REPLICA
    assert count_statements(general_log.replica, "SHOW REPLICA STATUS") == probes + 1
    assert count_statements(general_log.replica, tag) == 1


# -- point 5: unknown outcomes pin and mark --------------------------------------------


def test_a_write_with_unknown_outcome_pins_the_request_and_marks_the_key(
    general_log: MariaDBReplication, pools: Pools, counting_proxy: Any
) -> None:
    setup = general_log
    tag = marker()
    proxy: CountingProxy = counting_proxy(
        setup.primary.host,
        setup.primary.port,
        drop_after_response_to=lambda sent: b"INSERT" in sent and tag.encode() in sent,
    )
    primary = pools.pool(proxy.url_for(setup.primary.url), name="primary")
    replica = pools.pool(setup.replica.url, name="replica")
    rs = ReplicaSet(primary, [replica], clock=pools.clock)
    read = f"SELECT /* {tag} */ COUNT(*) AS n FROM {TABLE} WHERE note = %s"

    def request() -> None:
        with pytest.raises(WriteOutcomeUnknown):
            rs.execute(f"INSERT INTO {TABLE} (user_id, note) VALUES (7, '{tag}')", key=7)
        rs.query(read, [tag])  # the same request: pinned

    contextvars.copy_context().run(request)
    contextvars.copy_context().run(rs.query, read, [tag], key=7)  # another request, same key
    contextvars.copy_context().run(rs.query, read, [tag], key=8)  # another key: the replica
    assert proxy.drops == 1
    assert count_statements(setup.primary, f"/* {tag} */") == 2
    assert count_statements(setup.replica, f"/* {tag} */") == 1


# -- point 6: any probe or connect error sidelines the replica -------------------------


def test_a_replica_user_without_the_status_privilege_never_fails_a_read(
    mariadb_replication: MariaDBReplication, pools: Pools, routing_events: list[events.DbRouting]
) -> None:
    user = f"nomon{marker()[:6]}"
    mariadb_replication.primary.query(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'")
    mariadb_replication.primary.query(f"GRANT SELECT ON `scalekit%`.* TO '{user}'@'%'")
    mariadb_replication.wait_caught_up()
    try:
        replica_url = mariadb_replication.replica.url.replace(f"app:{APP_PASSWORD}", f"{user}:pw")
        rs = ReplicaSet(
            pools.pool(mariadb_replication.primary.url),
            [pools.pool(replica_url)],
            lag_check_interval=0.0,
            pin_after_write=2.0,
            max_lag=0.5,
            clock=pools.clock,
        )
        for _ in range(20):
            pools.clock.advance(1.0)  # every read finds the probe due
            assert served_by(rs) == PRIMARY
    finally:
        mariadb_replication.primary.query(f"DROP USER '{user}'@'%'")
    assert ("replica_down", "error_1227") in [(e.decision, e.reason) for e in routing_events]


@pytest.mark.parametrize("password", ["wrong-password"])
def test_a_replica_refusing_connections_sends_reads_to_the_primary(
    mariadb_replication: MariaDBReplication,
    pools: Pools,
    password: str,
    routing_events: list[events.DbRouting],
) -> None:
    replica_url = mariadb_replication.replica.url.replace(APP_PASSWORD, password)
    rs = ReplicaSet(
        pools.pool(mariadb_replication.primary.url), [pools.pool(replica_url)], clock=pools.clock
    )
    for _ in range(10):
        pools.clock.advance(60.0)
        assert served_by(rs) == PRIMARY
    reasons = {(e.decision, e.reason) for e in routing_events}
    assert ("replica_down", "error_1045") in reasons


# -- 5e: one outage, one back-off step ---------------------------------------------------


def test_simultaneous_failures_of_one_outage_count_once(
    mariadb_replication: MariaDBReplication, pools: Pools, clock: ManualClock
) -> None:
    rs = pools.replica_set(backoff=0.5, max_backoff=30.0, replica_options={"max_connections": 6})
    start = threading.Barrier(6)
    hold = threading.Barrier(6)

    def warm() -> None:  # six connections, each hot in the pool
        with rs.replicas[0].connection() as conn:
            conn.query("SELECT 1")
            hold.wait()

    with concurrent.futures.ThreadPoolExecutor(6) as executor:
        list(executor.map(lambda _: warm(), range(6)))
        assert rs.replicas[0].stats().idle == 6
        assert served_by(rs) == REPLICA
        mariadb_replication.replica.kill()

        def read(_: int) -> int:
            start.wait()
            return served_by(rs)

        assert list(executor.map(read, range(6))) == [PRIMARY] * 6
    mariadb_replication.replica.start()
    mariadb_replication.wait_replicating()
    clock.advance(0.5)  # one step (0.5 s), not six (16 s)
    assert served_by(rs) == REPLICA


# -- 5f: reads survive a primary restart ------------------------------------------------


def test_reads_continue_from_a_caught_up_replica_while_the_primary_is_down(
    mariadb_replication: MariaDBReplication, pools: Pools, clock: ManualClock
) -> None:
    rs = pools.replica_set(lag_check_interval=1.0)
    note = marker()
    rs.execute(f"INSERT INTO {TABLE} (user_id, note) VALUES (9, %s)", [note])
    mariadb_replication.wait_caught_up()
    clock.advance(10.0)  # the write's pin is over
    assert served_by(rs) == REPLICA
    mariadb_replication.primary.stop()
    try:
        wait_until(
            lambda: mariadb_replication.replication_status().get("Slave_IO_Running") != "Yes",
            timeout=30,
            what="the replica's IO thread to notice the primary is gone",
        )
        clock.advance(1.0)  # the next read probes: IO thread Connecting, SQL thread done
        sql = f"SELECT COUNT(*) AS n FROM {TABLE} WHERE note = %s"
        assert [rs.query(sql, [note]) for _ in range(20)] == [[{"n": 1}]] * 20
    finally:
        mariadb_replication.primary.start()


def test_a_replica_still_applying_what_it_received_serves_once_applied_while_the_primary_is_down(
    mariadb_replication: MariaDBReplication,
    pools: Pools,
    clock: ManualClock,
    routing_events: list[events.DbRouting],
) -> None:
    setup = mariadb_replication
    rs = pools.replica_set(lag_check_interval=1.0, max_lag=5.0, pin_after_write=8.0)
    assert served_by(rs) == REPLICA  # its last known lag: 0
    setup.set_delay(3)  # the SQL thread applies each event 3 s after the primary wrote it
    try:
        setup.wait_replicating()
        note = marker()  # written by another instance: this set is not pinned
        setup.primary.query(
            f"INSERT INTO {APP_DATABASE}.{TABLE} (user_id, note) VALUES (9, %s)", [note]
        )
        (row,) = setup.primary.query("SELECT @@gtid_binlog_pos AS pos")
        wait_until(
            lambda: setup.replication_status().get("Gtid_IO_Pos") == row["pos"],
            timeout=30,
            what="the replica to receive the write",
        )
        setup.primary.stop()
        wait_until(
            lambda: setup.replication_status().get("Slave_IO_Running") != "Yes",
            timeout=30,
            what="the replica's IO thread to notice the primary is gone",
        )
        clock.advance(1.0)  # a probe is due: received, not yet applied
        sql = f"SELECT COUNT(*) AS n FROM {TABLE} WHERE note = %s"
        assert rs.query(sql, [note]) == [{"n": 1}]  # waited for it, then served it
        reasons = {(e.decision, e.reason) for e in routing_events}
        assert {("replica_skipped", "catching_up"), ("fallback_replica", "primary_down")} <= reasons
    finally:
        setup.primary.start()
        setup.clear_delay()
        setup.wait_replicating()
        setup.wait_caught_up()


def test_a_replica_cut_off_before_the_primary_went_down_serves_no_stale_read(
    mariadb_replication: MariaDBReplication,
    pools: Pools,
    clock: ManualClock,
    routing_events: list[events.DbRouting],
) -> None:
    setup = mariadb_replication
    rs = pools.replica_set(lag_check_interval=1.0)
    assert served_by(rs) == REPLICA  # seen replicating, lag 0

    def point_replica_at(port: int) -> None:
        with setup.replica.admin() as conn, conn.cursor() as cursor:
            cursor.execute("STOP SLAVE")
            cursor.execute("CHANGE MASTER TO MASTER_PORT=%s", (port,))
            cursor.execute("START SLAVE")

    point_replica_at(free_port())  # its IO thread loses the primary; the primary stays up
    try:
        wait_until(
            lambda: setup.replication_status().get("Slave_IO_Running") == "Connecting",
            timeout=30,
            what="the replica's IO thread to reconnect in vain",
        )
        clock.advance(1.0)
        note = marker()
        rs.execute(f"INSERT INTO {TABLE} (user_id, note) VALUES (9, %s)", [note])
        sql = f"SELECT COUNT(*) AS n FROM {TABLE} WHERE note = %s"
        assert rs.query(sql, [note]) == [{"n": 1}]  # pinned: the primary
        clock.advance(10.0)
        assert rs.query(sql, [note]) == [{"n": 1}]  # detached: the primary still answers
        setup.primary.stop()
        with pytest.raises(NoHealthyServer, match="may have lost the primary earlier"):
            rs.query(sql, [note])  # the replica has no such row: never served from it
        assert ("replica_skipped", "detached") in {(e.decision, e.reason) for e in routing_events}
    finally:
        setup.primary.start()
        point_replica_at(setup.primary.port)
        setup.wait_replicating()
        setup.wait_caught_up()


# -- point 8: one request, one scope ----------------------------------------------------


def test_pins_do_not_leak_between_requests_on_a_reused_thread(
    mariadb_replication: MariaDBReplication, pools: Pools
) -> None:
    rs = pools.replica_set()

    def request(write: bool) -> int:
        with request_scope():
            if write:
                rs.execute(f"INSERT INTO {TABLE} (user_id, note) VALUES (10, 'scope')")
            return served_by(rs)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as worker:  # one reused thread
        assert worker.submit(request, True).result() == PRIMARY  # pinned in its request
        assert worker.submit(request, False).result() == REPLICA  # the next request is not


@pytest.mark.anyio
async def test_a_write_in_one_worker_thread_pins_the_rest_of_its_request(
    mariadb_replication: MariaDBReplication, pools: Pools
) -> None:
    import httpx
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    rs = pools.replica_set()

    async def write_then_read(request: Request) -> JSONResponse:
        await run_in_threadpool(
            rs.execute, f"INSERT INTO {TABLE} (user_id, note) VALUES (11, 'scope')"
        )
        return JSONResponse({"read": await run_in_threadpool(served_by, rs)})

    async def read(request: Request) -> JSONResponse:
        return JSONResponse({"read": await run_in_threadpool(served_by, rs)})

    app = Starlette(routes=[Route("/write", write_then_read), Route("/read", read)])
    app.add_middleware(RequestScopeMiddleware)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/write")).json() == {"read": PRIMARY}
        assert (await client.get("/read")).json() == {"read": REPLICA}
