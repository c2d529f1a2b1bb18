"""ReplicaSet on a real MariaDB primary + GTID replica: routing, failures, lag, pools."""

from __future__ import annotations

import random
import threading

import pytest
from db_helpers import (
    TABLE,
    Pools,
    app_connections,
    count_statements,
    enable_general_log,
    marker,
)
from harness import MariaDBReplication
from harness.ports import wait_until

from scalekit._clock import ManualClock
from scalekit.db import (
    ConnectionLost,
    MisroutedWrite,
    PoolTimeout,
    PrimaryReadOnly,
    RetryableTransactionError,
    WriteOutcomeUnknown,
)


def test_reads_land_on_replica_and_writes_on_primary(
    general_log: MariaDBReplication, pools: Pools
) -> None:
    rs = pools.replica_set()
    read, write = marker(), marker()
    for i in range(20):
        rs.query(f"SELECT /* {read} */ COUNT(*) AS n FROM {TABLE} WHERE user_id = %s", [i])
    for i in range(7):
        rs.execute(f"INSERT /* {write} */ INTO {TABLE} (user_id, note) VALUES (%s, %s)", [i, "x"])
    primary, replica = general_log.primary, general_log.replica
    assert (count_statements(replica, read), count_statements(primary, read)) == (20, 0)
    assert (count_statements(primary, write), count_statements(replica, write)) == (7, 0)


def test_replica_stopped_reads_served_by_primary_then_back_after_backoff(
    general_log: MariaDBReplication, pools: Pools, clock: ManualClock
) -> None:
    rs = pools.replica_set(backoff=1.0, lag_check_interval=3600, pin_after_write=4000)
    before, during, after = marker(), marker(), marker()
    rs.query(f"SELECT /* {before} */ 1")
    general_log.replica.stop()
    results = [rs.query(f"SELECT /* {during} */ 1 AS one") for _ in range(500)]
    assert results == [[{"one": 1}]] * 500
    assert count_statements(general_log.primary, during) == 500
    general_log.replica.start()
    general_log.wait_replicating()
    general_log.wait_caught_up()
    enable_general_log(general_log)  # SET GLOBAL does not survive the restart
    rs.query(f"SELECT /* {after} */ 1")  # still backing off: primary
    assert count_statements(general_log.primary, after) == 1
    clock.advance(1.0)
    rs.query(f"SELECT /* {after} */ 1")  # the probe succeeds: replica
    assert count_statements(general_log.replica, after) == 1


def test_lag_and_stopped_replication_send_reads_to_primary(
    general_log: MariaDBReplication, pools: Pools, clock: ManualClock
) -> None:
    rs = pools.replica_set(max_lag=1.0, pin_after_write=3.5, lag_check_interval=1.0)
    tag = marker()
    assert rs.query(f"SELECT /* {tag} */ 1") == [{"1": 1}]
    assert count_statements(general_log.replica, tag) == 1

    general_log.set_delay(60)
    with general_log.primary.app_connect() as conn, conn.cursor() as cursor:
        cursor.execute(f"INSERT INTO {TABLE} (user_id, note) VALUES (1, 'lag')")
    wait_until(
        lambda: (general_log.replication_status().get("Seconds_Behind_Master") or 0) > 1,
        timeout=20,
        what="replica lag above 1 s",
    )
    clock.advance(1.0)
    lagging = marker()
    for _ in range(3):
        rs.query(f"SELECT /* {lagging} */ 1")
    assert count_statements(general_log.primary, lagging) == 3

    general_log.clear_delay()
    general_log.wait_caught_up()
    general_log.stop_replication(only="sql")
    clock.advance(1.0)
    stopped = marker()
    rs.query(f"SELECT /* {stopped} */ 1")
    assert count_statements(general_log.primary, stopped) == 1

    general_log.start_replication()
    general_log.wait_replicating()
    general_log.wait_caught_up()
    clock.advance(1.0)
    back = marker()
    rs.query(f"SELECT /* {back} */ 1")
    assert count_statements(general_log.replica, back) == 1


def test_one_status_query_per_replica_per_interval(
    general_log: MariaDBReplication, pools: Pools
) -> None:
    rs = pools.replica_set(lag_check_interval=3600, pin_after_write=4000)
    status = "SHOW REPLICA STATUS"
    before = count_statements(general_log.replica, status)
    for _ in range(1000):
        rs.query("SELECT 1")
    assert count_statements(general_log.replica, status) == before + 1


