"""ReplicaSet routing on fake servers: counts per server, time moved by ManualClock."""

from __future__ import annotations

import contextvars
import threading

import anyio
import pytest
from db_fakedb import FakeServer, OperationalError, lost

from scalekit import events
from scalekit._clock import ManualClock
from scalekit.db import (
    ConfigError,
    MarkStoreUnavailable,
    MemoryMarks,
    MisroutedWrite,
    NoHealthyServer,
    ReplicaSet,
    RetryableTransactionError,
    WriteOutcomeUnknown,
)
from scalekit.db.marks import Mark


def make(
    replicas: int = 1, *, replica_options: dict[str, object] | None = None, **options: object
) -> tuple[ReplicaSet, FakeServer, list[FakeServer], ManualClock]:
    clock = ManualClock()
    primary = FakeServer("primary")
    servers = [FakeServer(f"replica{i}") for i in range(replicas)]
    options.setdefault("clock", clock)
    rs = ReplicaSet(
        primary.pool(clock=clock),
        [s.pool(clock=clock, **(replica_options or {})) for s in servers],
        **options,  # type: ignore[arg-type]
    )
    return rs, primary, servers, clock


ONE_CONNECTION = {"max_connections": 1, "connect_args": {"connect_timeout": 0.01}}
"""A replica pool a test can make busy by holding its only connection."""


def served_by(rows: list[dict[str, object]]) -> object:
    return rows[0]["server"]


def test_pin_after_write_must_exceed_max_lag() -> None:
    primary = FakeServer("p")
    with pytest.raises(ConfigError, match="must exceed max_lag"):
        ReplicaSet(primary.pool(), [], max_lag=5.0, pin_after_write=5.0)


def test_reads_go_to_replicas_round_robin_and_writes_to_primary() -> None:
    rs, primary, (r0, r1), _ = make(2)
    for _ in range(10):
        rs.query("SELECT /* read */ 1")
    rs.execute("INSERT INTO t VALUES (1)")
    assert (r0.count("/* read */"), r1.count("/* read */"), primary.count("/* read */")) == (
        5,
        5,
        0,
    )
    assert primary.count("INSERT") == 1
    assert served_by(rs.query("SELECT 1", primary=True)) == "primary"


def test_replica_sessions_are_read_only() -> None:
    rs, _, (replica,), _ = make()
    rs.query("SELECT 1")
    assert replica.count("SET SESSION TRANSACTION READ ONLY") == 1
    with pytest.raises(MisroutedWrite):
        rs.query("DELETE FROM t")
    assert replica.count("DELETE") == 1


def test_down_replica_backs_off_exponentially_and_only_a_probe_brings_it_back() -> None:
    rs, _primary, (replica,), clock = make(
        backoff=1.0, max_backoff=4.0, lag_check_interval=3600, pin_after_write=4000
    )
    assert served_by(rs.query("SELECT 1")) == "replica0"
    replica.down = True
    for _ in range(500):
        assert served_by(rs.query("SELECT 1")) == "primary"
    assert replica.count("SELECT 1") == 1  # the failed one never reached it; then backed off
    replica.down = False
    clock.advance(0.99)
    assert served_by(rs.query("SELECT 1")) == "primary"
    clock.advance(0.01)
    status_before = replica.count("SHOW REPLICA STATUS")
    assert served_by(rs.query("SELECT 1")) == "replica0"
    assert replica.count("SHOW REPLICA STATUS") == status_before + 1  # the probe

    # Failing probes double the back-off up to max_backoff: 1, 2, 4, 4 s.
    replica.down = True
    rs.query("SELECT 1")  # fails: out for 1 s
    for delay in (1.0, 2.0, 4.0, 4.0):
        attempts = replica.connect_attempts
        clock.advance(delay - 0.01)
        rs.query("SELECT 1")
        assert replica.connect_attempts == attempts  # backing off: not even a connect
        clock.advance(0.01)
        rs.query("SELECT 1")
        assert replica.connect_attempts == attempts + 1  # the probe, which fails


