"""Pool on a real MariaDB: clean borrowers, nothing sent twice, fair hand-off, fork, outages."""

from __future__ import annotations

import collections
import os
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest
from db_helpers import TABLE, Pools, ensure_table, marker
from harness import APP_DATABASE, CountingProxy, MariaDBReplication
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scalekit.db import (
    ConnectionLost,
    DatabaseError,
    Pool,
    PoolTimeout,
    ReplicaSet,
    WriteOutcomeUnknown,
)


def rows_with(setup: MariaDBReplication, note: str) -> int:
    (row,) = setup.primary.query(
        f"SELECT COUNT(*) AS n FROM {APP_DATABASE}.{TABLE} WHERE note = %s", [note]
    )
    return int(row["n"])


def session_of(conn: Any) -> dict[str, Any]:
    (row,) = conn.query(
        "SELECT @@autocommit AS autocommit, @@in_transaction AS in_trans, @tenant AS tenant, "
        "@x AS x, @@session.sql_mode = @@global.sql_mode AS sql_mode_default, "
        "@@session.tx_isolation AS isolation, DATABASE() AS db"
    )
    try:
        conn.query("SELECT 1 FROM scratch LIMIT 0")
        row["temporary_tables"] = 1
    except pymysql.err.ProgrammingError as exc:  # 1146: no such (temporary) table
        row["temporary_tables"] = 0 if exc.args[0] == 1146 else exc.args
    return dict(row)


CLEAN = {
    "autocommit": 1,
    "in_trans": 0,
    "tenant": None,
    "x": None,
    "sql_mode_default": 1,
    "isolation": "REPEATABLE-READ",
    "temporary_tables": 0,
    "db": APP_DATABASE,
}
OTHER_DATABASE = "scalekit_hygiene_other"


# -- point 1: every borrower starts clean ---------------------------------------------


def test_a_failed_request_leaks_no_transaction_or_session_into_the_next(
    mariadb_replication: MariaDBReplication, pools: Pools
) -> None:
    pool = pools.pool(mariadb_replication.primary.url, max_connections=1)
    lost_note, kept_note = marker(), marker()

    def request_a() -> None:
        with pool.connection() as conn:
            conn.execute("START TRANSACTION")
            conn.execute(f"INSERT INTO {TABLE} (user_id, note) VALUES (1, %s)", [lost_note])
            conn.execute("SET @tenant = 'acme'")
            raise RuntimeError("request A fails")

    with pytest.raises(RuntimeError):
        request_a()
    with pool.connection() as conn:  # request B, the same single connection slot
        assert session_of(conn) == CLEAN
        conn.execute(f"INSERT INTO {TABLE} (user_id, note) VALUES (2, %s)", [kept_note])
    pool.close()
    assert (rows_with(mariadb_replication, lost_note), rows_with(mariadb_replication, kept_note))\
        == (0, 1)  # fmt: skip


def test_a_block_left_open_is_rolled_back_and_session_reset_with_one_round_trip(
    mariadb_replication: MariaDBReplication, pools: Pools, counting_proxy: Any
) -> None:
    primary = mariadb_replication.primary
    proxy: CountingProxy = counting_proxy(primary.host, primary.port)
    pool = pools.pool(proxy.url_for(primary.url), max_connections=1)
    note = marker()
    with pool.connection() as conn:
        first = conn.query("SELECT CONNECTION_ID() AS id")[0]["id"]
    proxy.reset()
    with pool.connection() as conn:  # no exception: the connection is kept, but cleaned
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {TABLE} (user_id, note) VALUES (3, %s)", [note])
        conn.execute("SET SESSION sql_mode = ''")
        conn.execute("CREATE TEMPORARY TABLE scratch (a INT)")
    assert proxy.round_trips == 4 + 1  # the statements, then one COM_RESET_CONNECTION
    with pool.connection() as conn:
        assert conn.query("SELECT CONNECTION_ID() AS id")[0]["id"] == first  # reset, not replaced
        assert session_of(conn) == CLEAN
    assert rows_with(mariadb_replication, note) == 0


def test_reads_and_writes_cost_no_extra_round_trip(
    mariadb_replication: MariaDBReplication, pools: Pools, counting_proxy: Any
) -> None:
    primary = mariadb_replication.primary
    proxy: CountingProxy = counting_proxy(primary.host, primary.port)
    pool = pools.pool(proxy.url_for(primary.url), max_connections=1)
    pool.query("SELECT 1")
    proxy.reset()
    for i in range(50):
        pool.query("SELECT %s AS i", [i])
        pool.execute(f"INSERT INTO {TABLE} (user_id, note) VALUES (%s, 'hot')", [i])
        with pool.connection() as conn:
            conn.begin()
            conn.cursor().execute(f"UPDATE {TABLE} SET note = 'hot' WHERE id = %s", [i])
            conn.commit()
    assert proxy.round_trips == 50 * 5  # no ping, no rollback, no reset


