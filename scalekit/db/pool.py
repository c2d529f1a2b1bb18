"""``Pool``: a bounded pool of DBUtils steady connections with a timed, fair wait.

Why not DBUtils' ``PooledDB``: its ``blocking=True`` waits on an untimed
``Condition.wait()``, it opens connections and pings while holding the pool
lock (one slow connect stalls every checkout), and its transparent
reconnect-and-re-execute cannot be switched off (``failures=()`` raises). So
the pool below is ours and each connection is a DBUtils ``SteadyDBConnection``
created with ``failures=(_NeverRaised,)`` — its re-execute never triggers —
and ``ping=0``: dead connections are detected by our own checkout ping.

Who does what: ``_slots`` counts and queues (FIFO), ``_connector`` opens
connections (timeouts, one TLS context, back-off per server),
``_driver_errors`` decides what a driver exception means, ``_hygiene``
cleans a returned connection, ``connection`` is what a borrower holds, and
this module ties them together.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any, TypeVar

from .. import events
from .._clock import Clock, get_clock
from .._extras import require
from . import _fork, _hygiene
from ._config import parse_url, redact
from ._connector import Connector, ServerBackoff, SslMode
from ._deadline import Deadline
from ._driver_errors import (
    ConnectFailure,
    connect_error,
    connect_failure,
    is_timeout,
)
from ._slots import Exhausted, Slot, Slots
from ._sql import classify
from ._types import DEFAULT_TIMEOUTS, Params, PoolStats, Result, Role, Row
from .connection import Checkout, Connection, Cursor
from .errors import (
    ConfigError,
    ConnectionLost,
    DatabaseError,
    PoolTimeout,
    PrimaryReadOnly,
    WriteOutcomeUnknown,
)

__all__ = ["Connection", "Cursor", "Params", "Pool", "PoolStats", "Result", "Role", "Row"]

T = TypeVar("T")


class _NeverRaised(Exception):
    """Given to SteadyDB as ``failures`` so that its re-execute never triggers."""


def _module_of(creator: Any) -> ModuleType | None:
    if isinstance(creator, ModuleType):
        return creator
    module = sys.modules.get(getattr(creator, "__module__", "") or "")
    while module is not None and not hasattr(module, "paramstyle"):
        parent = module.__name__.rpartition(".")[0]
        module = sys.modules.get(parent) if parent else None
    return module


class Pool:
    """A bounded pool of connections to one server.

    Every borrower gets a connection in autocommit mode with no open
    transaction and no session state left by an earlier borrower: on return
    an open transaction is rolled back, a session whose state changed is
    reset (``COM_RESET_CONNECTION``, one round trip, only then), and a
    connection whose borrowing block raised is discarded.

    Args:
        creator: a DB-API 2 module (``pymysql``, ``sqlite3``) or a callable
            returning a new connection; with a callable the driver (and so
            the placeholder style) is learnt from the first connection, and
            the connection is put in autocommit mode.
        connect_args: keyword arguments for ``creator.connect`` on every
            (re)connect. ``connect_timeout``, ``read_timeout`` and
            ``write_timeout`` not given here take the role's defaults on
            MySQL (primary 2/60/60 s, replica 2/10/10 s; 0 means none).
        name: how events, stats and errors name this pool.
        role: ``"primary"`` or ``"replica"`` (``ReplicaSet`` sets it).
        max_connections: most connections open at once (in use + idle).
        min_idle: idle connections that idle expiry leaves open.
        max_idle: most idle connections kept; more are closed on release.
        acquire_timeout: seconds a checkout waits for a free connection
            before raising ``PoolTimeout``. Waiters are served first come,
            first served.
        max_lifetime: seconds after which a connection is closed and replaced.
        idle_timeout: seconds unused after which an idle connection is closed.
        ping_after_idle: ping a connection at checkout when it has been idle
            this long (one round trip); None never pings on idleness. After
            any connection error every older connection is pinged once.
        session: SQL statements run on every new connection (and after a reset).
        read_only: make every session ``READ ONLY`` (replicas).
        paramstyle: override the driver's ``paramstyle`` (``"qmark"`` makes
            the pool translate ``%s`` placeholders).
        dialect: ``"mysql"``, ``"sqlite"`` or ``"other"``; guessed from the driver.
        ssl_mode: ``"preferred"`` (TLS if the server offers it),
            ``"disabled"`` or ``"required"``; pymysql only. One TLS context
            is built per pool, not per connect.
        ssl_ca: CA file to verify the server's certificate (with ``required``).
        clock: the clock for lifetimes, idle expiry and connect back-off.

    Raises:
        ConfigError: an option is out of range.
    """

    def __init__(
        self,
        creator: Any,
        *,
        connect_args: Mapping[str, Any] | None = None,
        name: str = "db",
        role: Role | str = Role.PRIMARY,
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
        ssl_mode: SslMode | str = SslMode.PREFERRED,
        ssl_ca: str | None = None,
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
        self.role = _choice(Role, role, "role")
        ssl_mode = _choice(SslMode, ssl_mode, "ssl_mode")
        connect_args = dict(connect_args or {})
        self._timeouts_given: dict[str, float | None] = {
            key: connect_args.pop(key)
            for key in ("connect_timeout", "read_timeout", "write_timeout")
            if key in connect_args
        }
        for key, seconds in self._timeouts_given.items():
            if (seconds is not None and seconds < 0) or (key == "connect_timeout" and seconds == 0):
                raise ConfigError(f"{key}={seconds!r} must be a positive number of seconds")
        self._steady_db = require("dbutils.steady_db", "mysql", feature="scalekit.db.Pool")
        self._creator_is_callable = not isinstance(creator, ModuleType)
        self._given = (dialect, paramstyle)
        self._use_driver(_module_of(creator))
        if self.dialect == "mysql":
            connect_args.setdefault("autocommit", True)
        elif self.dialect == "sqlite":
            connect_args.setdefault("check_same_thread", False)
            connect_args.setdefault("isolation_level", None)
        self._connector = Connector(
            creator,
            connect_args,
            pymysql_driver=self._driver_name.startswith("pymysql"),
            ssl_mode=ssl_mode,
            ssl_ca=ssl_ca,
        )
        self.name = name
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
        self._slots = Slots(max_connections, self.max_idle)
        self._backoff = ServerBackoff(self._clock)
        self._recheck_read_only = False
        self._can_reset = True
        self._pid = os.getpid()
        self._epoch = 0
        _fork.register(self._after_fork)
        if read_only:
            self.make_read_only()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Pool:
        """A pool from ``mysql://user:pw@host:3306/db?max_connections=20&...`` or ``sqlite:///path``.

        URL options: max_connections, min_idle, max_idle, acquire_timeout,
        connect_timeout, read_timeout, write_timeout, max_lifetime,
        idle_timeout, ping_after_idle, charset (default utf8mb4), ssl_mode,
        ssl_ca, name. Keyword ``options`` override the URL's.

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
    def connection(
        self, timeout: float | None = None, *, deadline: float | None = None
    ) -> Checkout:
        """Check out a connection: ``with pool.connection() as conn: ...``.

        Args:
            timeout: seconds to wait for a free one (default ``acquire_timeout``).
            deadline: seconds that the liveness check, any reconnect and every
                statement on this checkout may take together. Without it the
                checkout's own work is bounded by ``read_timeout`` and each
                statement by the socket timeouts.

        Raises:
            PoolTimeout: none became free in time.
            ConnectionLost: opening a new connection failed, or the server is
                down (it refused the last connect and its back-off has not ended).
        """
        return Checkout(self, timeout, None if deadline is None else Deadline(deadline))

    def query(self, sql: str, params: Params = None) -> list[Row]:
        """Run a statement that returns rows; see ``execute`` for what is sent again."""
        return self._operation(sql, lambda conn: conn.query(sql, params))

    def execute(self, sql: str, params: Params = None, *, returning: bool = False) -> Result:
        """Run a statement in autocommit mode (``returning=True``: keep its rows).

        A statement lost on a stale connection is sent once more on a fresh
        one only when nothing reached the server, or when it is a read by its
        text (``SELECT``, ``SHOW``, ``WITH … SELECT`` without a data-changing
        clause). ``read_timeout`` bounds the whole operation: the liveness
        check, a reconnect and the statement, the second attempt included.

        Raises:
            WriteOutcomeUnknown: the connection was lost with a write in flight.
        """
        return self._operation(sql, lambda conn: conn.execute(sql, params, returning=returning))

    def _operation(self, sql: str, run: Callable[[Connection], T]) -> T:
        deadline = Deadline(self.read_timeout)
        for attempt in (0, 1):
            used: Connection | None = None
            try:
                with Checkout(self, None, deadline) as conn:
                    used = conn
                    return run(conn)
            except ConnectionLost as exc:
                again = (
                    attempt == 0
                    and used is not None  # a statement failed, not the connect
                    and not isinstance(exc, WriteOutcomeUnknown)
                    and (used.lost_unsent or classify(sql).read)
                    and not deadline.passed()
                )
                if not again:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def make_read_only(self) -> None:
        """Make every session ``READ ONLY`` from the next checkout on (``ReplicaSet`` does this)."""
        statement = (
            "PRAGMA query_only = ON"
            if self.dialect == "sqlite"
            else "SET SESSION TRANSACTION READ ONLY"
        )
        self.read_only = True
        if statement not in self._session:
            self._session.append(statement)
            self._slots.new_session_generation()

    @property
    def in_use(self) -> int:
        """Connections checked out now (no lock: for balancing, not accounting)."""
        return self._slots.in_use

    @property
    def where(self) -> str:
        """How messages name this pool: ``pool 'db' (primary)``."""
        return f"pool {self.name!r} ({self.role})"

    @property
    def driver(self) -> ModuleType | None:
        """The DB-API module, once known."""
        return self._driver

    @property
    def connect_timeout(self) -> float | None:
        """Seconds a connect may take (MySQL; None elsewhere)."""
        return self._timeout("connect_timeout", 0)

    @property
    def read_timeout(self) -> float | None:
        """Seconds one operation may take (MySQL; None: no limit)."""
        return self._timeout("read_timeout", 1)

    @property
    def write_timeout(self) -> float | None:
        return self._timeout("write_timeout", 2)

    def _timeout(self, key: str, index: int) -> float | None:
        if self.dialect != "mysql":
            return self._timeouts_given.get(key) or None
        value = self._timeouts_given.get(key, DEFAULT_TIMEOUTS[self.role][index])
        return float(value) if value else None

    def server_down(self) -> bool:
        """True while a failed connect's back-off runs: new connects are refused at once."""
        return self._backoff.remaining() > 0

    def stats(self) -> PoolStats:
        """Connections in use, idle, callers waiting, open now; opened and errors so far."""
        counts = self._slots.counts()
        return PoolStats(
            in_use=counts.in_use,
            idle=counts.idle,
            waiting=counts.waiting,
            open=counts.open,
            opened=counts.opened,
            errors=counts.errors,
            max_connections=self.max_connections,
            connecting=counts.connecting,
        )

    def warm(self) -> None:
        """Open connections until ``min_idle`` are idle (call at startup)."""
        slots: list[Slot] = []
        try:
            while self.stats().idle + len(slots) < self.min_idle:
                slots.append(self._acquire(None, Deadline(self.read_timeout)))
        finally:
            for slot in slots:
                self._release(slot, discard=False)

    def close(self) -> None:
        """Close idle connections now and the others as they are released."""
        for slot in self._slots.close():
            slot.close()

    def __repr__(self) -> str:
        return f"<Pool {self.name!r} role={self.role} max_connections={self.max_connections}>"

    # -- checkout ----------------------------------------------------------
    def _acquire(self, timeout: float | None, deadline: Deadline) -> Slot:
        if self._pid != os.getpid():
            self._after_fork()
        wait = self.acquire_timeout if timeout is None else timeout
        if self._backoff.unresponsive and self.server_down():
            raise self._server_down()
        dead: list[Slot] = []
        try:
            slot, error_generation = self._slots.reserve(wait, self._expired, dead)
        except Exhausted as exc:
            counts = exc.counts
            detail = f"{counts.in_use} in use"
            if counts.connecting:
                detail += f", {counts.connecting} of them connecting"
            raise PoolTimeout(
                f"no connection of {self.where} became free within {wait}s "
                f"(max_connections={self.max_connections}: {detail}): raise "
                "max_connections or acquire_timeout, or hold connections for less time"
            ) from None
        except RuntimeError:
            raise DatabaseError(f"{self.where} is closed") from None
        finally:
            for old in dead:
                old.close()
        try:
            if slot is not None and not self._usable(slot, error_generation, deadline):
                slot.close()  # gone (a restart, a kill): a fresh connection will do
                slot = None
            if slot is None:
                with self._backoff.attempt(self.connect_timeout) as allowed:
                    if not allowed:
                        raise self._server_down()
                    with self._slots.connecting_one():
                        slot = self._new_slot(deadline)
        except BaseException:
            if slot is not None:
                slot.close()  # its server did not answer the ping
            self._slots.release(None, discard=True, now=self._clock.monotonic(), failed=True)
            raise
        slot.error_generation = error_generation
        self._emit_stats()
        return slot

    def _server_down(self) -> ConnectionLost:
        backoff = self._backoff
        what = backoff.cause.value
        remaining = backoff.remaining()
        next_attempt = (
            f"next attempt in {remaining:.2f}s"
            if remaining > 0 or not backoff.trying
            else "another caller is trying a connect now"
        )
        return ConnectionLost(
            f"server down: {self.where} {what} ({backoff.last_error}); {next_attempt}"
        )

    def _usable(self, slot: Slot, error_generation: int, deadline: Deadline) -> bool:
        """Ping when idle long enough or after an error; a silent server raises, not reconnects."""
        idle_for = self._clock.monotonic() - slot.last_used
        if slot.error_generation == error_generation and (
            self.ping_after_idle is None or idle_for < self.ping_after_idle
        ):
            return True
        raw = slot.raw
        ping = getattr(raw, "ping", None)
        if ping is None:
            return True
        limited = Connector.limit(raw, deadline.cap(self.connect_timeout))
        try:
            ping(False)  # pymysql: ping without its own reconnect
        except Exception as exc:
            if not is_timeout(exc):
                return False  # gone (restart, kill): a fresh connection will do
            self._backoff.failed(f"no answer to a ping: {exc}", cause=ConnectFailure.UNANSWERED)
            raise ConnectionLost(
                f"{self.where} did not answer a ping within "
                f"{deadline.cap(self.connect_timeout)}s: {exc}"
            ) from exc
        finally:
            if limited:
                Connector.restore(raw, self.read_timeout, self.write_timeout)
        return True

    def _new_slot(self, deadline: Deadline) -> Slot:
        arguments = self._connector.arguments(self.connect_timeout, deadline)
        if self.dialect == "mysql":
            # The handshake and the session statements are read with the socket
            # timeouts, not connect_timeout: a frozen server that accepts the TCP
            # connect would hold a connect for the whole read_timeout. Cut them
            # to the connect's limit; the configured ones are put back below.
            limit = arguments.get("connect_timeout")
            for key in ("read_timeout", "write_timeout"):
                value = self._timeout(key, 1 if key == "read_timeout" else 2)
                if limit is not None:
                    value = limit if value is None else min(value, limit)
                if value is not None:
                    arguments[key] = value
        try:
            steady = self._steady_db.connect(
                self._connector,
                None,  # maxusage
                list(self._session),  # setsession
                (_NeverRaised,),  # failures: SteadyDB never re-executes
                0,  # ping: we ping at checkout ourselves
                True,  # closeable
                None,  # isfatal
                **arguments,
            )
        except Exception as exc:
            error = connect_error(exc, where=self.where, driver=self._driver)
            if error is None:
                raise
            self._connection_failed()
            cause, detail = connect_failure(exc)
            self._backoff.failed(detail, cause=cause)
            raise error from exc
        self._backoff.succeeded()
        if self.dialect == "mysql" and hasattr(steady._con, "_read_timeout"):
            Connector.restore(steady._con, self.read_timeout, self.write_timeout)
        if self._creator_is_callable:
            self._adopt(steady._con)
        self._slots.opened_one()
        return Slot(steady, self._clock.monotonic(), self._slots.error_generation,
                    self._slots.session_generation, self._epoch)  # fmt: skip

    # -- return --------------------------------------------------------------
    def _return(self, connection: Connection, exc: BaseException | None) -> None:
        """Clean a returned connection for its next borrower, or discard it."""
        slot = connection._slot
        raw = slot.raw
        discard = connection.broken or (exc is not None and exc is not connection._answered)
        if not discard:
            try:
                if connection._dirty:
                    discard = not self._reset(raw, database=connection._database_changed)
                elif connection.in_transaction or _hygiene.in_transaction(
                    raw, tracked=connection._text_transaction
                ):
                    slot.steady.rollback()
            except Exception:
                discard = True
        if connection._limited and not discard:
            Connector.restore(raw, self.read_timeout, self.write_timeout)
        self._release(slot, discard=discard)

    def _reset(self, raw: Any, *, database: bool = False) -> bool:
        if not (self._can_reset and self.dialect == "mysql" and _hygiene.can_reset(raw)):
            return False
        selected = getattr(raw, "db", None) if database else None
        if database and not selected:
            return False  # opened with no database: a reset cannot unselect one
        try:
            _hygiene.reset(raw, self._session, database=selected)
        except Exception as exc:
            if getattr(exc, "args", (None,))[0] == 1047:  # unknown command: MariaDB < 10.2
                self._can_reset = False
            return False
        return True

    def _release(self, slot: Slot, *, discard: bool) -> None:
        if slot.epoch != self._epoch:  # opened before a fork: the parent's connection
            slot.abandon()
            return
        now = self._clock.monotonic()
        expired = now - slot.created >= self.max_lifetime
        if self._slots.release(slot, discard=discard or expired, now=now):
            slot.close()
        self._emit_stats()

    # -- internals ---------------------------------------------------------
    def _after_fork(self) -> None:
        """In a forked child: forget the parent's connections (never close them)."""
        for slot in self._slots.forget():
            slot.abandon()
        self._backoff.after_fork()
        self._epoch += 1
        self._pid = os.getpid()

    def _connection_failed(self) -> None:
        self._slots.connection_failed()

    def _check_read_only(self, connection: Connection) -> None:
        if not self._recheck_read_only or self.dialect != "mysql":
            return
        (row,) = connection._run("SELECT @@read_only AS ro", None)[1]
        if int(row["ro"]):
            raise PrimaryReadOnly(
                f"the primary {self.name!r} is still read-only (@@read_only=1): "
                "point the primary pool at the new primary"
            )
        self._recheck_read_only = False

    def _expired(self, slot: Slot, idle_count: int) -> bool:
        now = self._clock.monotonic()
        return (
            slot.session_generation != self._slots.session_generation
            or now - slot.created >= self.max_lifetime
            or (now - slot.last_used >= self.idle_timeout and idle_count > self.min_idle)
        )

    def _use_driver(self, driver: ModuleType | None) -> None:
        dialect, paramstyle = self._given
        self._driver = driver
        self._driver_name = driver.__name__ if driver is not None else ""
        self.dialect = dialect or (
            "mysql"
            if self._driver_name.startswith(("pymysql", "MySQLdb", "mariadb"))
            else ("sqlite" if self._driver_name.startswith("sqlite3") else "other")
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

    def _emit_stats(self) -> None:
        if events.bus.has_listeners(events.DbPoolStats):
            counts = self._slots.counts()
            events.emit(events.DbPoolStats(self.name, counts.in_use, counts.idle, counts.waiting))


E = TypeVar("E", Role, SslMode)


def _choice(kind: type[E], value: E | str, option: str) -> E:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(repr(member.value) for member in kind)
        raise ConfigError(f"{option}={value!r}: use one of {choices}") from None