def test_lag_and_stopped_replication_route_to_primary_until_recovered() -> None:
    rs, _, (replica,), clock = make(max_lag=2.0, lag_check_interval=1.0)
    seen: list[events.DbRouting] = []
    unsubscribe = events.subscribe(seen.append, events.DbRouting)
    try:
        assert served_by(rs.query("SELECT 1")) == "replica0"
        assert replica.status is not None
        replica.status["Seconds_Behind_Master"] = 3
        assert served_by(rs.query("SELECT 1")) == "replica0"  # not re-checked yet
        clock.advance(1.0)
        assert served_by(rs.query("SELECT 1")) == "primary"
        replica.status["Seconds_Behind_Master"] = None
        clock.advance(1.0)
        assert served_by(rs.query("SELECT 1")) == "primary"
        replica.status.update(Seconds_Behind_Master=0, Slave_SQL_Running="No")
        clock.advance(1.0)
        assert served_by(rs.query("SELECT 1")) == "primary"
        replica.status["Slave_SQL_Running"] = "Yes"
        clock.advance(1.0)
        assert served_by(rs.query("SELECT 1")) == "replica0"
    finally:
        unsubscribe()
    reasons = [(e.decision, e.reason) for e in seen]
    assert ("replica_skipped", "lagging") in reasons
    assert ("replica_skipped", "stopped") in reasons
    assert ("fallback_primary", "no_replica") in reasons


def test_status_probed_at_most_once_per_interval() -> None:
    rs, _, (replica,), clock = make(lag_check_interval=3600, pin_after_write=4000)
    for _ in range(1000):
        rs.query("SELECT 1")
    assert replica.count("SHOW REPLICA STATUS") == 1
    clock.advance(3600)
    rs.query("SELECT 1")
    assert replica.count("SHOW REPLICA STATUS") == 2


def test_context_pin_after_write_expires_on_the_clock() -> None:
    rs, _, _, clock = make(pin_after_write=5.0)

    def request() -> list[object]:
        rs.execute("INSERT INTO t VALUES (1)")
        first = served_by(rs.query("SELECT 1"))
        clock.advance(4.9)
        second = served_by(rs.query("SELECT 1"))
        clock.advance(0.1)
        return [first, second, served_by(rs.query("SELECT 1"))]

    assert contextvars.copy_context().run(request) == ["primary", "primary", "replica0"]
    # Another context (request) was never pinned.
    assert served_by(rs.query("SELECT 1")) == "replica0"


def test_key_marks_pin_reads_for_that_key_only() -> None:
    marks = MemoryMarks()
    rs, _, _, clock = make(pin_after_write=5.0, marks=marks)
    marks._clock = clock
    contextvars.copy_context().run(rs.execute, "INSERT INTO t VALUES (1)", key=42)
    assert served_by(rs.query("SELECT 1", key=42)) == "primary"
    assert served_by(rs.query("SELECT 1", key=7)) == "replica0"
    with rs.bound(42):
        assert served_by(rs.query("SELECT 1")) == "primary"
    clock.advance(5.0)
    assert served_by(rs.query("SELECT 1", key=42)) == "replica0"


class BrokenMarks:
    def mark(self, key: str, ttl: float, gtid: str | None = None) -> None:
        raise MarkStoreUnavailable("down")

    def lookup(self, key: str) -> Mark | None:
        raise MarkStoreUnavailable("down")


def test_unreachable_mark_store_sends_keyed_reads_to_primary_and_counts() -> None:
    rs, _, _, _ = make(marks=BrokenMarks())
    assert served_by(rs.query("SELECT 1", key=1)) == "primary"
    contextvars.copy_context().run(rs.execute, "INSERT INTO t VALUES (1)", key=1)
    assert rs.marks_unavailable == 2
    assert served_by(rs.query("SELECT 1")) == "replica0"  # no key: unaffected


