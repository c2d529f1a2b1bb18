"""Pool: bounded timed wait, expiry on the injected clock, error numbers, no re-execute."""

from __future__ import annotations

import errno
import linecache
import random
import re
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from db_fakedb import FakeServer, OperationalError, lost

from scalekit import events
from scalekit._clock import ManualClock
from scalekit.db import (
    ConnectionLost,
    MisroutedWrite,
    Pool,
    PoolTimeout,
    PrimaryReadOnly,
    RetryableTransactionError,
    WriteOutcomeUnknown,
)
from scalekit.db._driver_errors import ConnectFailure, connect_failure


def test_sqlite_pool_round_trip(tmp_path: Path) -> None:
    pool = Pool.from_url(f"sqlite:///{tmp_path}/app.db")
    pool.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    result = pool.execute("INSERT INTO t (v) VALUES (%s)", ["100%"])
    assert (result.rowcount, result.lastrowid) == (1, 1)
    assert pool.query("SELECT v FROM t WHERE v LIKE %s", ["100%%"]) == [{"v": "100%"}]
    assert pool.query("SELECT '50%%' AS pct, %(n)s AS n", {"n": 7}) == [{"pct": "50%", "n": 7}]
    pool.close()


def test_sqlite_connections_work_across_threads(tmp_path: Path) -> None:
    pool = Pool.from_url(f"sqlite:///{tmp_path}/app.db?max_connections=1")
    pool.execute("CREATE TABLE t (v INTEGER)")
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            pool.execute("INSERT INTO t (v) VALUES (%s)", [1])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert pool.query("SELECT COUNT(*) AS n FROM t") == [{"n": 4}]
    assert pool.stats().opened == 1


def test_third_acquire_times_out_and_waiter_gets_released_connection() -> None:
    server = FakeServer("p")
    pool = server.pool(max_connections=2, acquire_timeout=0.05)
    first = pool.connection()
    second = pool.connection()
    first.__enter__()
    second.__enter__()
    with pytest.raises(PoolTimeout, match="max_connections=2"):
        pool.connection().__enter__()

    got: list[int] = []
    waiter_pool_timeout = 60.0
    waiting = threading.Event()

    def waiter() -> None:
        waiting.set()
        with pool.connection(timeout=waiter_pool_timeout) as conn:
            got.append(conn.query("SELECT 1")[0]["connection"])

    thread = threading.Thread(target=waiter)
    thread.start()
    waiting.wait()
    while pool.stats().waiting != 1:
        threading.Event().wait(0.001)
    first.__exit__(None, None, None)
    thread.join()
    assert len(got) == 1
    second.__exit__(None, None, None)
    stats = pool.stats()
    assert (stats.in_use, stats.open, stats.waiting) == (0, 2, 0)


def test_slow_connect_does_not_stall_checkout_of_idle_connections() -> None:
    server = FakeServer("p")
    pool = server.pool(max_connections=3)
    pool.query("SELECT 1")  # one idle connection now
    entered = threading.Event()
    release = threading.Event()
    real_connect = server.connect

    def slow_connect(**kwargs: object) -> object:
        entered.set()
        release.wait()
        return real_connect(**kwargs)

    with pool.connection() as held:  # takes the idle one
        server.module.connect = slow_connect  # type: ignore[attr-defined]
        thread = threading.Thread(target=lambda: pool.query("SELECT 1"))
        thread.start()
        entered.wait()
        held.query("SELECT 1")
    # The connect is still blocked, yet the idle connection is checked out at once.
    with pool.connection(timeout=0) as conn:
        assert conn.query("SELECT 1")[0]["server"] == "p"
    release.set()
    thread.join()


def test_max_lifetime_and_idle_expiry_follow_the_injected_clock() -> None:
    clock = ManualClock()
    server = FakeServer("p")
    pool = server.pool(max_lifetime=100.0, idle_timeout=10.0, ping_after_idle=None, clock=clock)
    pool.query("SELECT 1")
    clock.advance(9.9)
    pool.query("SELECT 1")
    assert server.connects == 1
    clock.advance(10.0)  # idle for 10 s: closed at the next checkout, a new one opened
    pool.query("SELECT 1")
    assert server.connects == 2
    for _ in range(12):  # 108 s after the second connection opened
        clock.advance(9.0)
        pool.query("SELECT 1")
    assert server.connects == 3  # lifetime of 100 s passed once
    assert server.open_connections == pool.stats().open == 1