Step = st.sampled_from(
    ["begin", "commit", "rollback", "raise", "set_var", "set_session", "temporary", "insert",
     "use"]
)  # fmt: skip


@pytest.fixture(scope="module")
def hygiene_pool(mariadb_replication: MariaDBReplication) -> Iterator[Pool]:
    ensure_table(mariadb_replication)
    pool = Pool.from_url(mariadb_replication.primary.url, max_connections=2, name="hygiene")
    pool.execute(f"CREATE DATABASE IF NOT EXISTS {OTHER_DATABASE}")
    pool.execute(f"CREATE TABLE IF NOT EXISTS {OTHER_DATABASE}.{TABLE} LIKE {TABLE}")
    yield pool
    pool.close()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(borrows=st.lists(st.lists(Step, max_size=6), min_size=1, max_size=4))
def test_every_borrower_sees_autocommit_no_transaction_no_variables(
    hygiene_pool: Pool, borrows: list[list[str]]
) -> None:
    pool = hygiene_pool
    for steps in borrows:
        try:
            with pool.connection() as conn:
                for step in steps:
                    if step == "begin":
                        conn.execute("BEGIN")
                    elif step == "commit":
                        conn.execute("COMMIT")
                    elif step == "rollback":
                        conn.execute("ROLLBACK")
                    elif step == "raise":
                        raise KeyError(step)
                    elif step == "set_var":
                        conn.execute("SET @x = 42, @tenant = 'acme'")
                    elif step == "set_session":
                        conn.execute("SET SESSION sql_mode = '', tx_isolation = 'SERIALIZABLE'")
                    elif step == "use":  # the next borrower wrote into this database
                        conn.execute(f"USE {OTHER_DATABASE}")
                    elif step == "temporary":
                        conn.execute("CREATE TEMPORARY TABLE IF NOT EXISTS scratch (a INT)")
                    else:
                        conn.execute(f"INSERT INTO {TABLE} (user_id, note) VALUES (0, 'prop')")
        except KeyError:
            pass
        # Both slots, so a borrower of either connection is checked.
        with pool.connection() as first, pool.connection() as second:
            assert session_of(first) == CLEAN
            assert session_of(second) == CLEAN


def test_a_borrowers_use_does_not_send_the_next_borrowers_writes_elsewhere(
    mariadb_replication: MariaDBReplication, hygiene_pool: Pool
) -> None:
    """COM_RESET_CONNECTION keeps the database a borrower chose with USE (attack11)."""
    note = marker()
    with hygiene_pool.connection() as first, hygiene_pool.connection() as second:
        for conn in (first, second):
            conn.execute(f"USE {OTHER_DATABASE}")
    hygiene_pool.execute(f"INSERT INTO {TABLE} (user_id, note) VALUES (5, %s)", [note])
    assert rows_with(mariadb_replication, note) == 1


# -- point 2: what is sent again, and what never is ------------------------------------


def dropping_proxy(setup: MariaDBReplication, counting_proxy: Any, tag: str) -> CountingProxy:
    primary = setup.primary
    proxy: CountingProxy = counting_proxy(
        primary.host, primary.port, drop_after_response_to=lambda sent: tag.encode() in sent
    )
    return proxy


def test_insert_returning_lost_after_it_ran_is_never_sent_again(
    mariadb_replication: MariaDBReplication, pools: Pools, counting_proxy: Any
) -> None:
    tag = marker()
    proxy = dropping_proxy(mariadb_replication, counting_proxy, tag)
    pool = pools.pool(proxy.url_for(mariadb_replication.primary.url))
    insert = f"INSERT INTO {TABLE} (user_id, note) VALUES (4, %s) RETURNING id"
    with pytest.raises(WriteOutcomeUnknown):
        pool.query(insert, [tag])  # by its text a write, whatever the method
    rs = ReplicaSet(pools.pool(proxy.url_for(mariadb_replication.primary.url)))
    with pytest.raises(WriteOutcomeUnknown):
        rs.query(insert, [tag])  # no replicas: the same rule
    assert proxy.drops == 2
    assert rows_with(mariadb_replication, tag) == 2  # each ran once


def test_read_lost_after_it_ran_is_sent_again_once(
    mariadb_replication: MariaDBReplication, pools: Pools, counting_proxy: Any
) -> None:
    tag = marker()
    proxy = dropping_proxy(mariadb_replication, counting_proxy, tag)
    pool = pools.pool(proxy.url_for(mariadb_replication.primary.url))
    proxy.drop_after_response_to = lambda sent: tag.encode() in sent and proxy.drops == 0
    assert pool.query(f"WITH t AS (SELECT 1 AS one) SELECT /* {tag} */ one FROM t") == [{"one": 1}]
    assert proxy.drops == 1


