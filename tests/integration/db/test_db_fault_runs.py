"""Load through faults on the real primary + replica: nothing lost, nothing doubled, no stale read.

Eight threads (or fifty tasks) — half write and read their own writes back
as a new request for the same key, half read unkeyed — run while the test kills, freezes
and delays the replica, or restarts and crashes the primary. Counted at the
end: every acknowledged write present exactly once, no write present twice,
no read-your-writes miss, no unkeyed read failed while the primary was
down, no operation longer than its configured deadline, every worker served.
The fault durations are real time (that is what a fault is); nothing is
asserted on time except the deadlines.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import threading
import time
import uuid
from collections.abc import Callable

import anyio
import anyio.to_thread
import pytest
from db_helpers import Pools
from harness import APP_DATABASE, MariaDBReplication

from scalekit import events
from scalekit._clock import SystemClock
from scalekit.db import DatabaseError, ReplicaSet, WriteOutcomeUnknown, request_scope

TABLE = "fault_items"
MARGIN = 2.0  # scheduling on a shared 2-core machine


@dataclasses.dataclass
class Tally:
    acknowledged: set[str] = dataclasses.field(default_factory=set)
    unknown: set[str] = dataclasses.field(default_factory=set)
    failed_writes: int = 0
    ryw_reads: int = 0
    ryw_misses: list[str] = dataclasses.field(default_factory=list)
    ryw_errors: int = 0
    reads: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    unkeyed_failures: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )
    errors: collections.Counter[tuple[str, str]] = dataclasses.field(
        default_factory=collections.Counter
    )
    """(phase, error with its numbers blanked): what failed, to say why in the verdict."""
    routing: collections.Counter[tuple[str, str, str]] = dataclasses.field(
        default_factory=collections.Counter
    )
    """(phase, decision, reason) of the set's routing events."""
    too_long: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    per_worker: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


