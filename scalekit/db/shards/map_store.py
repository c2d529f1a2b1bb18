"""Where a ``BucketMap`` is stored in a database: ``MapStore``.

One table on a *control* database holds the map: a row per bucket
``(bucket, shard, version)`` where ``version`` is the map version that last
changed it, plus a row ``bucket = -1`` holding the shard count in ``shard``
and the map's current version. Every instance loads it from there; the
mover flips one bucket in it (see :mod:`.mover`).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import ConfigError, error_code
from ..pool import Pool, Row
from ..replicas import ReplicaSet
from .bucket_map import BucketMap
from .dialect import dialect_of, identifier, primary_pool

__all__ = ["MAP_TABLE", "MapStore"]

MAP_TABLE = "scalekit_bucket_map"
"""Default table of a ``BucketMap`` saved in a database."""


class MapStore:
    """A ``BucketMap`` in a database table, on the primary of ``db``.

    Args:
        db: the control database (a ``Pool`` or a ``ReplicaSet``, whose
            primary is used: a map read from a lagging replica could be old).
        table: the table name (default ``scalekit_bucket_map``).

    Raises:
        ConfigError: ``table`` is not a plain SQL identifier.
    """

    def __init__(self, db: Pool | ReplicaSet, table: str | None = None) -> None:
        self.pool = primary_pool(db)
        self.table = identifier(table or MAP_TABLE)
        self._dialect = dialect_of(self.pool)

    def ensure_table(self) -> None:
        """Create the map table if it is missing."""
        self.pool.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} (bucket INT NOT NULL PRIMARY KEY, "
            "shard INT NOT NULL, version BIGINT NOT NULL)"
        )

    def load(self) -> BucketMap:
        """The stored map.

        Raises:
            ConfigError: the table is empty or inconsistent.
        """
        rows = self._read(f"SELECT bucket, shard, version FROM {self.table}")
        if not rows:
            raise ConfigError(
                f"table {self.table} holds no bucket map: save one first (BucketMap.save_db)"
            )
        bucket_map = self._from_rows(rows)
        bucket_map._stored = True
        return bucket_map

    def version(self, timeout: float | None = None) -> int:
        """The stored map's version: one row, for instances that poll for changes.

        Args:
            timeout: seconds the checkout and the query may take together
                (default: the pool's ``acquire_timeout`` and ``read_timeout``).

        Raises:
            ConfigError: the table holds no map.
        """
        rows = self._read(f"SELECT version FROM {self.table} WHERE bucket = -1", timeout)
        if not rows:
            raise ConfigError(
                f"table {self.table} holds no bucket map: save one first (BucketMap.save_db)"
            )
        return int(rows[0]["version"])

    def save(self, bucket_map: BucketMap) -> None:
        """Store ``bucket_map`` (creating the table if missing): compare-and-set, one transaction.

        An empty table takes any map. Otherwise the table must hold the map
        ``bucket_map`` was derived from (its ``derived_from``: the same version
        and digest), or ``bucket_map`` itself (then nothing changes).

        Raises:
            ConfigError: the table holds another map: a move or another save
                changed it since ``bucket_map`` was derived.
        """
        self.ensure_table()
        with self.pool.connection() as conn:
            conn.begin()
            try:
                cursor = conn.cursor()
                rows = cursor.query(
                    f"SELECT bucket, shard, version FROM {self.table}{self._dialect.update_lock}"
                )
                if rows:
                    stored = self._from_rows(rows)
                    if stored.version == bucket_map.version and stored == bucket_map:
                        conn.rollback()
                        bucket_map._stored = True
                        return
                    if bucket_map.derived_from != (stored.version, stored.digest):
                        base = bucket_map.derived_from
                        raise ConfigError(
                            f"table {self.table} holds bucket map version {stored.version}; "
                            f"refusing to overwrite it with version {bucket_map.version}, "
                            + (
                                f"derived from version {base[0]} ({base[1]})"
                                if base
                                else "which was not derived from it"
                            )
                            + ": load the stored map, change it with reassign() or "
                            "rebalance(), then save"
                        )
                cursor.execute(f"DELETE FROM {self.table}")
                version = bucket_map.version
                values = [(-1, bucket_map.shard_count, version)]
                values += [(bucket, shard, version) for bucket, shard in
                           enumerate(bucket_map.assignment)]  # fmt: skip
                for start in range(0, len(values), 256):
                    chunk = values[start : start + 256]
                    cursor.execute(
                        f"INSERT INTO {self.table} (bucket, shard, version) VALUES "
                        + ", ".join(["(%s, %s, %s)"] * len(chunk)),
                        [value for row in chunk for value in row],
                    )
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
        bucket_map._stored = True

    def _read(self, sql: str, timeout: float | None = None) -> list[Row]:
        try:
            if timeout is None:
                return self.pool.query(sql)
            with self.pool.connection(timeout, deadline=timeout) as conn:
                return conn.query(sql)
        except Exception as exc:
            # The driver's own error: MariaDB 1146, SQLite "no such table".
            if error_code(exc) == 1146 or "no such table" in str(exc):
                raise ConfigError(
                    f"{self.pool.name!r} has no table {self.table}: save a bucket map there "
                    "first (BucketMap.save_db), or point at the control database that holds it"
                ) from None
            raise

    def _from_rows(self, rows: Iterable[Row]) -> BucketMap:
        meta: Row | None = None
        assignment: dict[int, int] = {}
        for row in rows:
            if int(row["bucket"]) == -1:
                meta = row
            else:
                assignment[int(row["bucket"])] = int(row["shard"])
        if meta is None:
            raise ConfigError(f"table {self.table} has no bucket -1 row (shard count and version)")
        return BucketMap(
            len(assignment), assignment, shards=int(meta["shard"]), version=int(meta["version"])
        )

    def __repr__(self) -> str:
        return f"MapStore({self.pool.name!r}, table={self.table!r})"