def test_causal_mode_waits_for_gtid_on_replica() -> None:
    marks = MemoryMarks()
    rs, primary, (replica,), clock = make(marks=marks, causal=True, causal_timeout=0.05)
    marks._clock = clock
    primary.last_gtid = "0-1-42"
    result = contextvars.copy_context().run(rs.execute, "INSERT INTO t VALUES (1)", key=9)
    assert result.token == "0-1-42"
    assert marks.lookup("9") == Mark("0-1-42")
    assert served_by(rs.query("SELECT 1", key=9)) == "replica0"
    assert replica.count("MASTER_GTID_WAIT") == 1
    replica.gtid_wait = -1
    assert served_by(rs.query("SELECT 1", key=9)) == "primary"
    assert served_by(rs.query("SELECT 1", after="0-1-43")) == "primary"
    # A lagging replica is skipped without waiting.
    assert replica.status is not None
    replica.status["Seconds_Behind_Master"] = 100
    clock.advance(1.0)
    waits = replica.count("MASTER_GTID_WAIT")
    assert served_by(rs.query("SELECT 1", key=9)) == "primary"
    assert replica.count("MASTER_GTID_WAIT") == waits


def test_marks_keep_the_highest_gtid_per_domain() -> None:
    marks = MemoryMarks()
    marks.mark("k", 5.0, "0-1-10,1-2-5")
    marks.mark("k", 5.0, "0-1-7,1-2-9")
    assert marks.lookup("k") == Mark("0-1-10,1-2-9")


def test_write_outcome_unknown_is_not_retried_on_replica_set() -> None:
    rs, primary, _, _ = make()
    primary.hook = lambda sql: lost() if sql.startswith("INSERT") else None
    with pytest.raises(WriteOutcomeUnknown):
        rs.execute("INSERT INTO t VALUES (1)")
    assert primary.count("INSERT") == 1


def test_all_servers_down_raises_no_healthy_server() -> None:
    rs, primary, (replica,), _ = make()
    primary.down = replica.down = True
    with pytest.raises(NoHealthyServer):
        rs.query("SELECT 1")


def test_transaction_runs_on_one_connection_and_retries_whole_function() -> None:
    rs, primary, _, _ = make()
    attempts: list[int] = []
    deadlocks = iter([OperationalError(1213, "Deadlock found")])

    def hook(sql: str) -> Exception | None:
        return next(deadlocks, None) if sql.startswith("UPDATE") else None

    primary.hook = hook

    def work(cur: object) -> int:
        attempts.append(1)
        connection_ids = {
            cur.query("SELECT CONNECTION_ID()")[0]["connection"],  # type: ignore[attr-defined]
        }
        cur.execute("UPDATE t SET v = 1")  # type: ignore[attr-defined]
        connection_ids.add(cur.query("SELECT CONNECTION_ID()")[0]["connection"])  # type: ignore[attr-defined]
        return len(connection_ids)

    assert rs.transaction(work, retries=2) == 1
    assert len(attempts) == 2
    assert (primary.count("BEGIN"), primary.count("ROLLBACK"), primary.count("COMMIT")) == (2, 1, 1)
    deadlocks = iter([OperationalError(1213, "Deadlock")] * 5)
    with pytest.raises(RetryableTransactionError):
        rs.transaction(work, retries=1)


@pytest.mark.anyio
async def test_async_wrappers_carry_context_and_pin_the_caller() -> None:
    rs, _, _, _ = make()
    with rs.bound(5):
        rows = await rs.aquery("SELECT 1")
    assert served_by(rows) == "replica0"
    await rs.aexecute("INSERT INTO t VALUES (1)")
    assert served_by(await rs.aquery("SELECT 1")) == "primary"  # pinned in this task
    assert served_by(await rs.atransaction(lambda cur: cur.query("SELECT 1"))) == "primary"

    async def other_task(results: list[object]) -> None:
        results.append(served_by(await rs.aquery("SELECT 1")))

    results: list[object] = []
    async with anyio.create_task_group() as group:
        group.start_soon(other_task, results)
    assert results == ["primary"]  # child tasks inherit the pinned context


