"""``ReplicaSet``: reads to a healthy, fresh replica, writes to the primary, read-your-writes."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import threading
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar, overload

from .. import events
from .._breaker import CircuitBreaker, CircuitOpen
from .._clock import Clock, get_clock
from .errors import (
    ConfigError,
    ConnectionLost,
    NoHealthyServer,
    PoolTimeout,
    RetryableTransactionError,
)
from .marks import MarkStore, MarkStoreUnavailable, MemoryMarks, RedisMarks, merge_gtids
from .pool import Connection, Cursor, Params, Pool, Result, Row

__all__ = ["ReplicaSet"]

T = TypeVar("T")

# Per context (one request, sync or async): ReplicaSet number -> (pinned until, GTID).
_pins: contextvars.ContextVar[Mapping[int, tuple[float, str | None]]] = contextvars.ContextVar(
    "scalekit_db_pins", default=types.MappingProxyType({})
)
_bound_key: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "scalekit_db_bound_key", default=None
)

_set_ids = itertools.count(1)  # never reused, unlike id()

_STATUS_SQL = "SHOW REPLICA STATUS"
_GTID_WAIT_SQL = "SELECT MASTER_GTID_WAIT(%s, %s) AS waited"


class _Replica:
    """One replica pool and what the ``ReplicaSet`` knows about it."""

    __slots__ = ("check_lock", "down", "down_until", "failures", "next_check", "pool", "reason")

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.down = False
        self.down_until = 0.0
        self.failures = 0
        self.next_check = float("-inf")  # first read checks replication status
        self.reason = ""  # why it gets no reads: "", "lagging", "stopped", "down"
        self.check_lock = threading.Lock()


class ReplicaSet:
    """A primary pool plus replica pools, with read/write routing.

    Args:
        primary: the pool every write, transaction and fallback read uses.
        replicas: replica pools; their sessions are made ``READ ONLY``.
        max_lag: seconds of ``Seconds_Behind_Master`` above which a replica
            gets no reads.
        pin_after_write: seconds reads go to the primary after a write, in the
            same context and for the written ``key``. Must exceed ``max_lag``.
        lag_check_interval: at most one replication-status query per replica
            per this many seconds (run by the read that finds it due).
        backoff: seconds a failed replica first stays out; doubles per
            failure up to ``max_backoff``. After it a probe decides.
        max_backoff: the cap of ``backoff``.
        marks: where marks for ``key=`` live: a ``MarkStore``, a Redis URL
            (``RedisMarks``) or None for this process's memory.
        causal: on MariaDB with GTID, record each write's GTID and let a read
            for its key use a replica once ``MASTER_GTID_WAIT`` confirms it.
        causal_timeout: seconds a replica may wait for a GTID before the read
            goes to the primary.
        balance: ``"round_robin"`` or ``"least_in_use"``.
        name: how events name this set (default: the primary's name).
        clock: the clock for back-offs, pins and lag checks.

    Raises:
        ConfigError: ``pin_after_write <= max_lag``, or another bad option.
    """

    def __init__(
        self,
        primary: Pool,
        replicas: Sequence[Pool] = (),
        *,
        max_lag: float = 2.0,
        pin_after_write: float = 5.0,
        lag_check_interval: float = 1.0,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        marks: MarkStore | str | None = None,
        causal: bool = False,
        causal_timeout: float = 0.05,
        balance: str = "round_robin",
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        if pin_after_write <= max_lag:
            raise ConfigError(
                f"pin_after_write={pin_after_write!r} must exceed max_lag={max_lag!r}: a read "
                "right after a write could otherwise hit a replica that has not applied it"
            )
        if balance not in ("round_robin", "least_in_use"):
            raise ConfigError(f"balance={balance!r}: use 'round_robin' or 'least_in_use'")
        for option, value in (
            ("max_lag", max_lag),
            ("lag_check_interval", lag_check_interval),
            ("backoff", backoff),
            ("causal_timeout", causal_timeout),
        ):
            if value < 0:
                raise ConfigError(f"{option}={value!r} must not be negative")
        if max_backoff < backoff:
            raise ConfigError(f"max_backoff={max_backoff!r} must be at least backoff={backoff!r}")
        self.primary = primary
        self.replicas = tuple(replicas)
        for pool in self.replicas:
            if pool is primary:
                raise ConfigError("the primary pool cannot also be a replica")
            pool.role = "replica"
            pool._make_read_only()
        self.max_lag = max_lag
        self.pin_after_write = pin_after_write
        self.lag_check_interval = lag_check_interval
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.causal = causal
        self.causal_timeout = causal_timeout
        self.balance = balance
        self.name = name or primary.name
        self._clock = clock or get_clock()
        self._owns_marks = isinstance(marks, str)
        if isinstance(marks, str):
            self._marks: MarkStore = (
                MemoryMarks(clock=self._clock)
                if marks.startswith("memory:")
                else RedisMarks(marks, clock=self._clock)
            )
        else:
            self._marks = marks if marks is not None else MemoryMarks(clock=self._clock)
        self._marks_breaker = CircuitBreaker(failure_threshold=3, cooldown=5.0, clock=self._clock)
        self.marks_unavailable = 0
        """Reads and writes that found the mark store unreachable (reads went to the primary)."""
        self._replicas = [_Replica(pool) for pool in self.replicas]
        self._turn = itertools.count()
        self._id = next(_set_ids)

    # -- reads -------------------------------------------------------------
    def query(
        self,
        sql: str,
        params: Params = None,
        *,
        key: object = None,
        primary: bool = False,
        after: str | None = None,
    ) -> list[Row]:
        """Run a read on a healthy, fresh replica, else on the primary.

        Args:
            sql: the statement, with ``%s`` placeholders.
            params: its parameters.
            key: read-your-writes key (e.g. the user id): if it wrote within
                ``pin_after_write``, read where the write is visible.
            primary: read from the primary whatever the replicas' state.
            after: a ``Result.token`` (GTID) the read must see.

        Raises:
            NoHealthyServer: no replica could serve and the primary failed too.
            MisroutedWrite: the statement is a write.
        """
        if primary or not self._replicas:
            return self.primary.query(sql, params)
        to_primary, gtid, reason = self._plan(key, after)
        if not to_primary:
            served, rows, reason = self._replica_read(sql, params, gtid)
            if served:
                return rows
        self._event("fallback_primary", reason)
        try:
            return self.primary.query(sql, params)
        except ConnectionLost as exc:
            raise NoHealthyServer(
                f"no replica of {self.name!r} could serve the read and the primary failed: {exc}"
            ) from exc

    def _plan(self, key: object, after: str | None) -> tuple[bool, str | None, str]:
        gtid = after
        now = self._clock.monotonic()
        pin = _pins.get().get(self._id)
        if pin is not None and pin[0] > now:
            if not (self.causal and pin[1]):
                return True, None, "pinned"
            gtid = merge_gtids(gtid, pin[1])
        mark_key = str(key) if key is not None else _bound_key.get()
        if mark_key is not None:
            try:
                with self._marks_breaker.guard(failures=(MarkStoreUnavailable,)):
                    mark = self._marks.lookup(mark_key)
            except CircuitOpen:
                self.marks_unavailable += 1
                return True, None, "marks_unavailable"
            except MarkStoreUnavailable as exc:
                self._marks_failed("lookup", exc)
                return True, None, "marks_unavailable"
            if mark is not None:
                if not (self.causal and mark.gtid):
                    return True, None, "pinned"
                gtid = merge_gtids(gtid, mark.gtid)
        return False, gtid, ""

    def _replica_read(
        self, sql: str, params: Params, gtid: str | None
    ) -> tuple[bool, list[Row], str]:
        reason = "no_replica"
        for replica in self._candidates():
            try:
                with replica.pool.connection() as conn:
                    if gtid is not None and not self._caught_up(conn, gtid):
                        return False, [], "causal_timeout"
                    return True, conn.query(sql, params), ""
            except ConnectionLost:
                self._mark_down(replica)
                self._event("retry", "down")
                reason = "down"
            except PoolTimeout:
                self._event("replica_skipped", "busy")
                reason = "busy"
        return False, [], reason

    def _caught_up(self, conn: Connection, gtid: str) -> bool:
        (row,) = conn.query(_GTID_WAIT_SQL, (gtid, self.causal_timeout))
        return bool(row["waited"] == 0)

    def _candidates(self) -> Iterator[_Replica]:
        replicas = self._replicas
        if self.balance == "least_in_use" and len(replicas) > 1:
            order = sorted(replicas, key=lambda r: r.pool._in_use)
        else:
            start = next(self._turn) % len(replicas)
            order = replicas[start:] + replicas[:start]
        for replica in order:
            now = self._clock.monotonic()
            if replica.down and now < replica.down_until:
                self._event("replica_skipped", "down")
                continue
            if now >= replica.next_check or replica.down:
                self._check(replica, now)
            if replica.reason:
                self._event("replica_skipped", replica.reason)
                continue
            yield replica

    def _check(self, replica: _Replica, now: float) -> None:
        """Probe replication status; one thread at a time, others use the last state."""
        if not replica.check_lock.acquire(blocking=False):
            return
        try:
            replica.next_check = now + self.lag_check_interval
            try:
                with replica.pool.connection() as conn:
                    if replica.pool.dialect == "mysql":
                        rows = conn.query(_STATUS_SQL)
                    else:
                        conn.query("SELECT 1")
                        rows = None
            except ConnectionLost:
                self._mark_down(replica)
                return
            except PoolTimeout:
                return  # busy, not down: keep what we knew; check again next interval
            replica.down = False
            replica.failures = 0
            replica.reason = "" if rows is None else self._lag_reason(rows)
        finally:
            replica.check_lock.release()

    def _lag_reason(self, rows: list[Row]) -> str:
        if not rows:
            return "stopped"
        status = rows[0]
        io = status.get("Slave_IO_Running", status.get("Replica_IO_Running"))
        applier = status.get("Slave_SQL_Running", status.get("Replica_SQL_Running"))
        lag = status.get("Seconds_Behind_Master", status.get("Seconds_Behind_Source"))
        if io != "Yes" or applier != "Yes" or lag is None:
            return "stopped"
        if float(lag) > self.max_lag:
            return "lagging"
        return ""

    def _mark_down(self, replica: _Replica) -> None:
        now = self._clock.monotonic()
        replica.failures += 1
        replica.down = True
        replica.reason = "down"
        delay = min(self.backoff * 2 ** (replica.failures - 1), self.max_backoff)
        replica.down_until = now + delay

    # -- writes ------------------------------------------------------------
    def execute(self, sql: str, params: Params = None, *, key: object = None) -> Result:
        """Run a write on the primary; reads in this context, and for ``key``, then see it.

        Raises:
            WriteOutcomeUnknown: the connection died with the write in flight;
                it is never sent again.
        """
        result = self._execute(sql, params, key)
        self._pin_context(result.token)
        return result

    def _execute(self, sql: str, params: Params, key: object) -> Result:
        mark_key = str(key) if key is not None else _bound_key.get()
        for attempt in (0, 1):
            try:
                with self.primary.connection() as conn:
                    result = conn.execute(sql, params)
                    token = self._last_gtid(conn) if self.causal else None
                break
            except ConnectionLost as exc:
                # Only a connection that failed before sending gets here twice:
                # a write in flight raised WriteOutcomeUnknown (a subclass) instead.
                if attempt or type(exc) is not ConnectionLost:
                    raise
                self._event("retry", "connect")
        if token is not None:
            result = Result(result.rowcount, result.lastrowid, token)
        self._mark(mark_key, token)
        return result

    def _last_gtid(self, conn: Connection) -> str | None:
        try:
            (row,) = conn.query("SELECT @@last_gtid AS gtid")
        except ConnectionLost:
            return None
        return str(row["gtid"]) if row["gtid"] else None

    @overload
    def transaction(
        self, fn: None = None, *, retries: int = 0, key: object = None
    ) -> contextlib.AbstractContextManager[Cursor]: ...

    @overload
    def transaction(
        self, fn: Callable[[Cursor], T], *, retries: int = 0, key: object = None
    ) -> T: ...

    def transaction(
        self, fn: Callable[[Cursor], T] | None = None, *, retries: int = 0, key: object = None
    ) -> contextlib.AbstractContextManager[Cursor] | T:
        """A transaction on one primary connection: commit on success, else roll back.

        ``with rs.transaction() as cur: cur.execute(...)`` runs a block once;
        ``rs.transaction(fn, retries=3)`` calls ``fn(cur)`` and runs it again
        (all of it) after a deadlock or lock wait timeout, up to ``retries`` times.

        Raises:
            RetryableTransactionError: deadlock or lock wait, retries used up.
            WriteOutcomeUnknown: the connection died during ``COMMIT``.
        """
        if fn is None:
            if retries:
                raise ConfigError("retries= needs a function: rs.transaction(fn, retries=3)")
            return self._transaction_block(key, pin=True)
        return self._run_transaction(fn, retries, key, pin=True)[0]

    def _run_transaction(
        self, fn: Callable[[Cursor], T], retries: int, key: object, *, pin: bool
    ) -> tuple[T, str | None]:
        attempt = 0
        while True:
            try:
                with self._transaction_block(key, pin=pin) as cursor:
                    value = fn(cursor)
                return value, cursor.token
            except RetryableTransactionError:
                if attempt >= retries:
                    raise
                attempt += 1
                self._event("retry", "deadlock")

    @contextlib.contextmanager
    def _transaction_block(self, key: object, *, pin: bool) -> Iterator[Cursor]:
        mark_key = str(key) if key is not None else _bound_key.get()
        with contextlib.ExitStack() as stack:
            conn = self._begin(stack)
            cursor = conn.cursor()
            try:
                yield cursor
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
            token = self._last_gtid(conn) if self.causal else None
        cursor.token = token
        self._mark(mark_key, token)
        if pin:
            self._pin_context(token)

    def _begin(self, stack: contextlib.ExitStack[bool | None]) -> Connection:
        """A primary connection with a transaction begun; a stale one is replaced once.

        A connection lost at ``BEGIN`` had nothing of this transaction on it,
        so starting again on a fresh connection is safe.
        """
        try:
            with contextlib.ExitStack() as attempt:
                conn = attempt.enter_context(self.primary.connection())
                conn.begin()
                stack.push(attempt.pop_all())
                return conn
        except ConnectionLost:
            self._event("retry", "connect")
        conn = stack.enter_context(self.primary.connection())
        conn.begin()
        return conn

    # -- read-your-writes --------------------------------------------------
    @contextlib.contextmanager
    def bound(self, key: object) -> Iterator[None]:
        """Use ``key`` for every read and write in the block that passes none."""
        token = _bound_key.set(str(key))
        try:
            yield
        finally:
            _bound_key.reset(token)

    def _pin_context(self, gtid: str | None) -> None:
        now = self._clock.monotonic()
        pins = dict(_pins.get())
        old = pins.get(self._id)
        old_gtid = old[1] if old is not None and old[0] > now else None
        pins[self._id] = (now + self.pin_after_write, merge_gtids(old_gtid, gtid))
        _pins.set(pins)

    def _mark(self, key: str | None, gtid: str | None) -> None:
        if key is None:
            return
        try:
            with self._marks_breaker.guard(failures=(MarkStoreUnavailable,)):
                self._marks.mark(key, self.pin_after_write, gtid)
        except CircuitOpen:
            self.marks_unavailable += 1
        except MarkStoreUnavailable as exc:
            self._marks_failed("mark", exc)

    def _marks_failed(self, operation: str, exc: Exception) -> None:
        self.marks_unavailable += 1
        events.emit(events.BackendError("db.marks", operation, str(exc)))

    # -- async -------------------------------------------------------------
    async def aquery(
        self,
        sql: str,
        params: Params = None,
        *,
        key: object = None,
        primary: bool = False,
        after: str | None = None,
    ) -> list[Row]:
        """``query`` in a worker thread (contextvars carried), so the event loop never blocks."""
        return await _to_thread(
            functools.partial(self.query, sql, params, key=key, primary=primary, after=after)
        )

    async def aexecute(self, sql: str, params: Params = None, *, key: object = None) -> Result:
        """``execute`` in a worker thread; pins reads in the caller's context."""
        result = await _to_thread(functools.partial(self._execute, sql, params, key))
        self._pin_context(result.token)
        return result

    async def atransaction(
        self, fn: Callable[[Cursor], T], *, retries: int = 0, key: object = None
    ) -> T:
        """``transaction(fn, retries=...)`` in a worker thread."""
        value, token = await _to_thread(
            functools.partial(self._run_transaction, fn, retries, key, pin=False)
        )
        self._pin_context(token)
        return value

    # -- lifecycle ---------------------------------------------------------
    def close(self) -> None:
        """Close every pool (and the mark store if this set created it)."""
        self.primary.close()
        for pool in self.replicas:
            pool.close()
        close = getattr(self._marks, "close", None)
        if self._owns_marks and close is not None:
            close()

    def _event(self, decision: str, reason: str) -> None:
        if events.bus.has_listeners(events.DbRouting):
            events.emit(events.DbRouting(self.name, decision, reason))

    def __repr__(self) -> str:
        return f"<ReplicaSet {self.name!r} replicas={len(self.replicas)}>"


async def _to_thread(call: Callable[[], T]) -> T:
    import anyio.to_thread

    context = contextvars.copy_context()
    return await anyio.to_thread.run_sync(context.run, call)
