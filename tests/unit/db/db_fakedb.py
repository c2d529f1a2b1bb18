"""A scriptable in-memory DB-API 2 driver that behaves like pymysql on MariaDB.

Each ``FakeServer`` records the statements it receives, so unit tests count
where reads and writes went exactly, and can fail on cue with MySQL error
numbers (connection lost after executing, deadlock, read-only ...).
"""

from __future__ import annotations

import itertools
import threading
import types
from collections.abc import Callable
from typing import Any

from scalekit.db import Pool


class Error(Exception):
    pass


class OperationalError(Error):
    pass


class InterfaceError(Error):
    pass


class InternalError(Error):
    pass


class ProgrammingError(Error):
    pass


def lost(code: int = 2013) -> OperationalError:
    return OperationalError(code, "Lost connection to MySQL server during query")


class FakeServer:
    """One fake MariaDB server."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.statements: list[str] = []
        self.down = False
        self.connects = 0
        self.connect_attempts = 0
        self.open_connections = 0
        self.rows_written = 0
        self.status: dict[str, Any] | None = {
            "Slave_IO_Running": "Yes",
            "Slave_SQL_Running": "Yes",
            "Seconds_Behind_Master": 0,
        }
        self.gtid_wait = 0
        self.last_gtid = "0-1-1"
        self.global_read_only = False
        # Called with the SQL before it runs; may raise, or return an
        # exception to raise *after* the statement took effect.
        self.hook: Callable[[str], Exception | None] | None = None
        self.module = self._module()

    def count(self, needle: str) -> int:
        with self.lock:
            return sum(needle in sql for sql in self.statements)

    def _module(self) -> types.ModuleType:
        module = types.ModuleType(f"fakedb_{self.name}")
        module.paramstyle = "format"  # type: ignore[attr-defined]
        module.OperationalError = OperationalError  # type: ignore[attr-defined]
        module.InterfaceError = InterfaceError  # type: ignore[attr-defined]
        module.InternalError = InternalError  # type: ignore[attr-defined]
        module.connect = self.connect  # type: ignore[attr-defined]
        return module

    def connect(self, **kwargs: Any) -> FakeConnection:
        with self.lock:
            self.connect_attempts += 1
            if self.down:
                # As pymysql: the client's 2003, raised while handling the socket's refusal.
                refused = ConnectionRefusedError(111, "Connection refused")
                raise OperationalError(
                    2003, f"Can't connect to MySQL server on {self.name} ({refused})"
                ) from refused
            self.connects += 1
            self.open_connections += 1
        return FakeConnection(self, kwargs)

    def pool(self, **options: Any) -> Pool:
        options.setdefault("name", self.name)
        options.setdefault("dialect", "mysql")
        return Pool(self.module, **options)


class FakeConnection:
    _ids = itertools.count(1)

    def __init__(self, server: FakeServer, kwargs: dict[str, Any]) -> None:
        self.server = server
        self.kwargs = kwargs
        self.id = next(self._ids)
        self.closed = False
        self.released = False
        self.read_only_session = False
        self.in_transaction = False

    def ping(self, reconnect: bool = True) -> None:
        if self.closed or self.server.down:
            raise OperationalError(2006, "MySQL server has gone away")

    def cursor(self) -> FakeCursor:
        if self.closed:
            raise InterfaceError(0, "")
        return FakeCursor(self)

    def begin(self) -> None:
        FakeCursor(self).execute("BEGIN")
        self.in_transaction = True

    def commit(self) -> None:
        FakeCursor(self).execute("COMMIT")
        self.in_transaction = False

    def rollback(self) -> None:
        FakeCursor(self).execute("ROLLBACK")
        self.in_transaction = False

    def close(self) -> None:
        self.closed = True
        if not self.released:
            self.released = True
            with self.server.lock:
                self.server.open_connections -= 1


class FakeCursor:
    def __init__(self, connection: FakeConnection) -> None:
        self.connection = connection
        self.description: list[tuple[str, ...]] | None = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._rows: list[tuple[Any, ...]] = []

    def _result(self, names: list[str], rows: list[tuple[Any, ...]]) -> None:
        self.description = [(name,) for name in names]
        self._rows = rows
        self.rowcount = len(rows)

    def execute(self, sql: str, params: Any = None) -> int:
        connection = self.connection
        server = connection.server
        if connection.closed:
            raise InterfaceError(0, "")
        if server.down:
            connection.closed = True
            raise lost()
        with server.lock:
            server.statements.append(sql)
        after: Exception | None = None
        if server.hook is not None:
            after = server.hook(sql)
        upper = sql.lstrip().upper()
        if upper.startswith("SET SESSION TRANSACTION READ ONLY"):
            connection.read_only_session = True
        elif upper.startswith("SHOW REPLICA STATUS"):
            status = server.status
            if status is None:
                self._result([], [])
            else:
                self._result(list(status), [tuple(status.values())])
        elif "MASTER_GTID_WAIT" in upper:
            self._result(["waited"], [(server.gtid_wait,)])
        elif "@@LAST_GTID" in upper:
            self._result(["gtid"], [(server.last_gtid,)])
        elif "@@READ_ONLY" in upper:
            self._result(["ro"], [(int(server.global_read_only),)])
        elif upper.startswith(("SELECT", "SHOW")):
            self._result(["server", "connection"], [(server.name, connection.id)])
        elif upper.startswith(("BEGIN", "COMMIT", "ROLLBACK", "SET")):
            self.description = None
        else:
            if connection.read_only_session:
                raise OperationalError(1792, "Cannot execute statement in a READ ONLY transaction")
            if server.global_read_only:
                raise OperationalError(1290, "The MariaDB server is running with --read-only")
            with server.lock:
                server.rows_written += 1
                self.lastrowid = server.rows_written
            self.description = None
            self.rowcount = 1
        if after is not None:
            if after.args and after.args[0] in (2006, 2013):
                connection.closed = True
            raise after
        return self.rowcount

    def fetchall(self) -> list[tuple[Any, ...]]:
        rows, self._rows = self._rows, []
        return rows

    def close(self) -> None:
        pass
