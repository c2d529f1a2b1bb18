"""The mover lock: one mover per bucket at a time."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..errors import DatabaseError, MoveError
from ..pool import Pool

__all__ = ["mover_lock"]


@contextlib.contextmanager
def mover_lock(control: Pool, bucket: int) -> Iterator[None]:
    """Hold the lock of ``bucket``'s move for the block (MariaDB: ``GET_LOCK``).

    Raises:
        MoveError: another mover holds it.
    """
    if control.dialect != "mysql":
        yield
        return
    name = f"scalekit.bucket_move.{bucket}"
    with control.connection() as conn:
        (row,) = conn.query("SELECT GET_LOCK(CONCAT(DATABASE(), '.', %s), 0) AS got", [name])
        if not row["got"]:
            raise MoveError(f"another mover is working on bucket {bucket}: wait for it to finish")
        try:
            yield
        finally:
            with contextlib.suppress(DatabaseError):
                conn.query("SELECT RELEASE_LOCK(CONCAT(DATABASE(), '.', %s)) AS released", [name])
