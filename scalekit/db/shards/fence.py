"""Bucket fences: every read and write of the per-shard fence table lives here.

Each shard has a table ``scalekit_bucket_fence (bucket, state)``. A bucket with
no row, or ``open``, takes writes; ``frozen`` makes guarded writers wait
(a move is syncing it, or it has not been opened on its new shard yet);
``moved`` sends them to reload the map (the bucket does not live here).

Guarded writers (``ShardSet.execute`` / ``transaction`` under a ``BucketMap``)
read their bucket's row in the same transaction with a share lock
(:func:`guard`); the mover changes a row with an exclusive write
(:func:`set_state`), which waits for guarded transactions in flight.

The row ``bucket = -1`` is not a fence: it names the shard the table belongs
to (its index, written by the first ``ShardSet`` or mover to use the shard,
see :func:`check_shard`), so that shards given in another order, or one
database given twice, are refused instead of moving rows to the wrong place.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TypeVar

from scalekit.errors import ScalekitError

from ..errors import ConfigError
from ..pool import Connection, Cursor, Pool
from .dialect import Dialect, dialect_of, identifier

__all__ = [
    "FENCE_TABLE",
    "SHARD_ROW",
    "FenceState",
    "Fenced",
    "check_shard",
    "ensure_fence_table",
    "guard",
    "open_if_missing",
    "recorded_shard",
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


SHARD_ROW = -1
"""The fence table's ``bucket`` value of the row naming the shard's index."""


def recorded_shard(pool: Pool, table: str = FENCE_TABLE) -> str | None:
    """The shard index the database's fence table records, if any."""
    dialect = dialect_of(pool)
    rows = pool.query(f"SELECT state FROM {dialect.quote(table)} WHERE bucket = %s", (SHARD_ROW,))
    return str(rows[0]["state"]) if rows else None


def check_shard(pool: Pool, index: int, table: str = FENCE_TABLE) -> None:
    """Record ``index`` as the shard's index if none is, else check it is the one recorded.

    Raises:
        ConfigError: the database is recorded as another shard: the shards were
            given in another order than before, or one database twice.
    """
    dialect = dialect_of(pool)
    pool.execute(dialect.insert_ignore(table, ["bucket", "state"]), [SHARD_ROW, str(index)])
    recorded = recorded_shard(pool, table)
    if recorded is not None and recorded != str(index):
        raise ConfigError(
            f"{pool.name!r} is given as shard {index}, but its {table} table records it as "
            f"shard {recorded}: give the shards in the same order as every ShardSet does "
            "(the bucket map's order), each database once"
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