def test_transaction_begin_on_a_dead_connection_starts_again_on_a_fresh_one() -> None:
    rs, primary, _, _ = make()
    rs.execute("INSERT INTO t VALUES (0)")  # leaves one idle connection
    failures = iter([lost(2013)])
    primary.hook = lambda sql: next(failures, None) if sql == "BEGIN" else None
    with rs.transaction() as cur:
        cur.execute("INSERT INTO t VALUES (1)")
    assert (primary.count("BEGIN"), primary.count("COMMIT")) == (2, 1)
    assert rs.primary.stats().in_use == 0


@pytest.mark.parametrize(
    ("max_lag", "interval", "pin"),
    [(2.0, 1.0, 2.05), (2.0, 1.0, 4.0), (0.0, 5.0, 5.5)],
)
def test_pin_after_write_must_cover_the_real_lag_bound(
    max_lag: float, interval: float, pin: float
) -> None:
    # Seconds_Behind_Master is whole seconds, checked once per interval: a
    # serving replica can be up to max_lag + 1 + interval behind.
    with pytest.raises(ConfigError, match=r"max_lag \+ 1 \+ lag_check_interval"):
        ReplicaSet(
            FakeServer("p").pool(),
            [],
            max_lag=max_lag,
            lag_check_interval=interval,
            pin_after_write=pin,
        )
    ReplicaSet(
        FakeServer("p").pool(),
        [],
        max_lag=max_lag,
        lag_check_interval=interval,
        pin_after_write=max_lag + 1 + interval + 0.01,
    )


def test_no_read_is_served_on_a_status_older_than_the_interval() -> None:
    rs, _, (replica,), clock = make(max_lag=2.0, lag_check_interval=1.0)
    assert served_by(rs.query("SELECT 1")) == "replica0"
    clock.advance(1.0)  # the status is due again
    assert replica.status is not None
    replica.status["Seconds_Behind_Master"] = 30
    probing = threading.Event()
    release = threading.Event()

    def slow_probe(sql: str) -> None:
        if sql.startswith("SHOW REPLICA STATUS"):
            probing.set()
            release.wait(10)

    replica.hook = slow_probe  # type: ignore[assignment]
    first: list[object] = []
    prober = threading.Thread(target=lambda: first.append(served_by(rs.query("SELECT 1"))))
    prober.start()
    probing.wait(10)
    second: list[object] = []
    waiter = threading.Thread(target=lambda: second.append(served_by(rs.query("SELECT 1"))))
    waiter.start()
    release.set()
    prober.join(10)
    waiter.join(10)
    # The second read did not use the old "serving" status while the probe ran.
    assert (first, second) == (["primary"], ["primary"])
    assert replica.count("SHOW REPLICA STATUS") == 2  # one probe per interval still


def test_a_status_probe_that_fails_in_any_way_sidelines_the_replica() -> None:
    rs, _, (replica,), clock = make(lag_check_interval=0.0, pin_after_write=1.5, max_lag=0.0)
    seen: list[events.Event] = []
    unsubscribe = events.subscribe(seen.append)

    def refuse(sql: str) -> None:
        if sql.startswith("SHOW REPLICA STATUS"):
            raise OperationalError(1227, "Access denied; you need the REPLICA MONITOR privilege")

    replica.hook = refuse  # type: ignore[assignment]
    try:
        for _ in range(5):
            clock.advance(60.0)
            assert served_by(rs.query("SELECT 1")) == "primary"
    finally:
        unsubscribe()
    routing = [(e.decision, e.reason) for e in seen if isinstance(e, events.DbRouting)]
    assert routing.count(("replica_down", "error_1227")) == 5
    assert any(isinstance(e, events.BackendError) and "1227" in e.error for e in seen)


# -- the primary down: which replica may still serve -----------------------------------

RECONNECTING = {
    "Slave_IO_Running": "Connecting",
    "Seconds_Behind_Master": None,
    "Master_Log_File": "primary-bin.000001",
    "Relay_Master_Log_File": "primary-bin.000001",
}


def detach(server: FakeServer) -> None:
    """Its IO thread reconnects in vain; its SQL thread has applied everything."""
    assert server.status is not None
    server.status.update(RECONNECTING, Read_Master_Log_Pos=900, Exec_Master_Log_Pos=900)