def test_ping_after_idle_replaces_a_dead_connection() -> None:
    clock = ManualClock()
    server = FakeServer("p")
    pool = server.pool(ping_after_idle=1.0, clock=clock)
    with pool.connection() as conn:
        fake = conn.dbapi_connection
    fake.closed = True  # the server restarted meanwhile
    clock.advance(1.0)
    assert pool.query("SELECT 1")[0]["server"] == "p"
    assert server.connects == 2


def test_write_lost_after_execution_is_never_resent() -> None:
    server = FakeServer("p")
    pool = server.pool()
    server.hook = lambda sql: lost(2013) if sql.startswith("INSERT") else None
    with pytest.raises(WriteOutcomeUnknown, match="will not send it again"):
        pool.execute("INSERT INTO t VALUES (1)")
    assert server.count("INSERT") == 1
    assert server.rows_written == 1
    assert pool.stats().in_use == 0


def test_read_lost_is_retried_once_on_a_fresh_connection() -> None:
    server = FakeServer("p")
    pool = server.pool()
    failures = iter([lost(2006)])
    server.hook = lambda sql: next(failures, None)
    assert pool.query("SELECT 1")[0]["server"] == "p"
    assert server.count("SELECT 1") == 2
    assert server.connects == 2


@pytest.mark.parametrize("code", [1213, 1205])
def test_deadlock_and_lock_wait_raise_retryable(code: int) -> None:
    server = FakeServer("p")
    pool = server.pool()
    server.hook = lambda sql: OperationalError(code, "deadlock") if "UPDATE" in sql else None
    with pytest.raises(RetryableTransactionError):
        pool.execute("UPDATE t SET v = 1")
    assert server.count("UPDATE") == 1


def test_read_only_primary_raises_and_rechecks_before_next_write() -> None:
    server = FakeServer("p")
    pool = server.pool()
    server.global_read_only = True
    with pytest.raises(PrimaryReadOnly, match="demoted"):
        pool.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(PrimaryReadOnly, match="still read-only"):
        pool.execute("INSERT INTO t VALUES (2)")
    assert server.count("INSERT") == 1  # the second was not sent
    server.global_read_only = False
    pool.execute("INSERT INTO t VALUES (3)")
    pool.execute("INSERT INTO t VALUES (4)")
    assert server.count("@@read_only") == 2


def test_write_on_read_only_session_is_a_misrouted_write() -> None:
    server = FakeServer("r")
    pool = server.pool(read_only=True)
    with pytest.raises(MisroutedWrite, match="never query"):
        pool.execute("INSERT INTO t VALUES (1)")
    assert server.count("INSERT") == 1


def test_session_settings_survive_reconnects() -> None:
    server = FakeServer("p")
    pool = server.pool(session=["SET time_zone = '+00:00'"])
    pool.query("SELECT 1")
    server.hook = lambda sql: lost() if sql == "SELECT 2" else None
    with pytest.raises(ConnectionLost), pool.connection() as conn:
        conn.query("SELECT 2")
    pool.query("SELECT 3")
    assert server.count("SET time_zone") == 2
    with pool.connection() as conn:
        assert conn.dbapi_connection.kwargs["autocommit"] is True


def test_connect_failure_raises_connection_lost_and_frees_the_slot() -> None:
    server = FakeServer("p")
    clock = ManualClock()
    pool = server.pool(max_connections=1, clock=clock)
    server.down = True
    with pytest.raises(ConnectionLost, match="cannot connect"):
        pool.query("SELECT 1")
    server.down = False
    with pytest.raises(ConnectionLost, match="server down"):  # backing off: not even tried
        pool.query("SELECT 1")
    assert server.connect_attempts == 1
    clock.advance(0.05)
    assert pool.query("SELECT 1")[0]["server"] == "p"
    assert pool.stats().errors == 3


