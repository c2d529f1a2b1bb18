"""What a ``ReplicaSet`` knows about one replica: its last probe and its back-off.

A probe is one ``SHOW REPLICA STATUS`` (``SELECT 1`` on other databases),
run by the read that finds it due — at most once per ``lag_check_interval``,
and before the first read after a back-off. Reads that find it due while
another read probes wait for that probe, so none is served on a status
older than the interval. Any error from the probe or from the replica's
connections takes the replica out for a back-off: one outage is one step,
however many reads failed in it, and a good probe ends it. When the
primary fails, a status that rules the replica out is probed again once it
is ``RECHECK`` old (``last_resort``).
"""

from __future__ import annotations

import dataclasses
import enum
import threading
from collections.abc import Callable

from .. import events
from .._clock import Clock
from .._replica_status import STATUS_STATEMENTS, IoThread, ReplicaStatus, parse_replica_status
from ._driver_errors import is_timeout
from .errors import PoolTimeout, error_code
from .pool import Connection, Pool

__all__ = [
    "LAG_RESOLUTION",
    "LAST_RESORT",
    "HealthPolicy",
    "ReplicaHealth",
    "ReplicaState",
    "Standing",
]

_SYNTAX_ERROR = 1064


class ReplicaState(enum.StrEnum):
    """What the last probe said about a replica (also the ``replica_skipped`` reason)."""

    UNCHECKED = "unchecked"
    SERVING = "serving"
    LAGGING = "lagging"
    STOPPED = "stopped"
    DETACHED = "detached"
    """IO thread reconnecting, SQL thread has applied all it received: a last resort."""
    CATCHING_UP = "catching_up"
    """IO thread reconnecting, SQL thread still applying what it received: a last
    resort once it has applied it (``MASTER_GTID_WAIT`` for ``Gtid_IO_Pos``)."""
    DOWN = "down"


LAST_RESORT = frozenset({ReplicaState.SERVING, ReplicaState.DETACHED})
"""When the primary fails too: replicas whose last status was good, or that have
applied everything they received from the primary that is now gone."""

LAG_RESOLUTION = 1.0
"""``Seconds_Behind_Master`` counts whole seconds: the real lag may exceed it by up to this."""

RECHECK = 0.05
"""Seconds after which a replica that could not be a last resort is probed
again when the primary fails (rather than after a whole ``lag_check_interval``:
a replica catching up or reconnecting changes within milliseconds)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Standing:
    """One consistent reading of a replica for a last-resort read."""

    state: ReplicaState
    received: str | None
    """``Gtid_IO_Pos`` at the last probe (MariaDB with GTID), else None."""
    serving_at: float
    """When a probe last found it replicating within ``max_lag`` (-inf: never)."""


@dataclasses.dataclass(frozen=True, slots=True)
class HealthPolicy:
    """The ``ReplicaSet`` options a replica's health follows, and where it reports."""

    max_lag: float
    lag_check_interval: float
    backoff: float
    max_backoff: float
    clock: Clock
    report: Callable[[str, str], None]
    """``report(decision, reason)``: the set's ``DbRouting`` event."""


