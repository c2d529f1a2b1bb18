"""``Pool``: a bounded pool of DBUtils steady connections with a timed wait.

Why not DBUtils' ``PooledDB``: its ``blocking=True`` waits on an untimed
``Condition.wait()``, it opens connections and pings while holding the pool
lock (one slow connect stalls every checkout), and its transparent
reconnect-and-re-execute cannot be switched off (``failures=()`` raises). So
the pool below is ours and each connection is a DBUtils ``SteadyDBConnection``
created with ``failures=(_NeverRaised,)`` — its re-execute never triggers —
and ``ping=0``: dead connections are detected by our own checkout ping.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from types import ModuleType, TracebackType
from typing import Any

from .. import events
from .._clock import Clock, get_clock
from .._extras import require
from ._config import parse_url, redact
from ._sql import to_qmark
from .errors import (
    CONNECTION_LOST_CODES,
    READ_ONLY_CODE,
    READ_ONLY_TRANSACTION_CODE,
    RETRYABLE_TRANSACTION_CODES,
    ConfigError,
    ConnectionLost,
    DatabaseError,
    MisroutedWrite,
    PoolTimeout,
    PrimaryReadOnly,
    RetryableTransactionError,
    WriteOutcomeUnknown,
    error_code,
)

__all__ = ["Connection", "Cursor", "Pool", "PoolStats", "Result"]

Params = Sequence[Any] | Mapping[str, Any] | None
Row = dict[str, Any]


class _NeverRaised(Exception):
    """Given to SteadyDB as ``failures`` so that its re-execute never triggers."""


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    """What a write returns: affected rows, the generated id, and a causal token.

    ``token`` is the write's GTID when the ``ReplicaSet`` runs in causal mode
    (pass it back as ``query(..., after=token)``), else None.
    """

    rowcount: int
    lastrowid: int | None = None
    token: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of a pool's connections.

    ``open`` is in use + idle now; ``opened`` and ``errors`` count since start.
    """

    in_use: int
    idle: int
    waiting: int
    open: int
    opened: int
    errors: int
    max_connections: int


class _Slot:
    __slots__ = ("created", "error_generation", "last_used", "session_generation", "steady")

    def __init__(self, steady: Any, now: float, error_generation: int, session_generation: int):
        self.steady = steady
        self.created = now
        self.last_used = now
        self.error_generation = error_generation
        self.session_generation = session_generation

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.steady.close()


def _module_of(creator: Any) -> ModuleType | None:
    if isinstance(creator, ModuleType):
        return creator
    module = sys.modules.get(getattr(creator, "__module__", "") or "")
    while module is not None and not hasattr(module, "paramstyle"):
        parent = module.__name__.rpartition(".")[0]
        module = sys.modules.get(parent) if parent else None
    return module


class Cursor:
    """A cursor that takes ``%s`` SQL and returns rows as dicts.

    ``transaction()`` yields one; every statement runs on the same connection.
    """

    def __init__(self, connection: Connection, in_transaction: bool) -> None:
        self._connection = connection
        self._in_transaction = in_transaction
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.token: str | None = None
        """After a causal transaction commits: its GTID (see ``Result.token``)."""

    def execute(self, sql: str, params: Params = None) -> int:
        """Run one statement; returns the affected row count."""
        result, rows = self._connection._run(sql, params, write=True, fetch=False,
                                             in_transaction=self._in_transaction)  # fmt: skip
        self.rowcount = result.rowcount
        self.lastrowid = result.lastrowid
        self._rows = rows
        return result.rowcount

    def query(self, sql: str, params: Params = None) -> list[Row]:
        """Run a statement that returns rows; returns them as dicts."""
        _, rows = self._connection._run(sql, params, write=False, fetch=True,
                                        in_transaction=self._in_transaction)  # fmt: skip
        return rows

    def fetchall(self) -> list[Row]:
        """The rows of the last ``execute`` (``query`` returns them directly)."""
        return list(getattr(self, "_rows", []))