def test_a_select_sent_with_execute_is_never_sent_again(
    mariadb_replication: MariaDBReplication, pools: Pools, counting_proxy: Any
) -> None:
    """A SELECT calling a function that writes: the docs say to send it with execute(), but
    Pool.execute sent it again after a lost reply (by its text a read): two rows, and no
    error (attack11)."""
    tag = marker()
    proxy = dropping_proxy(mariadb_replication, counting_proxy, tag)
    pool = pools.pool(proxy.url_for(mariadb_replication.primary.url))
    function = f"{APP_DATABASE}.scalekit_add_item"
    mariadb_replication.primary.query(f"DROP FUNCTION IF EXISTS {function}")
    mariadb_replication.primary.query(  # as root: creating functions needs SUPER with a binlog
        f"CREATE FUNCTION {function}(n VARCHAR(40)) RETURNS INT DETERMINISTIC "
        f"BEGIN INSERT INTO {APP_DATABASE}.{TABLE} (user_id, note) VALUES (0, n); RETURN 1; END"
    )
    proxy.drop_after_response_to = lambda sent: tag.encode() in sent and proxy.drops == 0
    with pytest.raises(WriteOutcomeUnknown):
        pool.execute("SELECT scalekit_add_item(%s) AS added", [tag])
    assert proxy.drops == 1
    assert rows_with(mariadb_replication, tag) == 1  # it ran once, and was not sent again


def test_a_statement_that_commits_implicitly_is_refused_inside_a_transaction(
    mariadb_replication: MariaDBReplication, pools: Pools
) -> None:
    """A schema change inside transaction(fn, retries=...) committed the writes before it and
    ran the rest in autocommit; the retry after a deadlock wrote them all again (attack11)."""
    rs = ReplicaSet(pools.pool(mariadb_replication.primary.url))
    note = marker()
    attempts: list[int] = []

    def fn(cursor: Any) -> None:
        attempts.append(1)
        cursor.execute(f"INSERT INTO {TABLE} (user_id, note) VALUES (7, %s)", [note])
        cursor.execute("CREATE TEMPORARY TABLE IF NOT EXISTS scratch_tx (a INT)")  # no commit
        cursor.execute("CREATE TABLE IF NOT EXISTS scalekit_implicit (a INT)")
        cursor.execute(f"INSERT INTO {TABLE} (user_id, note) VALUES (8, %s)", [note])
        if len(attempts) == 1:  # a deadlock, as the server reports one
            cursor.execute("SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, "
                           "MESSAGE_TEXT = 'Deadlock found'")  # fmt: skip

    with pytest.raises(DatabaseError, match="commit the open transaction implicitly"):
        rs.transaction(fn, retries=2)
    assert rows_with(mariadb_replication, note) == 0  # rolled back: nothing was committed
    assert len(attempts) == 1


def test_execute_returning_gives_the_rows(
    mariadb_replication: MariaDBReplication, pools: Pools
) -> None:
    pool = pools.pool(mariadb_replication.primary.url)
    note = marker()
    result = pool.execute(
        f"INSERT INTO {TABLE} (user_id, note) VALUES (5, %s), (6, %s) RETURNING user_id, note",
        [note, note],
        returning=True,
    )
    assert result.rowcount == 2
    assert result.rows == [{"user_id": 5, "note": note}, {"user_id": 6, "note": note}]


# -- point 4: fork ----------------------------------------------------------------------


