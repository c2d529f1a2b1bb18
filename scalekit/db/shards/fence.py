"""Bucket fences: every read and write of the per-shard fence table lives here.

Each shard has a table ``scalekit_bucket_fence (bucket, state)``. A bucket with
no row, or ``open``, takes writes; ``frozen`` makes guarded writers wait
(a move is syncing it, or it has not been opened on its new shard yet);
``moved`` sends them to reload the map (the bucket does not live here).

Guarded writers (``ShardSet.execute`` / ``transaction`` under a ``BucketMap``)
read their bucket's row in the same transaction with a share lock
(:func:`guard`); the mover changes a row with an exclusive write
(:func:`set_state`), which waits for guarded transactions in flight.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TypeVar

from scalekit.errors import ScalekitError

from ..pool import Connection, Cursor, Pool
from .dialect import Dialect, dialect_of, identifier

__all__ = [
    "FENCE_TABLE",
    "FenceState",
    "Fenced",
    "ensure_fence_table",
    "guard",
    "open_if_missing",
    "set_state",
]

T = TypeVar("T")

FENCE_TABLE = "scalekit_bucket_fence"
"""Per-shard table of bucket fences."""


class FenceState(enum.StrEnum):
    """A bucket's fence on one shard."""

    OPEN = "open"
    FROZEN = "frozen"
    MOVED = "moved"


class Fenced(ScalekitError):
    """Raised inside a guarded transaction that met a fence; it is rolled back."""

    def __init__(self, state: FenceState) -> None:
        super().__init__(state.value)
        self.state = state


def ensure_fence_table(pool: Pool, table: str = FENCE_TABLE) -> None:
    """Create a shard's bucket fence table if it is missing."""
    pool.execute(
        f"CREATE TABLE IF NOT EXISTS {identifier(table)} (bucket INT NOT NULL PRIMARY KEY, "
        "state VARCHAR(16) NOT NULL)"
    )


def _guard_sql(dialect: Dialect, table: str) -> str:
    return f"SELECT state FROM {dialect.quote(table)} WHERE bucket = %s{dialect.share_lock}"


def guard(
    fn: Callable[[Cursor], T], pool: Pool, bucket: int, table: str = FENCE_TABLE
) -> Callable[[Cursor], T]:
    """``fn`` behind a share-locked read of the bucket's fence, in the same transaction.

    The returned function raises :class:`Fenced` (so the transaction rolls
    back) when the fence is not open.
    """
    sql = _guard_sql(dialect_of(pool), table)

    def guarded(cursor: Cursor) -> T:
        rows = cursor.query(sql, (bucket,))
        if rows and rows[0]["state"] != FenceState.OPEN:
            raise Fenced(FenceState(rows[0]["state"]))
        return fn(cursor)

    return guarded


def set_state(
    conn: Connection, dialect: Dialect, bucket: int, state: FenceState, table: str = FENCE_TABLE
) -> None:
    """Set the bucket's fence on the connection's shard; waits for guarded writes in flight."""
    conn.execute(dialect.upsert(table, ["bucket", "state"], ["bucket"], 1), [bucket, state.value])


def open_if_missing(
    conn: Connection, dialect: Dialect, bucket: int, table: str = FENCE_TABLE
) -> None:
    """Give the bucket an ``open`` fence row unless it has one (so freezing can lock it)."""
    conn.execute(dialect.insert_ignore(table, ["bucket", "state"]), [bucket, FenceState.OPEN.value])