def test_first_read_after_primary_restart_succeeds(
    mariadb_replication: MariaDBReplication, pools: Pools
) -> None:
    pool = pools.pool(mariadb_replication.primary.url, max_connections=4)
    with pool.connection() as a, pool.connection() as b:  # two idle connections afterwards
        a.query("SELECT 1")
        b.query("SELECT 1")
    mariadb_replication.primary.stop()
    mariadb_replication.primary.start()
    assert pool.query("SELECT 1 AS one") == [{"one": 1}]
    # The failure made the pool ping its other old connection: the write is safe.
    assert pool.execute(f"INSERT INTO {TABLE} (user_id, note) VALUES (2, 'restart')").rowcount == 1


def test_insert_answered_then_dropped_is_never_sent_twice(
    mariadb_replication: MariaDBReplication, pools: Pools, counting_proxy: object
) -> None:
    primary = mariadb_replication.primary
    tag = marker()
    proxy = counting_proxy(  # type: ignore[operator]
        primary.host, primary.port, drop_after_response_to=lambda sent: tag.encode() in sent
    )
    pool = pools.pool(proxy.url_for(primary.url))
    with pytest.raises(WriteOutcomeUnknown):
        pool.execute(f"INSERT INTO {TABLE} (user_id, note) VALUES (%s, %s)", [3, tag])
    assert proxy.drops == 1
    with primary.app_connect() as conn, conn.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {TABLE} WHERE note = %s", [tag])
        assert cursor.fetchone() == (1,)
    assert pool.stats().in_use == 0


def test_pool_timeout_and_waiter_handoff(
    mariadb_replication: MariaDBReplication, pools: Pools
) -> None:
    pool = pools.pool(mariadb_replication.primary.url, max_connections=2, acquire_timeout=0.05)
    first, second = pool.connection(), pool.connection()
    held = [first.__enter__(), second.__enter__()]
    with pytest.raises(PoolTimeout):
        pool.connection().__enter__()
    got: list[int] = []

    def waiter() -> None:
        with pool.connection(timeout=60.0) as conn:
            got.append(conn.query("SELECT CONNECTION_ID() AS id")[0]["id"])

    thread = threading.Thread(target=waiter)
    thread.start()
    wait_until(lambda: pool.stats().waiting == 1, timeout=10, what="a waiter parked")
    first_id = held[0].query("SELECT CONNECTION_ID() AS id")[0]["id"]
    first.__exit__(None, None, None)
    thread.join(timeout=30)
    assert got == [first_id]
    second.__exit__(None, None, None)