def test_ten_thousand_operations_with_injected_errors_leave_nothing_checked_out() -> None:
    server = FakeServer("p")
    pool = server.pool(max_connections=4, acquire_timeout=10.0)
    rng = random.Random(7)
    errors = [lost(2013), lost(2006), OperationalError(1213, "deadlock"), None, None, None]
    lock = threading.Lock()

    def hook(sql: str) -> Exception | None:
        with lock:
            return rng.choice(errors)

    server.hook = hook

    def worker(n: int) -> None:
        for i in range(n):
            try:
                if i % 2:
                    pool.execute("INSERT INTO t VALUES (1)")
                else:
                    pool.query("SELECT 1")
            except (ConnectionLost, RetryableTransactionError):
                pass

    threads = [threading.Thread(target=worker, args=(2500,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = pool.stats()
    assert stats.in_use == 0
    assert stats.waiting == 0
    assert stats.open == server.open_connections
    assert stats.open <= 4


def test_pool_stats_events_and_query_events() -> None:
    server = FakeServer("p")
    pool = server.pool()
    seen: list[events.Event] = []
    unsubscribe = events.subscribe(seen.append, events.DbQuery, events.DbPoolStats)
    try:
        pool.query("SELECT 1")
    finally:
        unsubscribe()
    queries = [e for e in seen if isinstance(e, events.DbQuery)]
    assert [(q.pool, q.role, q.outcome, q.rows) for q in queries] == [("p", "primary", "ok", 1)]
    assert [e for e in seen if isinstance(e, events.DbPoolStats)][-1] == events.DbPoolStats(
        "p", 0, 1, 0
    )


def test_block_that_raises_discards_its_connection() -> None:
    server = FakeServer("p")
    pool = server.pool()

    def fail_midway() -> None:
        with pool.connection() as conn:
            conn.begin()
            conn.cursor().execute("INSERT INTO t VALUES (1)")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail_midway()
    assert server.count("COMMIT") == 0
    assert (server.open_connections, pool.stats().open) == (0, 0)  # the server rolls it back


def test_block_left_without_commit_is_rolled_back_and_kept() -> None:
    server = FakeServer("p")
    pool = server.pool()
    with pool.connection() as conn:
        conn.begin()
        conn.cursor().execute("INSERT INTO t VALUES (1)")
    assert (server.count("ROLLBACK"), server.count("COMMIT")) == (1, 0)
    assert pool.stats().idle == 1


def test_any_connect_callable_works_and_learns_the_placeholder_style(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "callable.db"
    pool = Pool(lambda: sqlite3.connect(path, check_same_thread=False))
    pool.execute("CREATE TABLE t (v INTEGER)")
    pool.execute("INSERT INTO t (v) VALUES (%s)", [5])
    assert pool.dialect == "sqlite"
    # Autocommit: another connection sees the row.
    other = sqlite3.connect(path)
    try:
        assert other.execute("SELECT v FROM t").fetchall() == [(5,)]
    finally:
        other.close()
    with pool.connection() as conn:
        conn.begin()
        conn.cursor().execute("INSERT INTO t (v) VALUES (%s)", [6])
        conn.rollback()
    assert pool.query("SELECT COUNT(*) AS n FROM t") == [{"n": 1}]


def test_sqlite_memory_url_is_one_connection() -> None:
    pool = Pool.from_url("sqlite:///:memory:")
    assert pool.max_connections == 1
    pool.execute("CREATE TABLE t (v INTEGER)")
    assert pool.query("SELECT COUNT(*) AS n FROM t") == [{"n": 0}]


def test_idle_expiry_keeps_min_idle_connections() -> None:
    clock = ManualClock()
    server = FakeServer("p")
    pool = server.pool(min_idle=2, idle_timeout=10.0, ping_after_idle=None, clock=clock)
    pool.warm()
    assert (pool.stats().idle, server.connects) == (2, 2)
    clock.advance(60.0)
    pool.query("SELECT 1")
    assert server.connects == 2  # neither idle connection was expired below min_idle


def test_cursor_execute_returns_a_result_that_still_acts_as_the_old_int() -> None:
    server = FakeServer("p")
    pool = server.pool()
    with pool.connection() as conn:
        result = conn.cursor().execute("INSERT INTO t VALUES (1)")
    assert result.rowcount == 1
    with pytest.warns(DeprecationWarning, match="use result.rowcount"):
        assert result == 1
    with pytest.warns(DeprecationWarning, match="int()"):
        assert int(result) == 1
    with pytest.warns(DeprecationWarning, match="truth testing"):
        assert result


def test_a_released_connection_goes_to_the_longest_waiter() -> None:
    server = FakeServer("p")
    pool = server.pool(max_connections=1, acquire_timeout=10.0)
    order: list[int] = []
    holder = pool.connection()
    holder.__enter__()
    threads = []
    for n in range(5):

        def wait(n: int = n) -> None:
            with pool.connection():
                order.append(n)

        thread = threading.Thread(target=wait)
        thread.start()
        threads.append(thread)
        while pool.stats().waiting != n + 1:  # parked in this order
            threading.Event().wait(0.001)
    holder.__exit__(None, None, None)
    with pool.connection():  # a newcomer queues behind them
        order.append(99)
    for thread in threads:
        thread.join()
    assert order == [0, 1, 2, 3, 4, 99]


# -- the connect back-off ends when the server is back --------------------------------


def test_a_refused_server_is_tried_again_within_the_base_step_however_long_it_was_down() -> None:
    server = FakeServer("p")
    clock = ManualClock()
    pool = server.pool(max_connections=2, clock=clock)
    server.down = True
    for step in range(20):  # a long outage: twenty back-off steps
        if step:
            clock.advance(1.0)
        with pytest.raises(ConnectionLost):
            pool.query("SELECT 1")
    assert server.connect_attempts == 20
    server.down = False  # a restart: it listens again
    with pytest.raises(ConnectionLost, match="server down"):
        pool.query("SELECT 1")
    clock.advance(0.05)  # refused connects cost nothing: tried again after 50 ms, not 1 s
    assert pool.query("SELECT 1")[0]["server"] == "p"


def test_an_unanswered_connect_backs_off_doubling_up_to_one_second() -> None:
    server = FakeServer("p")
    clock = ManualClock()
    pool = server.pool(max_connections=2, clock=clock)
    real_connect = server.connect

    def silent(**kwargs: object) -> object:
        server.connect_attempts += 1
        raise OperationalError(2003, "Can't connect to MySQL server") from TimeoutError("timed out")

    server.module.connect = silent  # type: ignore[attr-defined]
    with pytest.raises(ConnectionLost):
        pool.query("SELECT 1")
    waits = []
    for _ in range(7):  # how long after each failed attempt the next one is made
        attempts, waited = server.connect_attempts, 0.0
        while server.connect_attempts == attempts:
            clock.advance(0.01)
            waited += 0.01
            with pytest.raises(ConnectionLost):
                pool.query("SELECT 1")
        waits.append(waited)
    assert waits == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0], abs=0.011)
    server.module.connect = real_connect  # type: ignore[attr-defined]


def test_one_caller_at_a_time_tries_a_server_that_is_out() -> None:
    server = FakeServer("p")
    clock = ManualClock()
    pool = server.pool(max_connections=4, clock=clock)
    server.down = True
    with pytest.raises(ConnectionLost):
        pool.query("SELECT 1")
    clock.advance(0.05)  # the back-off ended: the next caller may try
    trying, release = threading.Event(), threading.Event()
    real_connect = server.connect

    def slow_connect(**kwargs: object) -> object:
        trying.set()
        release.wait(10)
        return real_connect(**kwargs)  # type: ignore[arg-type]

    server.down = False
    server.module.connect = slow_connect  # type: ignore[attr-defined]
    results: list[object] = []
    first = threading.Thread(target=lambda: results.append(pool.query("SELECT 1")))
    first.start()
    assert trying.wait(10)
    with pytest.raises(ConnectionLost, match="another caller is trying a connect"):
        pool.query("SELECT 1")  # not a second connect to a server that may be down
    assert server.connect_attempts == 1
    release.set()
    first.join(10)
    assert len(results) == 1
    assert server.connect_attempts == 2
    assert pool.query("SELECT 1")[0]["server"] == "p"  # back: everyone connects again


class _Interrupt(BaseException):
    """What a signal handler raises (a job timeout, KeyboardInterrupt)."""


def _interrupt_at_the_try_of_attempt(frame: FrameType, event: str, arg: object) -> Any:
    """A tracer raising ``_Interrupt`` where a signal may land: after the trial is taken,
    before the ``try:`` that would end it."""
    if frame.f_code.co_name != "attempt":
        return None

    def local(frame: FrameType, event: str, arg: object) -> Any:
        line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
        if event == "line" and line.strip() == "try:":
            raise _Interrupt
        return local

    return local


def test_a_trial_abandoned_by_a_signal_expires_and_the_server_is_tried_again() -> None:
    server = FakeServer("p")
    clock = ManualClock()
    pool = server.pool(max_connections=2, clock=clock, connect_args={"connect_timeout": 2})
    server.down = True
    with pytest.raises(ConnectionLost):
        pool.query("SELECT 1")
    server.down = False
    clock.advance(0.05)  # the back-off ended: this caller takes the trial ...
    previous = sys.gettrace()
    sys.settrace(_interrupt_at_the_try_of_attempt)
    try:
        with pytest.raises(_Interrupt):  # ... and a signal handler's exception leaves it
            pool.query("SELECT 1")
    finally:
        sys.settrace(previous)
    assert server.connect_attempts == 1
    clock.advance(8.9)  # within the lease (4 connect steps of 2 s + 1 s): one trial at a time
    with pytest.raises(ConnectionLost, match="another caller is trying a connect"):
        pool.query("SELECT 1")
    clock.advance(0.2)  # the abandoned lease ran out: a connect is tried, and succeeds
    assert pool.query("SELECT 1")[0]["server"] == "p"
    assert server.connect_attempts == 2


def test_a_hung_trial_connect_lets_another_caller_try_once_its_lease_ran_out() -> None:
    server = FakeServer("p")
    clock = ManualClock()
    pool = server.pool(max_connections=4, clock=clock, connect_args={"connect_timeout": 2})
    server.down = True
    with pytest.raises(ConnectionLost):
        pool.query("SELECT 1")
    clock.advance(0.05)
    hung, release = threading.Event(), threading.Event()
    real_connect = server.connect

    def hanging_connect(**kwargs: object) -> object:  # a connect_timeout the driver ignores
        server.module.connect = real_connect  # type: ignore[attr-defined]
        hung.set()
        release.wait(10)
        return real_connect(**kwargs)  # type: ignore[arg-type]

    server.down = False
    server.module.connect = hanging_connect  # type: ignore[attr-defined]
    first = threading.Thread(target=lambda: pool.query("SELECT 1"))
    first.start()
    try:
        assert hung.wait(10)
        with pytest.raises(ConnectionLost, match="another caller is trying a connect"):
            pool.query("SELECT 1")
        clock.advance(9.0)  # 4 x connect_timeout + 1 s: the hung trial's lease is over
        assert pool.query("SELECT 1")[0]["server"] == "p"
        assert server.connect_attempts == 2  # the refused one, then this one
    finally:
        release.set()
        first.join(10)
    assert server.connect_attempts == 3  # the hung one, once released


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            OperationalError(1045, "Access denied for user 'app'@'10.0.0.7' (using password: YES)"),
            r"rejected the connect \(1045 Access denied for user 'app'",
        ),
        (OperationalError(1040, "Too many connections"), r"rejected the connect \(1040 Too many"),
        (
            OperationalError(1129, "Host '10.0.0.7' is blocked because of many connection errors"),
            r"rejected the connect \(1129 Host '10.0.0.7' is blocked",
        ),
        (
            OperationalError(2003, "Can't connect to MySQL server on 'p' ([Errno 113] No route)"),
            r"could not be connected to \(\(2003, \"Can't connect",
        ),
    ],
    ids=["access-denied", "too-many-connections", "host-blocked", "no-route"],
)
def test_a_server_that_rejects_the_connect_backs_off_doubling_up_to_one_second(
    error: OperationalError, message: str
) -> None:
    server = FakeServer("p")
    clock = ManualClock()
    pool = server.pool(max_connections=2, clock=clock)
    cause = OSError(errno.EHOSTUNREACH, "No route to host") if error.args[0] == 2003 else None

    def rejecting(**kwargs: object) -> object:
        server.connect_attempts += 1
        raise error from cause

    server.module.connect = rejecting  # type: ignore[attr-defined]
    failures: list[str] = []
    for _ in range(1000):  # ten seconds of a busy app: one read every 10 ms
        try:
            pool.query("SELECT 1")
        except ConnectionLost as exc:
            failures.append(str(exc))
        clock.advance(0.01)
    # 0.05, 0.1, 0.2, 0.4, 0.8 s, then every 1 s: 14 attempts (200 if retried every 50 ms)
    assert server.connect_attempts == 14
    assert len(failures) == 1000
    assert re.search(r"server down: pool 'p' \(primary\) " + message, failures[1])