def catch_up(server: FakeServer, *, gtid: bool = True) -> None:
    """Its IO thread reconnects in vain; its SQL thread still applies what it received."""
    assert server.status is not None
    server.status.update(RECONNECTING, Read_Master_Log_Pos=900, Exec_Master_Log_Pos=400)
    if gtid:
        server.status.update(Using_Gtid="Slave_Pos", Gtid_IO_Pos="0-1-9")


def test_a_replica_still_applying_what_it_received_serves_once_it_has() -> None:
    rs, primary, (replica,), clock = make(max_lag=2.0, lag_check_interval=1.0)
    assert served_by(rs.query("SELECT 1")) == "replica0"  # lag 0: its last known lag
    assert replica.status is not None
    catch_up(replica)
    primary.down = True
    clock.advance(1.0)
    assert served_by(rs.query("SELECT 1")) == "replica0"  # after it applied 0-1-9
    assert replica.count("MASTER_GTID_WAIT") == 1
    replica.gtid_wait = -1  # it did not get there within max_lag
    with pytest.raises(NoHealthyServer):
        rs.query("SELECT 1")
    assert replica.count("MASTER_GTID_WAIT") == 2


def test_a_replica_without_gtid_still_applying_does_not_serve() -> None:
    rs, primary, (replica,), clock = make(max_lag=2.0, lag_check_interval=1.0)
    rs.query("SELECT 1")
    assert replica.status is not None
    catch_up(replica, gtid=False)
    primary.down = True
    clock.advance(1.0)
    with pytest.raises(NoHealthyServer):
        rs.query("SELECT 1")
    replica.status["Exec_Master_Log_Pos"] = 900  # applied all it received: detached
    clock.advance(0.05)
    assert served_by(rs.query("SELECT 1")) == "replica0"


def test_a_verdict_ruling_a_replica_out_is_probed_again_when_the_primary_fails() -> None:
    rs, primary, (replica,), clock = make(max_lag=2.0, lag_check_interval=1.0)
    assert replica.status is not None
    replica.status["Seconds_Behind_Master"] = 3
    assert served_by(rs.query("SELECT 1")) == "primary"  # lagging
    replica.status["Seconds_Behind_Master"] = 0  # caught up since
    primary.down = True
    probes = replica.count("SHOW REPLICA STATUS")
    with pytest.raises(NoHealthyServer):  # the same instant: the verdict stands
        rs.query("SELECT 1")
    clock.advance(0.05)  # not a whole lag_check_interval
    assert served_by(rs.query("SELECT 1")) == "replica0"
    assert replica.count("SHOW REPLICA STATUS") == probes + 1
    for _ in range(50):
        assert served_by(rs.query("SELECT 1")) == "replica0"
    assert replica.count("SHOW REPLICA STATUS") == probes + 1


def test_a_read_that_must_see_a_gtid_gets_it_from_the_last_resort_replica_or_fails() -> None:
    rs, primary, (replica,), _ = make(causal=True)
    assert served_by(rs.query("SELECT 1")) == "replica0"
    primary.down = True
    replica.gtid_wait = -1  # the replica has not applied 0-1-5
    with pytest.raises(NoHealthyServer):
        rs.query("SELECT 1", after="0-1-5")
    replica.gtid_wait = 0
    assert served_by(rs.query("SELECT 1", after="0-1-5")) == "replica0"


def test_a_catching_up_replica_that_did_not_catch_up_is_not_waited_for_again() -> None:
    rs, primary, (replica,), clock = make(max_lag=2.0, lag_check_interval=1.0)
    rs.query("SELECT 1")
    assert replica.status is not None
    catch_up(replica)
    primary.down = True
    replica.gtid_wait = -1  # stuck: a lock, a long ALTER
    clock.advance(1.0)
    with pytest.raises(NoHealthyServer, match="catching up and did not apply"):
        rs.query("SELECT 1")
    for _ in range(20):  # every later read fails at once, re-probed or not
        with pytest.raises(NoHealthyServer):
            rs.query("SELECT 1")
        clock.advance(0.05)
    assert replica.count("MASTER_GTID_WAIT") == 1
    replica.status["Exec_Master_Log_Pos"] = 900  # it got there after all: detached
    clock.advance(0.05)
    assert served_by(rs.query("SELECT 1")) == "replica0"


