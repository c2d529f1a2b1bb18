"""A bucket's rows on one shard: the declared tables, batches, counts, upserts, deletes.

``ShardedTable`` declares a table whose rows follow their shard key's bucket;
``BucketRows`` reads and writes one bucket's rows of such tables on one
shard, in primary-key order, through that shard's :class:`.dialect.Dialect`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import MoveError
from ..pool import Connection, Pool, Row
from .dialect import Dialect, dialect_of, identifier

__all__ = ["BucketRows", "Key", "ShardedTable"]

Key = tuple[Any, ...]
"""A row's primary-key values, in the table's primary-key column order."""


@dataclasses.dataclass(frozen=True, init=False)
class ShardedTable:
    """A table whose rows live on the shard of their ``shard_key`` column.

    ``ShardedTable("tasks", shard_key="user_id", primary_key="id")``; a
    composite key is a tuple. ``ShardedTable.parse("tasks:user_id:id")`` reads
    the command-line form (``table:shard_key:pk[,pk...]``).
    """

    name: str
    shard_key: str
    primary_key: tuple[str, ...]

    def __init__(self, name: str, shard_key: str, primary_key: str | Sequence[str] = "id") -> None:
        keys = (primary_key,) if isinstance(primary_key, str) else tuple(primary_key)
        if not keys:
            raise MoveError(f"table {name!r} needs at least one primary-key column")
        for name_part in (name, shard_key, *keys):
            identifier(name_part)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "shard_key", shard_key)
        object.__setattr__(self, "primary_key", keys)

    @classmethod
    def parse(cls, text: str) -> ShardedTable:
        """``"table:shard_key:pk[,pk...]"`` → a ``ShardedTable``."""
        parts = text.split(":")
        if len(parts) != 3 or not all(parts):
            raise MoveError(
                f"bad table declaration {text!r}: write table:shard_key:primary_key "
                "(e.g. tasks:user_id:id, or tasks:user_id:user_id,id for a composite key)"
            )
        return cls(parts[0], parts[1], tuple(parts[2].split(",")))

    def key(self, row: Row) -> Key:
        """The row's primary-key values."""
        return tuple(row[column] for column in self.primary_key)


