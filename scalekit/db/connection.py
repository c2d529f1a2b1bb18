"""A checked-out connection: ``Connection`` (statements, transactions, what a
driver error means) and the ``Cursor`` a transaction hands out; ``Checkout`` is
the context manager ``Pool.connection()`` returns.

The pool (``pool.py``) lends them; they call back into it for what is the
pool's to decide (read-only rechecks, the error generation, the return).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .. import events
from ._connector import Connector
from ._deadline import Deadline
from ._driver_errors import Decision, outcome_name, translate
from ._slots import Slot
from ._sql import classify, to_qmark
from ._types import Params, Result, Row
from .errors import ConnectionLost, DatabaseError, WriteOutcomeUnknown

if TYPE_CHECKING:
    from .pool import Pool

__all__ = ["Checkout", "Connection", "Cursor"]


class Cursor:
    """A cursor that takes ``%s`` SQL and returns rows as dicts.

    ``transaction()`` yields one; every statement runs on the same connection.
    """

    def __init__(self, connection: Connection, in_transaction: bool) -> None:
        self._connection = connection
        self._in_transaction = in_transaction
        self._rows: list[Row] = []
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.token: str | None = None
        """After a causal transaction commits: its GTID (see ``Result.token``)."""

    def execute(self, sql: str, params: Params = None, *, returning: bool = False) -> Result:
        """Run one statement; returns its ``Result`` (rows too with ``returning=True``).

        Before 0.1 this returned the affected row count; the ``Result`` still
        compares and converts like that int, with a ``DeprecationWarning``.
        """
        result, rows = self._connection._run(
            sql, params, in_transaction=self._in_transaction, write=True
        )
        self.rowcount = result.rowcount
        self.lastrowid = result.lastrowid
        self._rows = rows
        return dataclasses.replace(result, rows=rows) if returning else result

    def query(self, sql: str, params: Params = None) -> list[Row]:
        """Run a statement that returns rows; returns them as dicts."""
        return self._connection._run(sql, params, in_transaction=self._in_transaction)[1]

    def fetchall(self) -> list[Row]:
        """The rows of the last ``execute`` (``query`` returns them directly)."""
        return list(self._rows)


class Connection:
    """One checked-out connection; use it inside ``with pool.connection() as conn``.

    What is retried and what is not depends on the statement's text and on
    whether it reached the server, never on the method: a statement that
    is not a read by its text and was lost in flight raises
    ``WriteOutcomeUnknown`` from ``query`` as from ``execute``.
    """

    def __init__(self, pool: Pool, slot: Slot, deadline: Deadline) -> None:
        self._pool = pool
        self._slot = slot
        self._deadline = deadline
        self.broken = False
        self.in_transaction = False
        self.lost_unsent = False
        """The connection died before the last statement was sent (safe to send again)."""
        self._dirty = False
        self._database_changed = False
        self._text_transaction = False
        self._answered: BaseException | None = None
        self._limited = False

    @property
    def dbapi_connection(self) -> Any:
        """The driver's own connection (pymysql, sqlite3, ...).

        What is done with it is invisible to the pool, so the connection is
        reset (or discarded) when it is returned.
        """
        self._dirty = True
        self._database_changed = True  # it may have selected another database
        return self._slot.raw

    def query(self, sql: str, params: Params = None) -> list[Row]:
        """Run a statement that returns rows; returns them as dicts."""
        return self._run(sql, params)[1]

    def execute(self, sql: str, params: Params = None, *, returning: bool = False) -> Result:
        """Run a write (``returning=True``: keep its rows in ``Result.rows``).

        Raises:
            WriteOutcomeUnknown: the connection was lost with the write in flight.
        """
        self._pool._check_read_only(self)
        result, rows = self._run(sql, params, write=True)
        return dataclasses.replace(result, rows=rows) if returning else result

    def cursor(self) -> Cursor:
        """A dict cursor on this connection."""
        return Cursor(self, self.in_transaction)

    def begin(self) -> None:
        """Start a transaction (the pool's connections are in autocommit mode)."""
        self._pool._check_read_only(self)
        if self._pool.dialect == "sqlite":
            self._run("BEGIN", None)
        else:
            try:
                self._slot.steady.begin()
            except Exception as exc:
                raise self._decide(exc, write=False, in_transaction=False) from exc
        self.in_transaction = True

    def commit(self) -> None:
        """Commit; a connection lost here raises ``WriteOutcomeUnknown``."""
        try:
            self._slot.steady.commit()
        except Exception as exc:
            raise self._decide(exc, write=True, in_transaction=False) from exc
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

    def _decide(self, exc: Exception, *, write: bool, in_transaction: bool) -> Exception:
        pool = self._pool
        decision: Decision = translate(
            exc,
            where=pool.where,
            driver=pool.driver,
            read_only_pool=pool.read_only,
            write=write,
            in_transaction=in_transaction,
        )
        if decision.lost:
            self.broken = True
            self.lost_unsent = not isinstance(decision.error, WriteOutcomeUnknown) and write
            pool._connection_failed()
        else:
            self._answered = decision.error
        if decision.demoted:
            pool._recheck_read_only = True
        return decision.error

    def _run(
        self, sql: str, params: Params, *, in_transaction: bool = False, write: bool = False
    ) -> tuple[Result, list[Row]]:
        """Run one statement; ``write``: sent with ``execute``, so never sent again when lost
        in flight, even if its text reads (``SELECT f()`` where ``f`` writes)."""
        pool = self._pool
        statement = classify(sql)
        if in_transaction and statement.commits and pool.dialect == "mysql":
            # MariaDB would commit what the transaction did so far, run the rest in
            # autocommit, and a rollback (or a retry after a deadlock) would undo
            # nothing of it: the writes before would count once per attempt.
            raise DatabaseError(
                f"{sql.strip()[:60]!r} would commit the open transaction implicitly on "
                f"{pool.where}: run it outside transaction() (a schema change on a "
                "TEMPORARY table is fine)"
            )
        if not statement.session_clean:
            self._dirty = True
            self._database_changed = self._database_changed or statement.changes_database
        if statement.begins:
            self._text_transaction = True
        elif statement.ends:
            self._text_transaction = False
        raw = self._slot.raw
        left = self._deadline.remaining()
        if left is not None:
            if left <= 0:
                raise ConnectionLost(
                    f"{pool.where}: the operation's {self._deadline.seconds}s deadline passed "
                    "before the statement was sent"
                )
            self._limited = Connector.limit(raw, left) or self._limited
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
            cursor = raw.cursor()
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
        except DatabaseError as exc:
            outcome = "error"
            self._answered = exc
            raise
        except Exception as exc:
            error = self._decide(
                exc, write=write or not statement.read, in_transaction=in_transaction
            )
            outcome = outcome_name(error)
            if error is exc:
                raise
            raise error from exc
        finally:
            if timed:
                events.emit(
                    events.DbQuery(pool.name, pool.role, time.perf_counter() - started,
                                   outcome, len(rows) if rows else max(result.rowcount, 0))
                )  # fmt: skip
        return result, rows


class Checkout:
    """The context manager ``pool.connection()`` returns."""

    __slots__ = ("_connection", "_deadline", "_pool", "_timeout")

    def __init__(self, pool: Pool, timeout: float | None, deadline: Deadline | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._deadline = deadline
        self._connection: Connection | None = None

    def __enter__(self) -> Connection:
        pool = self._pool
        checkout_deadline = self._deadline or Deadline(pool.read_timeout)
        slot = pool._acquire(self._timeout, checkout_deadline)
        self._connection = Connection(pool, slot, self._deadline or Deadline(None))
        return self._connection

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        connection = self._connection
        if connection is not None:
            self._connection = None
            self._pool._return(connection, exc)