def test_a_replica_that_lost_the_primary_before_the_set_last_reached_it_does_not_serve() -> None:
    rs, primary, (replica,), clock = make(max_lag=2.0, lag_check_interval=1.0)
    assert served_by(rs.query("SELECT 1")) == "replica0"
    assert replica.status is not None
    # Its IO thread loses the primary (a changed replication password, a
    # network cut) while the primary keeps acknowledging writes for 30 s.
    detach(replica)
    for _ in range(30):
        clock.advance(1.0)
        rs.execute("INSERT INTO t VALUES (1)")
        assert served_by(rs.query("SELECT 1")) == "primary"  # detached: not while it answers
    clock.advance(10.0)  # the last write's pin is over
    primary.down = True
    with pytest.raises(NoHealthyServer, match="may have lost the primary earlier"):
        rs.query("SELECT 1")


def test_a_replica_that_lost_the_primary_with_it_serves_after_writes() -> None:
    rs, primary, (replica,), clock = make(max_lag=2.0, lag_check_interval=1.0)
    rs.execute("INSERT INTO t VALUES (1)")
    clock.advance(10.0)  # the pin is over
    assert served_by(rs.query("SELECT 1")) == "replica0"
    primary.down = True  # the primary stops; the replica's IO thread notices
    assert replica.status is not None
    detach(replica)
    clock.advance(1.0)
    assert served_by(rs.query("SELECT 1")) == "replica0"


def test_a_status_too_old_to_trust_is_not_a_last_resort() -> None:
    rs, primary, (replica,), clock = make(replica_options=ONE_CONNECTION)
    assert served_by(rs.query("SELECT 1")) == "replica0"
    primary.down = True
    clock.advance(30.0)
    busy = rs.replicas[0].connection()  # the replica's only connection: no probe can run
    with busy, pytest.raises(NoHealthyServer, match="replica0 is unchecked"):
        rs.query("SELECT 1")  # its 30 s old "serving" is not enough
    assert replica.count("SELECT 1") == 1


def test_last_resort_reads_are_spread_over_the_replicas() -> None:
    rs, primary, servers, clock = make(3)
    for _ in range(3):
        rs.query("SELECT 1")
    primary.down = True
    for server in servers:
        assert server.status is not None
        detach(server)
    clock.advance(1.0)
    before = [server.count("SELECT /* r */") for server in servers]
    for _ in range(300):
        rs.query("SELECT /* r */ 1")
    assert [
        server.count("SELECT /* r */") - n for server, n in zip(servers, before, strict=True)
    ] == [
        100,
        100,
        100,
    ]


def test_a_write_sent_as_a_query_is_not_sent_to_a_replica_when_the_primary_is_down() -> None:
    rs, primary, (replica,), clock = make()
    rs.query("SELECT 1")
    primary.down = True
    assert replica.status is not None
    detach(replica)
    clock.advance(1.0)
    with pytest.raises(NoHealthyServer):
        rs.query("INSERT INTO t VALUES (1) RETURNING id")
    assert replica.count("INSERT") == 0


def test_the_catch_up_wait_leaves_the_replica_read_time_within_its_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rs, primary, (replica,), clock = make(max_lag=12.0, pin_after_write=15.0)
    rs.query("SELECT 1")
    assert replica.status is not None
    catch_up(replica)
    primary.down = True
    clock.advance(1.0)
    waits: list[float | None] = []
    caught_up = rs._caught_up

    def recording(conn: object, gtid: str, wait: float | None = None) -> bool:
        waits.append(wait)
        return caught_up(conn, gtid, wait)  # type: ignore[arg-type]

    monkeypatch.setattr(rs, "_caught_up", recording)
    assert served_by(rs.query("SELECT 1")) == "replica0"
    read_timeout = rs.replicas[0].read_timeout
    assert read_timeout is not None
    assert waits == [pytest.approx(read_timeout - 0.5, abs=0.05)]  # not 12 s past the 10 s