class Run:
    """One workload against one ReplicaSet, with the phase the fault driver is in."""

    def __init__(self, rs: ReplicaSet) -> None:
        self.rs = rs
        self.tally = Tally()
        self.phase = "steady"
        self.stop = threading.Event()
        replica, primary = rs.replicas[0], rs.primary
        assert replica.read_timeout is not None
        assert primary.read_timeout is not None
        self.write_deadline = primary.read_timeout + MARGIN
        # A probe and a read on the replica, each bounded, then the primary.
        self.read_deadline = 2 * replica.read_timeout + primary.read_timeout + MARGIN
        self.tag = uuid.uuid4().hex[:8]

    def routed(self, event: events.DbRouting) -> None:
        with self.tally.lock:
            self.tally.routing[self.phase, event.decision, event.reason] += 1

    def timed(self, what: str, deadline: float, started: float) -> None:
        took = time.monotonic() - started
        if took > deadline:
            with self.tally.lock:
                self.tally.too_long.append((what, took))

    # -- one iteration, sync (threads) -----------------------------------------------
    def write(self, uid: int, n: int) -> str | None:
        token = f"{self.tag}-{uid}-{n}"
        started = time.monotonic()
        try:
            with request_scope():
                self.rs.execute(
                    f"INSERT INTO {TABLE} (uid, token) VALUES (%s, %s)", [uid, token], key=uid
                )
        except WriteOutcomeUnknown:
            return self.outcome(token, None)
        except DatabaseError:
            return self.outcome(token, False)
        finally:
            self.timed("write", self.write_deadline, started)
        return self.outcome(token, True)

    def outcome(self, token: str, acknowledged: bool | None) -> str | None:
        with self.tally.lock:
            if acknowledged:
                self.tally.acknowledged.add(token)
            elif acknowledged is None:
                self.tally.unknown.add(token)
            else:
                self.tally.failed_writes += 1
        return token if acknowledged else None

    def read_back(self, uid: int, token: str) -> None:
        started = time.monotonic()
        try:
            with request_scope():  # a new request: only the key's mark routes it
                rows = self.rs.query(
                    f"SELECT COUNT(*) AS n FROM {TABLE} WHERE token = %s", [token], key=uid
                )
        except DatabaseError:
            with self.tally.lock:
                self.tally.ryw_errors += 1
            return
        finally:
            self.timed("read_back", self.read_deadline, started)
        with self.tally.lock:
            self.tally.ryw_reads += 1
            if rows[0]["n"] != 1:
                self.tally.ryw_misses.append(token)

    def read(self) -> None:
        phase = self.phase
        started = time.monotonic()
        try:
            with request_scope():
                self.rs.query("SELECT 1 AS one")
        except DatabaseError as exc:
            with self.tally.lock:
                self.tally.unkeyed_failures[phase] += 1
                self.tally.errors[phase, _shape(exc)] += 1
            return
        finally:
            self.timed("read", self.read_deadline, started)
        with self.tally.lock:
            self.tally.reads[phase] += 1

    def iteration(self, uid: int, n: int) -> None:
        """Even workers write and read their write back; odd ones read unkeyed."""
        if uid % 2 == 0:
            token = self.write(uid, n)
            if token is not None:
                self.read_back(uid, token)
        else:
            self.read()
        with self.tally.lock:
            self.tally.per_worker[uid] += 1

    def thread_worker(self, uid: int) -> None:
        n = 0
        while not self.stop.is_set():
            self.iteration(uid, n)
            n += 1

    async def task_worker(self, uid: int) -> None:
        n = 0
        while not self.stop.is_set():
            await anyio.to_thread.run_sync(self.iteration, uid, n)
            n += 1

    # -- verdict ----------------------------------------------------------------------
    def check(self, setup: MariaDBReplication, workers: int) -> None:
        rows = setup.primary.query(
            f"SELECT token, COUNT(*) AS n FROM {APP_DATABASE}.{TABLE} WHERE token LIKE %s "
            "GROUP BY token",
            [f"{self.tag}-%"],
        )
        present = {row["token"]: int(row["n"]) for row in rows}
        tally = self.tally
        print(  # shown with -s: what the run did, for the record
            f"\nfault run, {workers} workers: {len(tally.acknowledged)} acknowledged writes "
            f"({len(tally.unknown)} unknown, {tally.failed_writes} failed), "
            f"{tally.ryw_reads} read-your-writes reads, unkeyed reads by phase "
            f"{dict(tally.reads)}, failures {dict(tally.unkeyed_failures)}"
        )
        missing = tally.acknowledged - set(present)
        duplicated = {token for token, n in present.items() if n > 1}
        unexplained = set(present) - tally.acknowledged - tally.unknown
        assert (missing, duplicated, unexplained) == (set(), set(), set())
        assert tally.ryw_misses == []
        assert tally.too_long == []
        assert sum(tally.unkeyed_failures.values()) == 0, "\n".join(
            [f"unkeyed read failures by phase: {dict(tally.unkeyed_failures)}"]
            + [f"  {n} x {phase}: {error}" for (phase, error), n in tally.errors.most_common(10)]
            + ["routing events:"]
            + [f"  {n} x {key}" for key, n in sorted(tally.routing.items())]
        )
        assert len(tally.acknowledged) > 10 * workers
        assert tally.ryw_reads > 10 * workers
        for kind in (0, 1):  # writers, readers: every worker of a kind served alike
            counts = [tally.per_worker[uid] for uid in range(kind, workers, 2)]
            assert min(counts) >= 0.3 * sum(counts) / len(counts), counts


def _shape(exc: BaseException) -> str:
    """An error's class and message with numbers blanked, so one cause counts once."""
    text = re.sub(r"(?<![\d.])\d+(?![\d.]*s\b)", "#", f"{type(exc).__name__}: {exc}")
    return text if len(text) <= 400 else f"{text[:150]} ... {text[-250:]}"


@pytest.fixture
def fault_db(mariadb_replication: MariaDBReplication, pools: Pools) -> ReplicaSet:
    with mariadb_replication.primary.app_connect() as conn, conn.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
            "uid INT NOT NULL, token VARCHAR(64) NOT NULL, KEY (token))"
        )
    mariadb_replication.wait_caught_up()
    clock = SystemClock()  # pins, marks and back-offs in real time, as in production
    # The replica keeps its default timeouts (connect 2 s, read 10 s).
    options = {"clock": clock, "max_connections": 60, "acquire_timeout": 5.0}
    primary = pools.pool(
        mariadb_replication.primary.url + "?read_timeout=5", name="primary", **options
    )
    replica = pools.pool(mariadb_replication.replica.url, name="replica", **options)
    return ReplicaSet(primary, [replica], clock=clock)  # default pin, lag and back-off