class ReplicaHealth:
    """One replica pool, its last probe and its back-off."""

    def __init__(self, pool: Pool, policy: HealthPolicy) -> None:
        self.pool = pool
        self.policy = policy
        self.state = ReplicaState.UNCHECKED
        self.checked_at = float("-inf")
        self.down_until = 0.0
        self.failures = 0
        self.last_lag: float | None = None
        self.received: str | None = None
        """The GTIDs the IO thread had fetched at the last probe (MariaDB)."""
        self.serving_at = float("-inf")
        """When a probe last found it replicating within ``max_lag``."""
        self.stalled: str | None = None
        """A ``received`` position it failed to apply within ``max_lag``: no more waits
        for it until it has applied everything."""
        self._status_sql = STATUS_STATEMENTS[0]
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()

    def after_fork(self) -> None:
        self._lock = threading.Lock()  # a parent thread may have held them at fork time
        self._probe_lock = threading.Lock()

    def check(self) -> ReplicaState:
        """The state a read may rely on now, probing first when a probe is due."""
        now = self._probe_if_due(None)
        if now is None:
            return ReplicaState.DOWN
        state = self.state
        if state is ReplicaState.SERVING and self._due(now):
            return ReplicaState.UNCHECKED  # the probe timed out: no read on an old status
        return state

    def last_resort(self) -> Standing:
        """The replica when the primary failed: a verdict that rules it out is probed
        again once it is ``RECHECK`` seconds old, any other once it is due; a status
        older than ``lag_check_interval`` (its probe could not run) is ``UNCHECKED``."""
        now = self._probe_if_due(None if self.state in LAST_RESORT else RECHECK)
        if now is None:
            return Standing(ReplicaState.DOWN, None, self.serving_at)
        with self._lock:  # state and received from the same probe
            state = self.state
            if state is not ReplicaState.DOWN and self._due(now):
                state = ReplicaState.UNCHECKED
            return Standing(state, self.received, self.serving_at)

    def _probe_if_due(self, interval: float | None) -> float | None:
        """Probe when the status is older than ``interval``; the time after, or None
        while a back-off keeps the replica out."""
        clock = self.policy.clock
        now = clock.monotonic()
        if self.state is ReplicaState.DOWN and now < self.down_until:
            return None
        if self._due(now, interval):
            self.probe(interval)
            now = clock.monotonic()
        return now

    def did_not_catch_up(self, received: str) -> None:
        """A read waited ``max_lag`` for it to apply ``received`` in vain: it is out
        until it has applied everything (a later probe says ``detached``)."""
        with self._lock:
            self.stalled = received
            if self.state is ReplicaState.CATCHING_UP and self.received == received:
                self.state = ReplicaState.STOPPED

    def _due(self, now: float, interval: float | None = None) -> bool:
        if self.state is ReplicaState.DOWN:
            return now >= self.down_until
        if interval is None:
            interval = self.policy.lag_check_interval
        return now >= self.checked_at + interval

    def probe(self, interval: float | None = None) -> None:
        """Check replication status; one thread probes, reads that find it due wait for it.

        Any error — connect refused, timeout, a missing privilege — takes the
        replica out for a back-off; a pool that is merely busy is left alone.
        ``interval``: how old a status may be and still count (default
        ``lag_check_interval``), for a read that waited for another's probe.
        """
        pool = self.pool
        limit = pool.connect_timeout
        if not self._probe_lock.acquire(timeout=-1 if limit is None else limit):
            return
        try:
            if not self._due(self.policy.clock.monotonic(), interval):
                return  # another read probed while this one waited
            try:
                with pool.connection(timeout=limit, deadline=limit) as conn:
                    status = self._status(conn)
            except PoolTimeout:
                return  # busy, not down: reads skip it until a probe gets through
            except Exception as exc:
                self.sideline(exc, "probe")
                return
            now = self.policy.clock.monotonic()
            with self._lock:
                self.failures = 0
                self.checked_at = now
                self.received = None if status is None else status.received_gtid
                self.state = self._judge(status, now)
        finally:
            self._probe_lock.release()

    def _status(self, conn: Connection) -> ReplicaStatus | None:
        if self.pool.dialect != "mysql":
            conn.query("SELECT 1")
            return None
        try:
            return parse_replica_status(conn.query(self._status_sql))
        except Exception as exc:
            if error_code(exc) != _SYNTAX_ERROR or self._status_sql == STATUS_STATEMENTS[-1]:
                raise
        self._status_sql = STATUS_STATEMENTS[-1]  # MariaDB < 10.5
        return parse_replica_status(conn.query(self._status_sql))

    def _judge(self, status: ReplicaStatus | None, now: float) -> ReplicaState:
        if status is None:
            self.serving_at = now
            return ReplicaState.SERVING
        max_lag = self.policy.max_lag
        if status.replicating:
            self.last_lag = status.lag
            if (status.lag or 0.0) > max_lag:
                return ReplicaState.LAGGING
            self.serving_at = now
            return ReplicaState.SERVING
        if (
            status.sql_running
            and status.io is not IoThread.STOPPED  # reconnecting to a primary that is gone
            and self.last_lag is not None
            and self.last_lag <= max_lag
        ):
            if status.applied_all_received:
                self.stalled = None
                return ReplicaState.DETACHED
            received = status.received_gtid
            if received is not None and received != self.stalled:
                return ReplicaState.CATCHING_UP
        return ReplicaState.STOPPED

    def sideline(self, exc: BaseException, during: str) -> None:
        """Take the replica out: one outage is one back-off step, however many reads failed."""
        policy = self.policy
        now = policy.clock.monotonic()
        with self._lock:
            if self.state is ReplicaState.DOWN and now < self.down_until:
                return
            self.failures += 1
            self.state = ReplicaState.DOWN
            # The exponent is bounded: 2.0 ** 1024 overflows after a long enough outage.
            delay = min(policy.backoff * 2.0 ** min(self.failures - 1, 60), policy.max_backoff)
            self.down_until = now + delay
        code = error_code(exc) or (exc.__cause__ and error_code(exc.__cause__))
        kind = "timeout" if is_timeout(exc) else (f"error_{code}" if code else "connection")
        policy.report("replica_down", kind)
        if events.bus.has_listeners(events.BackendError):
            events.emit(events.BackendError("db.replica", during, f"{self.pool.where}: {exc}"))