def test_ten_thousand_operations_with_injected_errors(
    mariadb_replication: MariaDBReplication, pools: Pools
) -> None:
    primary = mariadb_replication.primary
    pool = pools.pool(primary.url, max_connections=4)
    rng = random.Random(3)
    rng_lock = threading.Lock()
    failures: list[BaseException] = []

    def one(i: int) -> None:
        with rng_lock:
            kind = rng.randrange(10)
        try:
            if kind == 0:
                pool.query("SELECT * FROM no_such_table")
            elif kind == 1:
                with pool.connection() as conn:
                    conn.query("SELECT 1")
                    raise RuntimeError("caller error while holding a connection")
            elif kind == 2 and i % 50 == 0:
                with pool.connection() as conn:
                    (row,) = conn.query("SELECT CONNECTION_ID() AS id")
                    primary.query(f"KILL {int(row['id'])}")
                    conn.query("SELECT 1")
            else:
                pool.query("SELECT %s AS i", [i])
        except (RuntimeError, ConnectionLost):
            pass
        except Exception as exc:
            if getattr(exc, "args", (None,))[0] != 1146:  # no such table
                failures.append(exc)

    def worker(start: int) -> None:
        for i in range(start, start + 2500):
            one(i)

    threads = [threading.Thread(target=worker, args=(n * 2500,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    stats = pool.stats()
    assert (stats.in_use, stats.waiting) == (0, 0)
    assert stats.errors > 0


def test_transaction_uses_one_primary_connection_and_replica_refuses_writes(
    mariadb_replication: MariaDBReplication, pools: Pools
) -> None:
    rs = pools.replica_set()
    (server_id,) = mariadb_replication.primary.query("SELECT @@server_id AS id")

    def work(cur: object) -> set[tuple[int, int]]:
        seen = set()
        for i in range(5):
            cur.execute(  # type: ignore[attr-defined]
                f"INSERT INTO {TABLE} (user_id, note) VALUES (%s, 'tx')", [i]
            )
            (row,) = cur.query("SELECT CONNECTION_ID() AS id, @@server_id AS server")  # type: ignore[attr-defined]
            seen.add((row["id"], row["server"]))
        return seen

    seen = rs.transaction(work)
    assert len(seen) == 1
    assert next(iter(seen))[1] == server_id["id"]
    with pytest.raises(MisroutedWrite, match="read-only"), rs.replicas[0].connection() as conn:
        conn.execute(f"INSERT INTO {TABLE} (user_id, note) VALUES (1, 'misrouted')")


def test_deadlock_retries_the_whole_transaction(
    mariadb_replication: MariaDBReplication, pools: Pools
) -> None:
    pool = pools.pool(mariadb_replication.primary.url)
    rs = pools.replica_set()
    rs.execute(f"INSERT INTO {TABLE} (id, user_id, note) VALUES (900001, 0, 'a'), (900002, 0, 'b') "
               "ON DUPLICATE KEY UPDATE note = VALUES(note)")  # fmt: skip
    attempts = 0
    other_holds = threading.Event()
    proceed = threading.Event()

    def other() -> None:
        with pool.connection() as conn:
            conn.begin()
            conn.cursor().execute(f"UPDATE {TABLE} SET note = 'o' WHERE id = 900002")
            other_holds.set()
            proceed.wait(30)
            try:
                conn.cursor().execute(f"UPDATE {TABLE} SET note = 'o' WHERE id = 900001")
                conn.commit()
            except RetryableTransactionError:
                conn.rollback()

    def work(cur: object) -> int:
        nonlocal attempts
        attempts += 1
        cur.execute(f"UPDATE {TABLE} SET note = 't' WHERE id = 900001")  # type: ignore[attr-defined]
        if attempts == 1:
            thread = threading.Thread(target=other)
            thread.start()
            other_holds.wait(30)
            proceed.set()
            # Wait for the other transaction to block on our row, then close the cycle.
            wait_until(
                lambda: mariadb_replication.primary.query(
                    "SELECT COUNT(*) AS n FROM information_schema.INNODB_TRX "
                    "WHERE trx_state = 'LOCK WAIT'"
                )[0]["n"],
                timeout=20,
                what="the other transaction waiting on a lock",
            )
            try:
                cur.execute(f"UPDATE {TABLE} SET note = 't' WHERE id = 900002")  # type: ignore[attr-defined]
            finally:
                thread.join(30)
        else:
            cur.execute(f"UPDATE {TABLE} SET note = 't' WHERE id = 900002")  # type: ignore[attr-defined]
        return attempts

    assert rs.transaction(work, retries=3) == 2  # deadlocked once, ran again whole


def test_fifty_threads_mixed_queries_then_server_connections_match_pool(
    mariadb_replication: MariaDBReplication, pools: Pools
) -> None:
    rs = pools.replica_set()
    failures: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(100):
                if i % 10 == 0:
                    rs.execute(
                        f"INSERT INTO {TABLE} (user_id, note) VALUES (%s, 'load')", [n], key=n
                    )
                elif i % 10 == 1:
                    rs.transaction(lambda cur: cur.query("SELECT 1"))
                else:
                    rs.query(f"SELECT COUNT(*) AS n FROM {TABLE} WHERE user_id = %s", [n], key=n)
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    primary_pool, replica_pool = rs.primary, rs.replicas[0]
    assert primary_pool.stats().in_use == replica_pool.stats().in_use == 0
    wait_until(
        lambda: app_connections(mariadb_replication.primary) == primary_pool.stats().open,
        timeout=10,
        what="primary processlist == pool open count",
    )
    wait_until(
        lambda: app_connections(mariadb_replication.replica) == replica_pool.stats().open,
        timeout=10,
        what="replica processlist == pool open count",
    )


def test_demoted_primary_raises_and_is_rechecked_before_the_next_write(
    general_log: MariaDBReplication, pools: Pools
) -> None:
    primary = general_log.primary
    pool = pools.pool(primary.url)
    tag = marker()
    insert = f"INSERT /* {tag} */ INTO {TABLE} (user_id, note) VALUES (5, 'ro')"
    primary.query("SET GLOBAL read_only = 1")
    try:
        with pytest.raises(PrimaryReadOnly, match="demoted"):
            pool.execute(insert)
        with pytest.raises(PrimaryReadOnly, match="still read-only"):
            pool.execute(insert)
        assert count_statements(primary, tag) == 1  # the second was never sent
    finally:
        primary.query("SET GLOBAL read_only = 0")
    assert pool.execute(insert).rowcount == 1