def test_the_server_down_message_says_why_the_server_is_out() -> None:
    server = FakeServer("p")
    clock = ManualClock()
    pool = server.pool(clock=clock)
    server.down = True
    with pytest.raises(ConnectionLost, match="Connection refused"):
        pool.query("SELECT 1")
    with pytest.raises(ConnectionLost, match=r"\(primary\) refused a connect \(\(2003, "):
        pool.query("SELECT 1")

    def silent(**kwargs: object) -> object:
        raise OperationalError(2003, "Can't connect to MySQL server") from TimeoutError("timed out")

    server.module.connect = silent  # type: ignore[attr-defined]
    clock.advance(0.05)
    with pytest.raises(ConnectionLost, match="cannot connect"):
        pool.query("SELECT 1")
    with pytest.raises(ConnectionLost, match=r"\(primary\) did not answer \(\(2003, "):
        pool.query("SELECT 1")


def test_an_outage_of_any_length_keeps_its_back_off() -> None:
    server = FakeServer("p")
    clock = ManualClock()
    pool = server.pool(clock=clock)

    def silent(**kwargs: object) -> object:
        server.connect_attempts += 1
        raise OperationalError(2003, "Can't connect to MySQL server") from TimeoutError("timed out")

    server.module.connect = silent  # type: ignore[attr-defined]
    for _ in range(1500):  # 25 minutes of a server that does not answer: 1500 one-second steps
        with pytest.raises(ConnectionLost, match="cannot connect"):
            pool.query("SELECT 1")
        with pytest.raises(ConnectionLost, match="server down"):
            pool.query("SELECT 1")
        clock.advance(1.0)
    assert server.connect_attempts == 1500