class BucketRows:
    """One bucket's rows on one shard (its primary pool)."""

    def __init__(
        self, pool: Pool, buckets: int, bucket: int, tables: Sequence[ShardedTable]
    ) -> None:
        self.pool = pool
        self.dialect: Dialect = dialect_of(pool)
        self.buckets = buckets
        self.bucket = bucket
        self.tables = list(tables)
        self._binary: dict[str, bool] | None = None

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection to the shard's primary, ready for the statements below."""
        with self.pool.connection() as conn:
            self.dialect.prepare(conn)
            if self._binary is None:  # once: is each table's shard key stored as bytes?
                self._binary = {
                    table.name: self.dialect.is_binary(conn, table.name, table.shard_key)
                    for table in self.tables
                }
            yield conn

    def check_key(self, conn: Connection, table: ShardedTable) -> None:
        """The declared primary key identifies one row here (a key of the table is within it).

        Rows are upserted and deleted by the declared key: declaring ``id``
        where the table's key is ``(user_id, id)`` would delete other buckets'
        rows that share an ``id``.

        Raises:
            MoveError: no primary or unique key of the table is made of the
                declared columns (or the table does not exist).
        """
        keys = self.dialect.unique_keys(conn, table.name)
        declared = {column.lower() for column in table.primary_key}
        if keys is None or any({column.lower() for column in key} <= declared for key in keys):
            return
        found = "; ".join(",".join(key) for key in keys) or "none: does the table exist there?"
        suggestion = ",".join(keys[0]) if keys else ",".join(table.primary_key)
        raise MoveError(
            f"table {table.name} on {self.pool.name!r}: the declared primary key "
            f"({','.join(table.primary_key)}) is not a key of the table (its primary and "
            f"unique keys: {found}); rows are copied and deleted by it, so declare the "
            f"table's primary key, e.g. {table.name}:{table.shard_key}:{suggestion}"
        )

    def predicate(self, table: ShardedTable) -> tuple[str, list[Any]]:
        """The ``WHERE`` condition (and its parameters) for the bucket's rows of ``table``.

        Call it on a connection from ``connect()``: the first one reads the key types.
        """
        binary = bool(self._binary and self._binary.get(table.name))
        expression = self.dialect.bucket_of(table.shard_key, self.buckets, binary=binary)
        return f"{expression} = %s", [self.bucket]

    def _pk(self, table: ShardedTable) -> str:
        return ", ".join(self.dialect.quote(column) for column in table.primary_key)

    def batch(
        self,
        conn: Connection,
        table: ShardedTable,
        after: Key | None,
        limit: int,
        upto: Key | None = None,
    ) -> list[Row]:
        """The bucket's rows with ``after < pk <= upto`` in key order; ``limit`` 0: all."""
        where, params = self.predicate(table)
        marks = ", ".join(["%s"] * len(table.primary_key))
        if after is not None:
            where += f" AND ({self._pk(table)}) > ({marks})"
            params += list(after)
        if upto is not None:
            where += f" AND ({self._pk(table)}) <= ({marks})"
            params += list(upto)
        tail = f" LIMIT {int(limit)}" if limit else ""
        return conn.query(
            f"SELECT * FROM {self.dialect.quote(table.name)} WHERE {where} "
            f"ORDER BY {self._pk(table)}{tail}",
            params,
        )

    def batches(self, conn: Connection, table: ShardedTable, size: int) -> Iterator[list[Row]]:
        """The bucket's rows of ``table`` in batches of ``size``, each after the last."""
        after: Key | None = None
        while rows := self.batch(conn, table, after, size):
            yield rows
            after = table.key(rows[-1])

    def count(self, conn: Connection, table: ShardedTable) -> int:
        """How many of the bucket's rows ``table`` holds here."""
        where, params = self.predicate(table)
        (row,) = conn.query(
            f"SELECT COUNT(*) AS n FROM {self.dialect.quote(table.name)} WHERE {where}", params
        )
        return int(row["n"])

    def upsert(self, conn: Connection, table: ShardedTable, rows: Sequence[Row]) -> None:
        """Insert ``rows``, replacing rows of this bucket with the same primary key.

        Raises:
            MoveError: a row of another bucket (or with no bucket) holds one of
                these primary keys here; nothing was written.
        """
        if not rows:
            return
        taken = self.foreign(conn, table, [table.key(row) for row in rows])
        if taken:
            shown = ", ".join(repr(key[0] if len(key) == 1 else key) for key in taken)
            raise MoveError(
                f"table {table.name} on {self.pool.name!r} already holds rows of other buckets "
                f"with primary keys of bucket {self.bucket}'s rows ({shown}): primary keys must "
                "be unique across shards (ids from one sequence or UUIDs, not a per-shard "
                "AUTO_INCREMENT; case-insensitive text keys must not differ only by case). "
                "Nothing was overwritten: fix the keys, then rerun the move or roll it back"
            )
        columns = list(rows[0])
        sql = self.dialect.upsert(table.name, columns, table.primary_key, len(rows))
        conn.execute(sql, [row[column] for row in rows for column in columns])

    def foreign(self, conn: Connection, table: ShardedTable, keys: Sequence[Key]) -> list[Key]:
        """Of these primary keys, up to three held here by rows outside the bucket.

        An upsert of a moved row would overwrite such a row: another user's
        data under a colliding key (the server compares keys by its collation).
        """
        if not keys:
            return []
        where, params = self._keys(table, keys)
        inside, more = self.predicate(table)
        rows = conn.query(
            f"SELECT {self._pk(table)} FROM {self.dialect.quote(table.name)} "
            f"WHERE ({where}) AND NOT COALESCE({inside}, 0) LIMIT 3",
            params + more,
        )
        return [table.key(row) for row in rows]

    def _keys(self, table: ShardedTable, keys: Sequence[Key]) -> tuple[str, list[Any]]:
        """A ``WHERE`` condition matching these primary keys, and its parameters."""
        quote = self.dialect.quote
        if len(table.primary_key) == 1:
            where = f"{quote(table.primary_key[0])} IN ({', '.join(['%s'] * len(keys))})"
            return where, [key[0] for key in keys]
        one = " AND ".join(f"{quote(column)} = %s" for column in table.primary_key)
        return " OR ".join([f"({one})"] * len(keys)), [value for key in keys for value in key]

    def delete(self, conn: Connection, table: ShardedTable, keys: Sequence[Key]) -> int:
        """Delete the rows with these primary keys; returns how many were deleted."""
        if not keys:
            return 0
        where, params = self._keys(table, keys)
        sql = f"DELETE FROM {self.dialect.quote(table.name)} WHERE {where}"
        return conn.execute(sql, params).rowcount
