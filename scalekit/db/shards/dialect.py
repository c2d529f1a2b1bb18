"""The SQL that differs between MariaDB/MySQL and SQLite, as one object per dialect.

Fences, map storage and the mover ask a :class:`Dialect` for quoting, upserts,
share locks and a row's bucket instead of branching on the driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError
from ..pool import Connection, Pool
from ..replicas import ReplicaSet
from .strategies import hash_key

__all__ = ["Dialect", "MySQLDialect", "SQLiteDialect", "dialect_of", "identifier", "primary_pool"]


def identifier(name: str) -> str:
    """``name`` if it is a plain SQL identifier (letters, digits, ``_``, ``$``).

    Raises:
        ConfigError: it is not, so it could not be put in SQL unquoted.
    """
    if not name or not all(char.isalnum() or char in "_$" for char in name) or name[0].isdigit():
        raise ConfigError(f"{name!r} is not a plain SQL identifier (letters, digits, _ and $)")
    return name


def primary_pool(db: Pool | ReplicaSet) -> Pool:
    """The pool that takes writes: ``db`` itself, or a ``ReplicaSet``'s primary."""
    return db.primary if isinstance(db, ReplicaSet) else db


class Dialect:
    """Portable SQL: double-quoted names, no share locks, no row buckets in SQL."""

    name = "other"
    share_lock = ""
    """What follows a ``SELECT`` that must block writers of the rows it read."""
    update_lock = ""
    """What follows a ``SELECT`` that reads rows it is about to change."""

    def quote(self, name: str) -> str:
        """``name`` quoted as an identifier."""
        return f'"{identifier(name)}"'

    def prepare(self, conn: Connection) -> None:
        """Per-connection set-up the statements below rely on (none here)."""

    def is_binary(self, conn: Connection, table: str, column: str) -> bool:
        """Whether ``column`` holds bytes (hashed as stored) rather than text or numbers."""
        return False

    def bucket_of(self, column: str, buckets: int, *, binary: bool = False) -> str:
        """An SQL expression for the bucket of a row whose shard key is ``column``.

        It equals ``BucketMap.bucket_for`` of the value Python reads from the
        column: integers as decimal text, text as UTF-8, bytes as stored.

        Raises:
            ConfigError: this dialect cannot compute it in SQL.
        """
        raise ConfigError(
            f"bucket moves need MariaDB/MySQL or SQLite shards, not a {self.name!r} pool"
        )

    def upsert(self, table: str, columns: Sequence[str], key: Sequence[str], rows: int) -> str:
        """``INSERT`` of ``rows`` rows that replaces rows with the same ``key``."""
        raise ConfigError(f"no upsert for a {self.name!r} pool")

    def insert_ignore(self, table: str, columns: Sequence[str]) -> str:
        """``INSERT`` of one row that does nothing if its key exists."""
        raise ConfigError(f"no insert-or-ignore for a {self.name!r} pool")

    def unique_keys(self, conn: Connection, table: str) -> list[tuple[str, ...]] | None:
        """The columns of the table's primary and unique keys, in order; None: cannot tell."""
        return None

    def replication_position(self, conn: Connection) -> str | None:
        """Where the server's replicas must be to have every write it made; None: unknown."""
        return None

    def wait_for_position(self, conn: Connection, position: str, seconds: float) -> bool:
        """Wait up to ``seconds`` on a replica until it has applied ``position``."""
        return True

    def _values(self, columns: Sequence[str], rows: int) -> str:
        names = ", ".join(self.quote(column) for column in columns)
        row = "(" + ", ".join(["%s"] * len(columns)) + ")"
        return f"({names}) VALUES " + ", ".join([row] * rows)