def _raised_while_handling(error: Exception, during: BaseException) -> Exception:
    """``error`` raised inside ``except``, as pymysql raises its 2003 (``__context__``)."""
    try:
        try:
            raise during
        except BaseException:
            raise error  # noqa: B904 - the implicit context is what pymysql leaves
    except Exception as raised:
        return raised


@pytest.mark.parametrize(
    ("error", "during", "failure"),
    [
        (
            OperationalError(2003, "Can't connect ([Errno 111] Connection refused)"),
            ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
            ConnectFailure.REFUSED,
        ),
        (
            OperationalError(2003, "Can't connect (timed out)"),
            TimeoutError("timed out"),
            ConnectFailure.UNANSWERED,
        ),
        (
            OperationalError(2003, "Can't connect ([Errno 113] No route to host)"),
            OSError(errno.EHOSTUNREACH, "No route to host"),
            ConnectFailure.FAILED,
        ),
        (
            OperationalError(2013, "Lost connection to MySQL server during handshake"),
            ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
            ConnectFailure.FAILED,
        ),
        (  # the server's answer counts, whatever was refused before it
            OperationalError(1045, "Access denied for user 'app'"),
            ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
            ConnectFailure.REJECTED,
        ),
    ],
    ids=["refused", "timeout", "no-route", "reset", "rejected-after-a-refusal"],
)
def test_a_connect_failure_is_told_by_what_reached_the_server(
    error: Exception, during: BaseException, failure: ConnectFailure
) -> None:
    assert connect_failure(_raised_while_handling(error, during))[0] is failure


def test_a_bare_socket_refusal_is_a_refusal_and_a_bare_errno_is_no_server_error() -> None:
    assert connect_failure(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))[0] is (
        ConnectFailure.REFUSED
    )
    assert connect_failure(OSError(errno.ECONNREFUSED, "refused"))[0] is ConnectFailure.REFUSED
    assert connect_failure(OSError(errno.ENOENT, "No such file"))[0] is ConnectFailure.FAILED