def test_a_replica_down_for_thousands_of_probes_keeps_its_back_off() -> None:
    rs, _primary, (replica,), clock = make(backoff=0.5, max_backoff=5.0)
    replica.down = True
    for _ in range(1100):  # 2 ** 1024 overflows a float: the delay must stay bounded
        clock.advance(5.0)
        assert served_by(rs.query("SELECT 1")) == "primary"
    attempts = replica.connect_attempts
    clock.advance(4.9)
    rs.query("SELECT 1")
    assert replica.connect_attempts == attempts  # still backing off for max_backoff


def test_an_idle_set_does_not_serve_a_replica_it_last_saw_replicating_long_ago() -> None:
    rs, primary, (replica,), clock = make(max_lag=2.0, lag_check_interval=1.0)
    assert served_by(rs.query("SELECT 1")) == "replica0"  # never used the primary
    assert replica.status is not None
    # While this set is idle, the replica loses the primary (another set's
    # writes are acknowledged meanwhile); then the primary goes down.
    detach(replica)
    clock.advance(10.0)
    primary.down = True
    with pytest.raises(NoHealthyServer, match="may have lost the primary earlier"):
        rs.query("SELECT 1")


def test_a_replica_cut_off_while_another_kept_serving_is_not_a_last_resort() -> None:
    rs, primary, (cut, live), clock = make(2, balance="least_in_use")
    rs.query("SELECT 1")
    rs.query("SELECT 1", primary=True)
    assert cut.status is not None
    assert live.status is not None
    detach(cut)
    for _ in range(3600):  # an hour of reads, all served by the live replica
        clock.advance(1.0)
        assert served_by(rs.query("SELECT 1")) == "replica1"
    primary.down = True  # the live one loses it too, now
    detach(live)
    clock.advance(1.0)
    served = {served_by(rs.query("SELECT 1")) for _ in range(20)}
    assert served == {"replica1"}  # never the one an hour behind


def test_last_resort_reads_rotate_over_an_even_number_of_replicas() -> None:
    rs, primary, servers, clock = make(2)
    rs.query("SELECT 1")
    rs.query("SELECT 1")
    primary.down = True
    for server in servers:
        assert server.status is not None
        detach(server)
    clock.advance(1.0)
    for _ in range(300):
        rs.query("SELECT /* r */ 1")
    assert [server.count("SELECT /* r */") for server in servers] == [150, 150]


def test_one_read_waits_on_catching_up_replicas_within_one_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import scalekit.db._last_resort as last_resort_module

    rs, primary, servers, clock = make(4, max_lag=5.0, pin_after_write=8.0)
    for _ in range(4):
        rs.query("SELECT 1")
    for server in servers:
        assert server.status is not None
        catch_up(server)
        server.gtid_wait = -1  # none catches up
    primary.down = True
    clock.advance(1.0)
    left = iter([10.0, 5.0, 0.4, 0.4])  # each wait spends what it was given

    class SpentDeadline:
        def __init__(self, seconds: float | None) -> None:
            pass

        def remaining(self) -> float:
            return next(left)

    monkeypatch.setattr(last_resort_module, "Deadline", SpentDeadline)
    with pytest.raises(NoHealthyServer, match="no time left"):
        rs.query("SELECT 1")
    assert sum(server.count("MASTER_GTID_WAIT") for server in servers) == 2


def test_a_busy_catching_up_replica_is_not_taken_for_one_that_will_not_catch_up() -> None:
    rs, primary, (replica,), clock = make(replica_options=ONE_CONNECTION)
    rs.query("SELECT 1")
    assert replica.status is not None
    catch_up(replica)
    primary.down = True
    clock.advance(1.0)
    rs.query("SELECT 1")  # probed: catching up, waited for, served
    clock.advance(0.05)
    busy = rs.replicas[0].connection(timeout=0.01)
    with busy, pytest.raises(NoHealthyServer):
        rs.query("SELECT 1")  # its only connection is taken: busy, not stalled
    clock.advance(0.05)
    assert served_by(rs.query("SELECT 1")) == "replica0"  # still waited for and served