class MySQLDialect(Dialect):
    """MariaDB and MySQL: backquotes, ``LOCK IN SHARE MODE``, ``SHA2`` buckets."""

    name = "mysql"
    share_lock = " LOCK IN SHARE MODE"
    update_lock = " FOR UPDATE"

    def quote(self, name: str) -> str:
        return f"`{identifier(name)}`"

    def is_binary(self, conn: Connection, table: str, column: str) -> bool:
        rows = conn.query(
            "SELECT DATA_TYPE AS type FROM information_schema.COLUMNS WHERE "
            "TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s AND COLUMN_NAME = %s",
            [table, column],
        )
        return bool(rows) and str(rows[0]["type"]).lower() in _MYSQL_BINARY_TYPES

    def bucket_of(self, column: str, buckets: int, *, binary: bool = False) -> str:
        # Text is hashed as UTF-8, as Python encodes a str, whatever the column's
        # or the connection's character set (CAST AS CHAR alone would use the
        # connection's: latin1 bytes under ?charset=latin1); bytes as stored.
        value = self.quote(column) if binary else f"CONVERT({self.quote(column)} USING utf8mb4)"
        digest = f"SHA2({value}, 256)"
        return f"MOD(CAST(CONV(LEFT({digest}, 16), 16, 10) AS UNSIGNED), {int(buckets)})"

    def unique_keys(self, conn: Connection, table: str) -> list[tuple[str, ...]] | None:
        rows = conn.query(
            "SELECT INDEX_NAME AS name, COLUMN_NAME AS col FROM information_schema.STATISTICS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s AND NON_UNIQUE = 0 "
            "ORDER BY INDEX_NAME = 'PRIMARY' DESC, INDEX_NAME, SEQ_IN_INDEX",
            [table],
        )
        keys: dict[str, list[str]] = {}
        for row in rows:
            keys.setdefault(str(row["name"]), []).append(str(row["col"]))
        return [tuple(columns) for columns in keys.values()]

    def replication_position(self, conn: Connection) -> str | None:
        # MariaDB's GTID position; None where the server writes no binary log.
        (row,) = conn.query("SELECT @@gtid_binlog_pos AS position")
        return str(row["position"]) if row["position"] else None

    def wait_for_position(self, conn: Connection, position: str, seconds: float) -> bool:
        (row,) = conn.query("SELECT MASTER_GTID_WAIT(%s, %s) AS waited", [position, seconds])
        return bool(row["waited"] == 0)

    def upsert(self, table: str, columns: Sequence[str], key: Sequence[str], rows: int) -> str:
        others = [column for column in columns if column not in key] or [key[0]]
        updates = ", ".join(
            f"{self.quote(column)} = VALUES({self.quote(column)})" for column in others
        )
        return (
            f"INSERT INTO {self.quote(table)} {self._values(columns, rows)} "
            f"ON DUPLICATE KEY UPDATE {updates}"
        )

    def insert_ignore(self, table: str, columns: Sequence[str]) -> str:
        return f"INSERT IGNORE INTO {self.quote(table)} {self._values(columns, 1)}"


_MYSQL_BINARY_TYPES = frozenset(
    {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"}
)


def _sqlite_bucket(value: Any, buckets: int) -> int | None:
    # NULL is in no bucket, as SHA2(NULL) is NULL on MariaDB: such rows stay put.
    return None if value is None else hash_key(value) % buckets


class SQLiteDialect(Dialect):
    """SQLite: double quotes, no row locks (a writer locks the file), a bucket function."""

    name = "sqlite"

    def prepare(self, conn: Connection) -> None:
        conn.dbapi_connection.create_function(
            "scalekit_bucket", 2, _sqlite_bucket, deterministic=True
        )

    def bucket_of(self, column: str, buckets: int, *, binary: bool = False) -> str:
        # The function gets what Python would: int, str (UTF-8) or bytes (a BLOB).
        return f"scalekit_bucket({self.quote(column)}, {int(buckets)})"

    def unique_keys(self, conn: Connection, table: str) -> list[tuple[str, ...]] | None:
        quoted = self.quote(table)
        columns = [row for row in conn.query(f"PRAGMA table_info({quoted})") if row["pk"]]
        keys = [tuple(str(row["name"]) for row in sorted(columns, key=lambda r: r["pk"]))]
        for index in conn.query(f"PRAGMA index_list({quoted})"):
            if index["unique"]:
                name = str(index["name"]).replace('"', '""')
                info = conn.query(f'PRAGMA index_info("{name}")')
                keys.append(tuple(str(row["name"]) for row in info if row["name"]))
        return [key for key in keys if key]

    def upsert(self, table: str, columns: Sequence[str], key: Sequence[str], rows: int) -> str:
        return f"INSERT OR REPLACE INTO {self.quote(table)} {self._values(columns, rows)}"

    def insert_ignore(self, table: str, columns: Sequence[str]) -> str:
        return f"INSERT OR IGNORE INTO {self.quote(table)} {self._values(columns, 1)}"


_DIALECTS: dict[str, Dialect] = {
    "mysql": MySQLDialect(),
    "sqlite": SQLiteDialect(),
}


def dialect_of(pool: Pool) -> Dialect:
    """The dialect object for a pool's ``dialect`` name."""
    return _DIALECTS.get(pool.dialect) or Dialect()