def replica_faults(setup: MariaDBReplication, run: Run) -> None:
    time.sleep(1.0)
    run.phase = "replica_killed"
    setup.replica.kill()
    time.sleep(1.0)
    setup.replica.start()
    setup.wait_replicating()
    run.phase = "replica_frozen"
    setup.replica.freeze()
    time.sleep(2.5)
    setup.replica.thaw()
    run.phase = "replica_lagging"
    setup.set_delay(4)
    time.sleep(3.0)
    setup.clear_delay()
    run.phase = "steady"
    time.sleep(1.5)


def primary_faults(setup: MariaDBReplication, run: Run) -> None:
    time.sleep(1.0)
    run.phase = "primary_restart"
    setup.primary.stop()
    time.sleep(2.0)
    setup.primary.start()
    run.phase = "steady"
    # The crash below is meant to find a current replica (its last known lag
    # within max_lag), as a restart long ago would: let it catch up with the
    # writes made while it reconnected, then one lag check see that.
    setup.wait_caught_up()
    time.sleep(1.5)
    run.phase = "primary_crash"
    setup.primary.kill()
    time.sleep(2.0)
    setup.primary.start()
    run.phase = "steady"
    time.sleep(2.0)


def run_threads(run: Run, faults: Callable[[], None], workers: int = 8) -> None:
    threads = [threading.Thread(target=run.thread_worker, args=(uid,)) for uid in range(workers)]
    unsubscribe = events.bus.subscribe(run.routed, events.DbRouting)
    for thread in threads:
        thread.start()
    try:
        faults()
    finally:
        run.stop.set()
        for thread in threads:
            thread.join(60)
        unsubscribe()


async def run_tasks(run: Run, faults: Callable[[], None], workers: int = 50) -> None:
    limiter = anyio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = workers + 5  # every task gets a worker thread
    unsubscribe = events.bus.subscribe(run.routed, events.DbRouting)
    try:
        async with anyio.create_task_group() as group:
            for uid in range(workers):
                group.start_soon(run.task_worker, uid)
            try:
                await anyio.to_thread.run_sync(faults)
            finally:
                run.stop.set()
    finally:
        unsubscribe()


def test_eight_threads_through_replica_kill_freeze_and_lag(
    mariadb_replication: MariaDBReplication, fault_db: ReplicaSet
) -> None:
    run = Run(fault_db)
    run_threads(run, lambda: replica_faults(mariadb_replication, run))
    run.check(mariadb_replication, 8)


def test_eight_threads_through_primary_restart_and_crash(
    mariadb_replication: MariaDBReplication, fault_db: ReplicaSet
) -> None:
    run = Run(fault_db)
    run_threads(run, lambda: primary_faults(mariadb_replication, run))
    run.check(mariadb_replication, 8)
    assert min(run.tally.reads["primary_restart"], run.tally.reads["primary_crash"]) > 4 * 10


@pytest.mark.anyio
async def test_fifty_tasks_through_replica_kill_freeze_and_lag(
    mariadb_replication: MariaDBReplication, fault_db: ReplicaSet
) -> None:
    run = Run(fault_db)
    await run_tasks(run, lambda: replica_faults(mariadb_replication, run))
    run.check(mariadb_replication, 50)


@pytest.mark.anyio
async def test_fifty_tasks_through_primary_restart_and_crash(
    mariadb_replication: MariaDBReplication, fault_db: ReplicaSet
) -> None:
    run = Run(fault_db)
    await run_tasks(run, lambda: primary_faults(mariadb_replication, run))
    run.check(mariadb_replication, 50)
    assert min(run.tally.reads["primary_restart"], run.tally.reads["primary_crash"]) > 25 * 10
