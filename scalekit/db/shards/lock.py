"""The mover lock: one mover per bucket at a time, and a mover that lost its lock stops.

MariaDB/MySQL: ``GET_LOCK`` on a connection to the control database held for
the whole move. The server frees such a lock when that connection dies (a
network cut, ``KILL``, ``wait_timeout``), and then a second mover could take
it; so the mover checks, before every step and batch, that the connection is
alive and still holds the lock (``IS_USED_LOCK(name) = CONNECTION_ID()``, one
round trip), and stops with ``MoveError`` when it does not. Between the loss
and that check at most one batch runs; every step is idempotent, so a
second mover redoes it.

SQLite: an exclusive ``flock`` on a file next to the control database
(``<control>.bucket-<n>.lock``), released by the kernel when the process
dies; an in-memory control database (one process only) uses a lock in the
process.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from types import TracebackType

from ..errors import DatabaseError, MoveError
from ..pool import Connection, Pool

__all__ = ["MoverLock", "mover_lock"]

_local_locks: dict[tuple[int, int], threading.Lock] = {}
_local_guard = threading.Lock()


class MoverLock:
    """A held mover lock; ``check()`` raises ``MoveError`` if it has been lost."""

    def __init__(self, bucket: int) -> None:
        self.bucket = bucket

    def check(self) -> None:
        """Raise ``MoveError`` if the lock is no longer held (nothing to check here)."""

    def release(self) -> None:
        """Give the lock back."""

    def __enter__(self) -> MoverLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def _taken(self) -> MoveError:
        return MoveError(f"another mover is working on bucket {self.bucket}: wait for it to finish")


class _ServerLock(MoverLock):
    """``GET_LOCK`` on one control connection, checked before every step and batch."""

    def __init__(self, control: Pool, bucket: int) -> None:
        super().__init__(bucket)
        self._name = f"scalekit.bucket_move.{bucket}"
        self._checkout = control.connection()
        self._conn: Connection = self._checkout.__enter__()
        try:
            (row,) = self._conn.query(
                "SELECT GET_LOCK(CONCAT(DATABASE(), '.', %s), 0) AS got", [self._name]
            )
        except BaseException as exc:
            self._checkout.__exit__(type(exc), exc, exc.__traceback__)
            raise
        if row["got"] is None:  # CONCAT(NULL, ...): the connection has no database
            self._checkout.__exit__(None, None, None)
            raise MoveError(
                "the control database URL names no database: add one "
                "(mysql://user:password@host:3306/control)"
            )
        if not row["got"]:
            self._checkout.__exit__(None, None, None)
            raise self._taken()
        self._held = True

    def check(self) -> None:
        try:
            (row,) = self._conn.query(
                "SELECT IS_USED_LOCK(CONCAT(DATABASE(), '.', %s)) = CONNECTION_ID() AS mine",
                [self._name],
            )
            mine = bool(row["mine"])
        except DatabaseError as exc:
            self._held = False
            raise self._lost(f"its connection failed ({exc})") from exc
        if not mine:
            self._held = False
            raise self._lost("the server no longer gives it to this mover's connection")

    def _lost(self, why: str) -> MoveError:
        return MoveError(
            f"the mover lost the lock of bucket {self.bucket}: {why}. It stopped so that two "
            "movers never run at once; rerun the move (it resumes) when no other mover is "
            "working on this bucket"
        )

    def release(self) -> None:
        if self._held:
            with contextlib.suppress(DatabaseError):
                self._conn.query(
                    "SELECT RELEASE_LOCK(CONCAT(DATABASE(), '.', %s)) AS released", [self._name]
                )
            self._held = False
        self._checkout.__exit__(None, None, None)


class _FileLock(MoverLock):
    """An exclusive ``flock`` next to a SQLite control database."""

    def __init__(self, path: str, bucket: int) -> None:
        import fcntl

        super().__init__(bucket)
        self.path = f"{path}.bucket-{bucket}.lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise self._taken() from None

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock
            self._fd = -1


class _ProcessLock(MoverLock):
    """A lock in this process, for a control database no other process can open."""

    def __init__(self, control: Pool, bucket: int) -> None:
        super().__init__(bucket)
        with _local_guard:
            self._lock = _local_locks.setdefault((id(control), bucket), threading.Lock())
        if not self._lock.acquire(blocking=False):
            raise self._taken()

    def release(self) -> None:
        if self._lock.locked():
            self._lock.release()


def _sqlite_file(control: Pool) -> str:
    for row in control.query("PRAGMA database_list"):
        if row["name"] == "main":
            return str(row["file"] or "")
    return ""


@contextlib.contextmanager
def mover_lock(control: Pool, bucket: int) -> Iterator[MoverLock]:
    """Hold the lock of ``bucket``'s move for the block.

    Raises:
        MoveError: another mover holds it (or, from ``check()``, it was lost).
    """
    lock: MoverLock
    if control.dialect == "mysql":
        lock = _ServerLock(control, bucket)
    elif control.dialect == "sqlite" and (path := _sqlite_file(control)):
        lock = _FileLock(path, bucket)
    else:
        lock = _ProcessLock(control, bucket)
    with lock:
        yield lock