class Connection:
    """One checked-out connection; use it inside ``with pool.connection() as conn``."""

    def __init__(self, pool: Pool, slot: _Slot) -> None:
        self._pool = pool
        self._slot = slot
        self.broken = False
        self.in_transaction = False

    @property
    def dbapi_connection(self) -> Any:
        """The driver's own connection (pymysql, sqlite3, ...)."""
        return self._slot.steady._con

    def query(self, sql: str, params: Params = None) -> list[Row]:
        """Run a read; returns rows as dicts. A lost connection raises ``ConnectionLost``."""
        return self._run(sql, params, write=False, fetch=True)[1]

    def execute(self, sql: str, params: Params = None) -> Result:
        """Run a write. A connection lost in flight raises ``WriteOutcomeUnknown``."""
        self._pool._check_read_only(self)
        return self._run(sql, params, write=True, fetch=False)[0]

    def cursor(self) -> Cursor:
        """A dict cursor on this connection (statements count as writes)."""
        return Cursor(self, self.in_transaction)

    def begin(self) -> None:
        """Start a transaction (the pool's connections are in autocommit mode)."""
        self._pool._check_read_only(self)
        if self._pool.dialect == "sqlite":
            self._run("BEGIN", None, write=False, fetch=False)
        else:
            try:
                self._slot.steady.begin()
            except Exception as exc:
                raise self._translate(exc, write=False) from exc
        self.in_transaction = True

    def commit(self) -> None:
        """Commit; a connection lost here raises ``WriteOutcomeUnknown``."""
        try:
            self._slot.steady.commit()
        except Exception as exc:
            raise self._translate(exc, write=True) from exc
        finally:
            self.in_transaction = False

    def rollback(self) -> None:
        """Roll back; a failure marks the connection broken (it is then discarded)."""
        try:
            self._slot.steady.rollback()
        except Exception:
            self.broken = True
        finally:
            self.in_transaction = False

    def _translate(self, exc: Exception, *, write: bool, in_transaction: bool = False) -> Exception:
        pool = self._pool
        code = error_code(exc)
        driver = pool._driver
        interface_error = driver is not None and isinstance(
            exc, getattr(driver, "InterfaceError", ())
        )
        if code in CONNECTION_LOST_CODES or isinstance(exc, OSError) or interface_error:
            self.broken = True
            pool._connection_failed()
            where = f"pool {pool.name!r} ({pool.role})"
            # pymysql raises InterfaceError(0) before sending on a closed socket.
            never_sent = interface_error and code == 0
            if write and not in_transaction and not never_sent:
                return WriteOutcomeUnknown(
                    f"connection to {where} lost while a write was in flight ({exc}); "
                    "the server may have applied it and scalekit will not send it again"
                )
            return ConnectionLost(f"connection to {where} lost: {exc}")
        if code in RETRYABLE_TRANSACTION_CODES:
            return RetryableTransactionError(
                f"{exc} on pool {pool.name!r}: the transaction was rolled back; run it again"
            )
        sqlite_read_only = getattr(exc, "sqlite_errorcode", None) == 8  # SQLITE_READONLY
        if (
            code == READ_ONLY_TRANSACTION_CODE
            or (code == READ_ONLY_CODE and pool.read_only)
            or (sqlite_read_only and pool.read_only)
        ):
            return MisroutedWrite(
                f"a write reached the read-only pool {pool.name!r} ({exc}): send writes with "
                "execute() or transaction(), never query()"
            )
        if code == READ_ONLY_CODE:
            pool._recheck_read_only = True
            return PrimaryReadOnly(
                f"the primary {pool.name!r} refused a write as read-only ({exc}): it was "
                "demoted; point the primary pool at the new primary"
            )
        return exc

    def _run(
        self,
        sql: str,
        params: Params,
        *,
        write: bool,
        fetch: bool,
        in_transaction: bool = False,
    ) -> tuple[Result, list[Row]]:
        pool = self._pool
        timed = events.bus.has_listeners(events.DbQuery)
        started = time.perf_counter() if timed else 0.0
        outcome = "ok"
        rows: list[Row] = []
        result = Result(0)
        try:
            if params is not None and pool._translate_placeholders:
                sql = to_qmark(sql)
            # The driver's own cursor: SteadyDB's cursor wrapper would only add
            # its (disabled) failover bookkeeping to every call.
            cursor = self._slot.steady._con.cursor()
            try:
                if params is None:
                    cursor.execute(sql)
                else:
                    cursor.execute(sql, params)
                description = cursor.description
                if description is not None:
                    names = [column[0] for column in description]
                    rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
                result = Result(cursor.rowcount, cursor.lastrowid)
            finally:
                with contextlib.suppress(Exception):
                    cursor.close()
        except DatabaseError:
            outcome = "error"
            raise
        except Exception as exc:
            translated = self._translate(exc, write=write, in_transaction=in_transaction)
            outcome = _outcome_name(translated)
            if translated is exc:
                raise
            raise translated from exc
        finally:
            if timed:
                events.emit(
                    events.DbQuery(pool.name, pool.role, time.perf_counter() - started,
                                   outcome, len(rows) if fetch else max(result.rowcount, 0))
                )  # fmt: skip
        return result, rows


