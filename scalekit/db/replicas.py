"""``ReplicaSet``: reads to a healthy, fresh replica, writes to the primary, read-your-writes."""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar, overload

from .. import events
from .._breaker import CircuitBreaker, CircuitOpen
from .._clock import Clock, get_clock
from . import _fork, _scope
from ._last_resort import LastResort
from ._replica_health import LAG_RESOLUTION, HealthPolicy, ReplicaHealth, ReplicaState
from ._sql import classify
from .errors import (
    SERVER_REFUSED_CODES,
    ConfigError,
    ConnectionLost,
    NoHealthyServer,
    PoolTimeout,
    RetryableTransactionError,
    WriteOutcomeUnknown,
    error_code,
)
from .marks import MarkStore, MarkStoreUnavailable, MemoryMarks, RedisMarks, merge_gtids
from .pool import Connection, Cursor, Params, Pool, Result, Role, Row

__all__ = ["ReplicaSet"]

T = TypeVar("T")

_set_ids = itertools.count(1)  # never reused, unlike id()

_GTID_WAIT_SQL = "SELECT MASTER_GTID_WAIT(%s, %s) AS waited"


class ReplicaSet:
    """A primary pool plus replica pools, with read/write routing.

    Args:
        primary: the pool every write, transaction and fallback read uses.
        replicas: replica pools; their sessions are made ``READ ONLY`` and
            their default timeouts are the replica ones (connect 2 s, read 10 s).
        max_lag: seconds of ``Seconds_Behind_Master`` above which a replica
            gets no reads.
        pin_after_write: seconds reads go to the primary after a write, in the
            same request and for the written ``key``. Must exceed
            ``max_lag + 1 + lag_check_interval``: the lag is reported in whole
            seconds and checked once per interval, so a replica that serves
            may be up to that far behind.
        lag_check_interval: at most one replication-status query per replica
            per this many seconds (run by the read that finds it due); no
            read uses a status older than this.
        backoff: seconds a failed replica first stays out; each further failed
            probe doubles it, up to ``max_backoff``. Failures of one outage
            (many reads failing together) count once; a good probe ends it.
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
        ConfigError: ``pin_after_write`` too short for ``max_lag``, or another bad option.
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
        max_backoff: float = 5.0,
        marks: MarkStore | str | None = None,
        causal: bool = False,
        causal_timeout: float = 0.05,
        balance: str = "round_robin",
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        for option, value in (
            ("max_lag", max_lag),
            ("lag_check_interval", lag_check_interval),
            ("backoff", backoff),
            ("causal_timeout", causal_timeout),
        ):
            if value < 0:
                raise ConfigError(f"{option}={value!r} must not be negative")
        bound = max_lag + LAG_RESOLUTION + lag_check_interval
        if pin_after_write <= bound:
            raise ConfigError(
                f"pin_after_write={pin_after_write!r} must exceed max_lag + 1 + "
                f"lag_check_interval = {bound:g}: a replica may serve reads while up to that "
                "many seconds behind (lag is reported in whole seconds and checked once per "
                "interval), so a read right after the pin could miss the write"
            )
        if balance not in ("round_robin", "least_in_use"):
            raise ConfigError(f"balance={balance!r}: use 'round_robin' or 'least_in_use'")
        if max_backoff < backoff:
            raise ConfigError(f"max_backoff={max_backoff!r} must be at least backoff={backoff!r}")
        self.primary = primary
        self.replicas = tuple(replicas)
        for pool in self.replicas:
            if pool is primary:
                raise ConfigError("the primary pool cannot also be a replica")
            pool.role = Role.REPLICA
            pool.make_read_only()
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
                MemoryMarks(clock=self._clock) if marks.startswith("memory:") else RedisMarks(marks)
            )
        else:
            self._marks = marks if marks is not None else MemoryMarks(clock=self._clock)
        self._marks_breaker = CircuitBreaker(failure_threshold=3, cooldown=5.0, clock=self._clock)
        self.marks_unavailable = 0
        """Reads and writes that found the mark store unreachable (reads went to the primary)."""
        policy = HealthPolicy(
            max_lag, lag_check_interval, backoff, max_backoff, self._clock, self._event
        )
        self._replicas = [ReplicaHealth(pool, policy) for pool in self.replicas]
        self._turn = itertools.count()
        self._last_resort = LastResort(
            self._replicas,
            max_lag=max_lag,
            causal_timeout=causal_timeout,
            lag_check_interval=lag_check_interval,
            clock=self._clock,
            read=self._replica_read,
        )
        self._id = next(_set_ids)
        _fork.register(self._after_fork)

    def _after_fork(self) -> None:
        for replica in self._replicas:
            replica.after_fork()

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

        A statement that is not a read by its text and was lost in flight is
        not sent anywhere else (``WriteOutcomeUnknown``); on a replica it
        fails as ``MisroutedWrite``.

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
            return self._primary_query(sql, params, key)
        to_primary, gtid, reason = self._plan(key, after)
        if not to_primary:
            served, rows, reason = self._replica_read(sql, params, gtid, self._candidates())
            if served:
                return rows
        self._event("fallback_primary", reason)
        try:
            return self._primary_query(sql, params, key)
        except WriteOutcomeUnknown:
            raise
        except ConnectionLost as exc:
            self._last_resort.primary_failed()
            why = ""
            if not to_primary and classify(sql).read:  # a replica that has it all may do
                served, rows, why = self._last_resort.read(sql, params, gtid)
                if served:
                    self._event("fallback_replica", "primary_down")
                    return rows
            raise NoHealthyServer(
                f"no replica of {self.name!r} could serve the read and the primary failed: "
                f"{exc}{why}"
            ) from exc

    def _primary_query(self, sql: str, params: Params, key: object) -> list[Row]:
        """``query`` on the primary; a write by its text marks and pins as ``execute`` does."""
        if classify(sql).read:
            rows = self.primary.query(sql, params)
            self._last_resort.primary_answered()
            return rows
        mark_key = str(key) if key is not None else _scope.bound_key()
        try:
            rows = self.primary.query(sql, params)
        except WriteOutcomeUnknown:
            self._wrote(mark_key, None)
            raise
        self._wrote(mark_key, None, answered=True)
        return rows

    def _plan(self, key: object, after: str | None) -> tuple[bool, str | None, str]:
        gtid = after
        now = self._clock.monotonic()
        pin = _scope.pinned(self._id)
        if pin is not None and pin[0] > now:
            if not (self.causal and pin[1]):
                return True, None, "pinned"
            gtid = merge_gtids(gtid, pin[1])
        mark_key = str(key) if key is not None else _scope.bound_key()
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
        self,
        sql: str,
        params: Params,
        gtid: str | None,
        candidates: Iterator[ReplicaHealth],
        wait: float | None = None,
    ) -> tuple[bool, list[Row], str]:
        reason = "no_replica"
        read = classify(sql).read
        for replica in candidates:
            pool = replica.pool
            sent = False
            try:
                with pool.connection(deadline=pool.read_timeout) as conn:
                    if gtid is not None and not self._caught_up(conn, gtid, wait):
                        return False, [], "causal_timeout"
                    sent = True
                    return True, conn.query(sql, params), ""
            except PoolTimeout:
                self._event("replica_skipped", "busy")
                reason = "busy"
            except ConnectionLost as exc:
                replica.sideline(exc, "read")
                if sent and not read:
                    raise  # a write that may have run somewhere: never send it again
                self._event("retry", "down")
                reason = "down"
            except Exception as exc:
                if error_code(exc) not in SERVER_REFUSED_CODES:
                    raise
                replica.sideline(exc, "read")
                self._event("retry", "refused")
                reason = "down"
        return False, [], reason

    def _caught_up(self, conn: Connection, gtid: str, wait: float | None = None) -> bool:
        timeout = self.causal_timeout if wait is None else wait
        (row,) = conn.query(_GTID_WAIT_SQL, (gtid, timeout))
        return bool(row["waited"] == 0)

    def _candidates(self) -> Iterator[ReplicaHealth]:
        replicas = self._replicas
        if self.balance == "least_in_use" and len(replicas) > 1:
            order = sorted(replicas, key=lambda r: r.pool.in_use)
        else:
            start = next(self._turn) % len(replicas)
            order = replicas[start:] + replicas[:start]
        for replica in order:
            state = replica.check()  # due, or back from a back-off: probed before serving
            if state is not ReplicaState.SERVING:
                self._event("replica_skipped", state.value)
                continue
            yield replica

    # -- writes ------------------------------------------------------------
    def execute(
        self, sql: str, params: Params = None, *, key: object = None, returning: bool = False
    ) -> Result:
        """Run a write on the primary; reads in this request, and for ``key``, then see it.

        ``returning=True`` keeps the rows of ``INSERT … RETURNING`` in ``Result.rows``.

        Raises:
            WriteOutcomeUnknown: the connection died with the write in flight;
                it is never sent again, and reads are pinned as after a success.
        """
        mark_key = str(key) if key is not None else _scope.bound_key()
        try:
            result, token = self._write(lambda conn: conn.execute(sql, params, returning=returning))
        except WriteOutcomeUnknown:
            self._last_resort.primary_failed()
            self._wrote(mark_key, None)
            raise
        except ConnectionLost:
            self._last_resort.primary_failed()
            raise
        if token is not None:
            result = Result(result.rowcount, result.lastrowid, token, result.rows)
        self._wrote(mark_key, token, answered=True)
        return result

    def _write(self, run: Callable[[Connection], T]) -> tuple[T, str | None]:
        primary = self.primary
        for attempt in (0, 1):
            used: Connection | None = None
            try:
                with primary.connection(deadline=primary.read_timeout) as conn:
                    used = conn
                    value = run(conn)
                    return value, (self._last_gtid(conn) if self.causal else None)
            except ConnectionLost:
                # Only a statement that never left (a closed socket) goes again.
                if attempt or used is None or not used.lost_unsent:
                    raise
                self._event("retry", "connect")
        raise AssertionError("unreachable")  # pragma: no cover

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
            WriteOutcomeUnknown: the connection died during ``COMMIT`` (reads
                are pinned as after a commit).
        """
        if fn is None:
            if retries:
                raise ConfigError("retries= needs a function: rs.transaction(fn, retries=3)")
            return self._transaction_block(key)
        attempt = 0
        while True:
            try:
                with self._transaction_block(key) as cursor:
                    return fn(cursor)
            except RetryableTransactionError:
                if attempt >= retries:
                    raise
                attempt += 1
                self._event("retry", "deadlock")

    @contextlib.contextmanager
    def _transaction_block(self, key: object) -> Iterator[Cursor]:
        mark_key = str(key) if key is not None else _scope.bound_key()
        with contextlib.ExitStack() as stack:
            conn = self._begin(stack)
            cursor = conn.cursor()
            try:
                yield cursor
            except BaseException:
                conn.rollback()
                raise
            try:
                conn.commit()
            except WriteOutcomeUnknown:
                self._wrote(mark_key, None)
                raise
            cursor.token = self._last_gtid(conn) if self.causal else None
        self._wrote(mark_key, cursor.token, answered=True)

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
    def bound(self, key: object) -> contextlib.AbstractContextManager[None]:
        """Use ``key`` for every read and write in the block that passes none."""
        return _scope.bind(key)

    def _wrote(self, mark_key: str | None, gtid: str | None, *, answered: bool = False) -> None:
        """After a write (or one whose outcome is unknown): mark its key, pin this request.

        ``answered``: the primary acknowledged it.
        """
        self._mark(mark_key, gtid)
        if answered:
            self._last_resort.primary_answered()
        _scope.pin(self._id, self._clock.monotonic() + self.pin_after_write, gtid)

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
        return await _scope.run_in_thread(
            functools.partial(self.query, sql, params, key=key, primary=primary, after=after)
        )

    async def aexecute(
        self, sql: str, params: Params = None, *, key: object = None, returning: bool = False
    ) -> Result:
        """``execute`` in a worker thread; pins reads in the caller's context."""
        return await _scope.run_in_thread(
            functools.partial(self.execute, sql, params, key=key, returning=returning)
        )

    async def atransaction(
        self, fn: Callable[[Cursor], T], *, retries: int = 0, key: object = None
    ) -> T:
        """``transaction(fn, retries=...)`` in a thread; pins reads in the caller's context."""
        return await _scope.run_in_thread(lambda: self.transaction(fn, retries=retries, key=key))

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