def test_a_forked_child_never_shares_the_parents_connections(
    mariadb_replication: MariaDBReplication, pools: Pools
) -> None:
    pool = pools.pool(mariadb_replication.primary.url, max_connections=2)
    with pool.connection() as a, pool.connection() as b:  # two warm idle connections
        parent_ids = {a.query("SELECT CONNECTION_ID() AS id")[0]["id"],
                      b.query("SELECT CONNECTION_ID() AS id")[0]["id"]}  # fmt: skip
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            ids = [pool.query("SELECT CONNECTION_ID() AS id")[0]["id"] for _ in range(3)]
            os.write(write, ",".join(map(str, ids)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    child_ids = {int(i) for i in os.read(read, 1000).decode().split(",")}
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_ids.isdisjoint(parent_ids)
    # The parent's connections survived the child (no QUIT was sent on them).
    with pool.connection() as a, pool.connection() as b:
        again = {a.query("SELECT CONNECTION_ID() AS id")[0]["id"],
                 b.query("SELECT CONNECTION_ID() AS id")[0]["id"]}  # fmt: skip
    assert again == parent_ids


# -- 5b: fair hand-off --------------------------------------------------------------------


def test_fifty_threads_on_five_connections_all_get_their_turn(
    mariadb_replication: MariaDBReplication, pools: Pools
) -> None:
    pool = pools.pool(mariadb_replication.primary.url, max_connections=5, acquire_timeout=60)
    budget = 50 * 40
    done = collections.Counter[int]()
    lock = threading.Lock()
    start = threading.Barrier(50)

    def worker(n: int) -> None:
        start.wait()
        while True:
            with lock:
                if sum(done.values()) >= budget:
                    return
            with pool.connection() as conn:
                conn.query("SELECT 1")
            with lock:
                done[n] += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts = [done[n] for n in range(50)]
    assert sum(counts) >= budget
    assert min(counts) >= 40 // 2, counts  # each thread got at least half its fair share
    assert max(counts) <= 40 * 2, counts


# -- 5g: connect storms ---------------------------------------------------------------------


@pytest.fixture
def counted_connects(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    counts = {"connects": 0, "tls_contexts": 0}
    connect = pymysql.connections.Connection.connect
    create_context = ssl.create_default_context

    def counting_connect(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["connects"] += 1
        return connect(self, *args, **kwargs)

    def counting_context(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        counts["tls_contexts"] += 1
        return create_context(*args, **kwargs)

    monkeypatch.setattr(pymysql.connections.Connection, "connect", counting_connect)
    monkeypatch.setattr(ssl, "create_default_context", counting_context)
    return counts


def test_a_down_server_is_tried_once_per_backoff_and_reported_down(
    mariadb_replication: MariaDBReplication, pools: Pools, counted_connects: dict[str, int]
) -> None:
    primary = mariadb_replication.primary
    pool = pools.pool(primary.url, max_connections=2, acquire_timeout=1)
    errors: list[BaseException] = []
    primary.stop()

    def worker() -> None:
        for _ in range(10):
            try:
                pool.query("SELECT 1")
            except (ConnectionLost, PoolTimeout) as exc:
                errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 80
    assert not [e for e in errors if isinstance(e, PoolTimeout)]  # never "all in use"
    assert sum("server down" in str(e) for e in errors) >= 78
    assert all("refused a connect" in str(e) for e in errors if "server down" in str(e))
    assert counted_connects["connects"] <= 2  # the injected clock never ends the back-off
    assert counted_connects["tls_contexts"] <= 1
    primary.start()
    pools.clock.advance(1.0)  # the back-off ends; the next connect succeeds and ends it
    assert pool.query("SELECT 1 AS one") == [{"one": 1}]
    assert pool.query("SELECT 1 AS one") == [{"one": 1}]


def test_one_tls_context_per_pool_however_many_connects(
    mariadb_replication: MariaDBReplication, pools: Pools, counted_connects: dict[str, int]
) -> None:
    pool = pools.pool(mariadb_replication.primary.url, max_connections=1, max_lifetime=0)
    for _ in range(10):  # max_lifetime=0: every checkout opens a new connection
        pool.query("SELECT 1")
    assert counted_connects["connects"] == 10
    assert counted_connects["tls_contexts"] == 1
    quiet = pools.pool(mariadb_replication.primary.url + "?ssl_mode=disabled", max_lifetime=0)
    quiet.query("SELECT 1")
    assert counted_connects["tls_contexts"] == 1


def test_pool_timeout_names_connects_in_progress(
    mariadb_replication: MariaDBReplication, pools: Pools
) -> None:
    pool = pools.pool(mariadb_replication.primary.url, max_connections=1, acquire_timeout=0.05)
    with pool.connection(), pytest.raises(PoolTimeout, match=r"max_connections=1: 1 in use"):
        pool.query("SELECT 1")


def test_a_connect_to_a_frozen_server_ends_within_connect_timeout(
    mariadb_replication: MariaDBReplication, pools: Pools
) -> None:
    """The server accepts the TCP connect but never sends its handshake: pymysql read it with
    read_timeout (60 s for a primary), neither connect_timeout nor the deadline (attack11)."""
    server = mariadb_replication.replica  # healed (thawed) by the harness after the test
    pool = pools.pool(server.url + "?connect_timeout=1&read_timeout=30", name="frozen")
    server.freeze()
    started = time.monotonic()
    with pytest.raises(ConnectionLost, match="cannot connect"):
        pool.query("SELECT 1")
    assert time.monotonic() - started < 1.0 + 1.5  # connect_timeout, not read_timeout
    server.thaw()
    pools.clock.advance(1.0)  # the connect back-off ends
    with pool.connection() as conn:  # the configured timeouts are back after the connect
        raw = conn.dbapi_connection
        assert (raw._read_timeout, raw._write_timeout) == (30.0, 60.0)