def _outcome_name(exc: Exception) -> str:
    if isinstance(exc, WriteOutcomeUnknown):
        return "write_outcome_unknown"
    if isinstance(exc, ConnectionLost):
        return "connection_lost"
    if isinstance(exc, RetryableTransactionError):
        return "retryable"
    if isinstance(exc, MisroutedWrite):
        return "misrouted_write"
    if isinstance(exc, PrimaryReadOnly):
        return "read_only"
    return "error"


class _Checkout:
    """The context manager ``pool.connection()`` returns."""

    __slots__ = ("_connection", "_pool", "_timeout")

    def __init__(self, pool: Pool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._connection: Connection | None = None

    def __enter__(self) -> Connection:
        self._connection = Connection(self._pool, self._pool._acquire(self._timeout))
        return self._connection

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        connection = self._connection
        if connection is None:
            return
        self._connection = None
        if connection.in_transaction and not connection.broken:
            connection.rollback()
        self._pool._release(connection._slot, discard=connection.broken)


class Pool:
    """A bounded pool of connections to one server.

    Args:
        creator: a DB-API 2 module (``pymysql``, ``sqlite3``) or a callable
            returning a new connection; with a callable the driver (and so
            the placeholder style) is learnt from the first connection, and
            the connection is put in autocommit mode.
        connect_args: keyword arguments for ``creator.connect`` on every (re)connect.
        name: how events, stats and errors name this pool.
        role: ``"primary"`` or ``"replica"`` (``ReplicaSet`` sets it).
        max_connections: most connections open at once (in use + idle).
        min_idle: idle connections that idle expiry leaves open.
        max_idle: most idle connections kept; more are closed on release.
        acquire_timeout: seconds a checkout waits for a free connection
            before raising ``PoolTimeout``.
        max_lifetime: seconds after which a connection is closed and replaced.
        idle_timeout: seconds unused after which an idle connection is closed.
        ping_after_idle: ping a connection at checkout when it has been idle
            this long (one round trip); None never pings on idleness. After
            any connection error every older connection is pinged once.
        session: SQL statements run on every new connection (reconnects too).
        read_only: make every session ``READ ONLY`` (replicas).
        paramstyle: override the driver's ``paramstyle`` (``"qmark"`` makes
            the pool translate ``%s`` placeholders).
        dialect: ``"mysql"``, ``"sqlite"`` or ``"other"``; guessed from the driver.
        clock: the clock for lifetimes and idle expiry (default ``get_clock()``).

    Raises:
        ConfigError: an option is out of range.
    """

    def __init__(
        self,
        creator: Any,
        *,
        connect_args: Mapping[str, Any] | None = None,
        name: str = "db",
        role: str = "primary",
        max_connections: int = 10,
        min_idle: int = 0,
        max_idle: int | None = None,
        acquire_timeout: float = 5.0,
        max_lifetime: float = 3600.0,
        idle_timeout: float = 600.0,
        ping_after_idle: float | None = 1.0,
        session: Sequence[str] = (),
        read_only: bool = False,
        paramstyle: str | None = None,
        dialect: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        if max_connections < 1:
            raise ConfigError(f"max_connections={max_connections!r} must be at least 1")
        if not 0 <= min_idle <= max_connections:
            raise ConfigError(
                f"min_idle={min_idle!r} must be between 0 and max_connections={max_connections}"
            )
        if max_idle is not None and not min_idle <= max_idle:
            raise ConfigError(f"max_idle={max_idle!r} must be at least min_idle={min_idle}")
        for option, value in (
            ("acquire_timeout", acquire_timeout),
            ("max_lifetime", max_lifetime),
            ("idle_timeout", idle_timeout),
        ):
            if value < 0:
                raise ConfigError(f"{option}={value!r} must not be negative")
        if not callable(getattr(creator, "connect", creator)):
            raise ConfigError(f"creator={creator!r} is neither a DB-API module nor a callable")
        self._steady_db = require("dbutils.steady_db", "mysql", feature="scalekit.db.Pool")
        self._creator = creator
        self._creator_is_callable = not isinstance(creator, ModuleType)
        self._given = (dialect, paramstyle)
        self._use_driver(_module_of(creator))
        self._connect_args = dict(connect_args or {})
        if self.dialect == "mysql":
            self._connect_args.setdefault("autocommit", True)
        elif self.dialect == "sqlite":
            self._connect_args.setdefault("check_same_thread", False)
            self._connect_args.setdefault("isolation_level", None)
        self.name = name
        self.role = role
        self.max_connections = max_connections
        self.min_idle = min_idle
        self.max_idle = max_connections if max_idle is None else max_idle
        self.acquire_timeout = acquire_timeout
        self.max_lifetime = max_lifetime
        self.idle_timeout = idle_timeout
        self.ping_after_idle = ping_after_idle
        self.read_only = False
        self._session = list(session)
        self._clock = clock or get_clock()
        self._cond = threading.Condition(threading.Lock())
        self._idle: collections.deque[_Slot] = collections.deque()
        self._in_use = 0
        self._open = 0
        self._waiting = 0
        self._opened = 0
        self._errors = 0
        self._error_generation = 0
        self._session_generation = 0
        self._closed = False
        self._recheck_read_only = False
        if read_only:
            self._make_read_only()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Pool:
        """A pool from ``mysql://user:pw@host:3306/db?max_connections=20&...`` or ``sqlite:///path``.

        URL options: max_connections, min_idle, max_idle, acquire_timeout,
        connect_timeout, read_timeout, write_timeout, max_lifetime,
        idle_timeout, ping_after_idle, charset (default utf8mb4), name.
        Keyword ``options`` override the URL's.

        Raises:
            ConfigError: the URL or an option is bad (the password is never shown).
        """
        parsed = parse_url(url)
        connect_args = parsed.connect_args
        for timeout in ("connect_timeout", "read_timeout", "write_timeout"):
            if timeout in options:
                connect_args[timeout] = options.pop(timeout)
        merged: dict[str, Any] = {"name": parsed.name, **parsed.options, **options}
        if parsed.driver == "sqlite3":
            import sqlite3

            creator: Any = sqlite3
        else:
            creator = require("pymysql", "mysql", feature="a mysql:// pool")
        try:
            return cls(creator, connect_args=connect_args, **merged)
        except TypeError as exc:
            raise ConfigError(f"bad option for database URL {redact(url)}: {exc}") from None

    # -- public API --------------------------------------------------------
    def connection(self, timeout: float | None = None) -> _Checkout:
        """Check out a connection: ``with pool.connection() as conn: ...``.

        Args:
            timeout: seconds to wait for a free one (default ``acquire_timeout``).

        Raises:
            PoolTimeout: none became free in time.
            ConnectionLost: opening a new connection failed.
        """
        return _Checkout(self, timeout)

    def query(self, sql: str, params: Params = None) -> list[Row]:
        """Run a read; a lost connection is retried once on a fresh connection."""
        try:
            with self.connection() as conn:
                return conn.query(sql, params)
        except ConnectionLost:
            with self.connection() as conn:
                return conn.query(sql, params)

    def execute(self, sql: str, params: Params = None) -> Result:
        """Run a write in autocommit mode; never sends it twice.

        Raises:
            WriteOutcomeUnknown: the connection was lost with the write in flight.
        """
        try:
            with self.connection() as conn:
                return conn.execute(sql, params)
        except WriteOutcomeUnknown:
            raise
        except ConnectionLost:
            # Lost before anything was sent (connect failed, closed socket).
            with self.connection() as conn:
                return conn.execute(sql, params)

    def stats(self) -> PoolStats:
        """Connections in use, idle, callers waiting, open now; opened and errors so far."""
        with self._cond:
            return PoolStats(
                in_use=self._in_use,
                idle=len(self._idle),
                waiting=self._waiting,
                open=self._open,
                opened=self._opened,
                errors=self._errors,
                max_connections=self.max_connections,
            )

    def warm(self) -> None:
        """Open connections until ``min_idle`` are idle (call at startup)."""
        slots: list[_Slot] = []
        try:
            while self.stats().idle + len(slots) < self.min_idle:
                slots.append(self._acquire(None))
        finally:
            for slot in slots:
                self._release(slot, discard=False)

    def close(self) -> None:
        """Close idle connections now and the others as they are released."""
        with self._cond:
            self._closed = True
            idle = list(self._idle)
            self._idle.clear()
            self._open -= len(idle)
            self._cond.notify_all()
        for slot in idle:
            slot.close()

    def __repr__(self) -> str:
        return f"<Pool {self.name!r} role={self.role} max_connections={self.max_connections}>"

    # -- internals ---------------------------------------------------------
    def _make_read_only(self) -> None:
        statement = (
            "PRAGMA query_only = ON"
            if self.dialect == "sqlite"
            else "SET SESSION TRANSACTION READ ONLY"
        )
        with self._cond:
            self.read_only = True
            if statement not in self._session:
                self._session.append(statement)
                self._session_generation += 1

    def _connection_failed(self) -> None:
        with self._cond:
            self._errors += 1
            self._error_generation += 1

    def _check_read_only(self, connection: Connection) -> None:
        if not self._recheck_read_only or self.dialect != "mysql":
            return
        (row,) = connection._run("SELECT @@read_only AS ro", None, write=False, fetch=True)[1]
        if int(row["ro"]):
            raise PrimaryReadOnly(
                f"the primary {self.name!r} is still read-only (@@read_only=1): "
                "point the primary pool at the new primary"
            )
        self._recheck_read_only = False

    def _expired(self, slot: _Slot, now: float, idle_count: int) -> bool:
        return (
            slot.session_generation != self._session_generation
            or now - slot.created >= self.max_lifetime
            or (now - slot.last_used >= self.idle_timeout and idle_count > self.min_idle)
        )

    def _use_driver(self, driver: ModuleType | None) -> None:
        dialect, paramstyle = self._given
        self._driver = driver
        driver_name = driver.__name__ if driver is not None else ""
        self.dialect = dialect or (
            "mysql"
            if driver_name.startswith(("pymysql", "MySQLdb", "mariadb"))
            else ("sqlite" if driver_name.startswith("sqlite3") else "other")
        )
        style = paramstyle or getattr(driver, "paramstyle", "format")
        self._translate_placeholders = style in ("qmark", "named", "numeric")

    def _adopt(self, raw: Any) -> None:
        """A plain ``connect`` callable: learn the driver from its connection, force autocommit."""
        if self._driver is None:
            self._use_driver(_module_of(type(raw)))
        if self.dialect == "sqlite":
            raw.isolation_level = None
        elif self.dialect == "mysql":
            raw.autocommit(True)

    def _new_slot(self) -> _Slot:
        try:
            steady = self._steady_db.connect(
                self._creator,
                None,  # maxusage
                list(self._session),  # setsession: re-run on every reconnect
                (_NeverRaised,),  # failures: SteadyDB never re-executes
                0,  # ping: we ping at checkout ourselves
                True,  # closeable
                None,  # isfatal
                **self._connect_args,
            )
        except Exception as exc:
            code = error_code(exc)
            if code in CONNECTION_LOST_CODES or isinstance(exc, OSError):
                raise ConnectionLost(f"cannot connect to pool {self.name!r}: {exc}") from exc
            raise
        if self._creator_is_callable:
            self._adopt(steady._con)
        return _Slot(steady, self._clock.monotonic(), self._error_generation,
                     self._session_generation)  # fmt: skip

    def _alive(self, slot: _Slot) -> bool:
        ping = getattr(slot.steady._con, "ping", None)
        if ping is None:
            return True
        try:
            ping(False)  # pymysql: ping without its own reconnect
        except Exception:
            return False
        return True

    def _acquire(self, timeout: float | None) -> _Slot:
        wait = self.acquire_timeout if timeout is None else timeout
        deadline: float | None = None
        expired: list[_Slot] = []
        slot: _Slot | None = None
        with self._cond:
            while True:
                if self._closed:
                    raise DatabaseError(f"pool {self.name!r} is closed")
                now = self._clock.monotonic()
                while self._idle:
                    candidate = self._idle.pop()
                    if self._expired(candidate, now, len(self._idle) + 1):
                        expired.append(candidate)
                        self._open -= 1
                        continue
                    slot = candidate
                    break
                if slot is not None or self._open < self.max_connections:
                    if slot is None:
                        self._open += 1
                    self._in_use += 1
                    break
                if deadline is None:
                    deadline = time.monotonic() + wait
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PoolTimeout(
                        f"no connection of pool {self.name!r} became free within {wait}s "
                        f"(max_connections={self.max_connections}, all in use): raise "
                        "max_connections or acquire_timeout, or hold connections for less time"
                    )
                self._waiting += 1
                try:
                    self._cond.wait(remaining)
                finally:
                    self._waiting -= 1
            error_generation = self._error_generation
        for old in expired:
            old.close()
        try:
            if slot is not None:
                idle_for = now - slot.last_used
                needs_ping = slot.error_generation != error_generation or (
                    self.ping_after_idle is not None and idle_for >= self.ping_after_idle
                )
                if needs_ping and not self._alive(slot):
                    slot.close()
                    slot = None
            if slot is None:
                slot = self._new_slot()
                with self._cond:
                    self._opened += 1
        except BaseException:
            with self._cond:
                self._open -= 1
                self._in_use -= 1
                self._errors += 1
                self._cond.notify()
            raise
        slot.error_generation = error_generation
        self._emit_stats()
        return slot

    def _release(self, slot: _Slot, *, discard: bool) -> None:
        now = self._clock.monotonic()
        with self._cond:
            self._in_use -= 1
            close = (
                discard
                or self._closed
                or len(self._idle) >= self.max_idle
                or slot.session_generation != self._session_generation
                or now - slot.created >= self.max_lifetime
            )
            if close:
                self._open -= 1
            else:
                slot.last_used = now
                self._idle.append(slot)
            self._cond.notify()
        if close:
            slot.close()
        self._emit_stats()

    def _emit_stats(self) -> None:
        if events.bus.has_listeners(events.DbPoolStats):
            events.emit(events.DbPoolStats(self.name, self._in_use, len(self._idle), self._waiting))
