"""Online bucket moves for a ``BucketMap``: copy, freeze and sync, verify, flip, delete.

``move_bucket`` moves every row of one bucket of the declared tables from its
shard to another, while the application keeps writing:

1. **copy** — the bucket's rows, in primary-key batches, upserted into the
   target (idempotent: a rerun copies again without duplicating).
2. **sync** — the bucket is *frozen* on the source: its fence row becomes
   ``frozen``, which waits for in-flight guarded writes and makes new ones
   wait (``ShardSet.execute`` / ``transaction``). Then each batch of the source
   is compared with the target and the differences (writes made during the
   copy) are applied, rows deleted meanwhile are deleted.
3. **verify** — row count and a SHA-256 checksum per table, source against
   target; a mismatch goes back to sync.
4. **flip** — the map table gets the bucket → target with ``version + 1``
   (compare-and-set, one transaction that also records the step).
5. **delete** — the source fence becomes ``moved`` (guarded writers reload the
   map and go to the target), then the bucket's rows are deleted from the
   source in batches.

Why a freeze rather than a change log: it needs no triggers (which need
extra privileges with binary logging on) and no second write path in the
application; the freeze lasts only for the sync and verification of one
bucket, and only writes to that bucket wait.

Resumable: the step is recorded in ``scalekit_bucket_moves`` on the control
database before and after each step, and every step can run again, so a
crash at any point followed by a rerun finishes the move; nothing is lost or
duplicated. ``abort_move`` rolls back a move that has not flipped yet. On
MariaDB a ``GET_LOCK`` keeps two movers off the same bucket.

Requirements: the tables exist on every shard with the same schema; primary
keys are unique across shards (rows keep them on the target); the shard-key
column of a row never changes. A row's bucket is computed in SQL —
``SHA2(CAST(col AS CHAR), 256)`` on MariaDB/MySQL, a registered function on
SQLite — exactly as ``BucketMap.bucket_for`` computes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import structlog

from .errors import DatabaseError
from .pool import Connection, Pool, Row
from .replicas import ReplicaSet
from .shards import (
    FENCE_TABLE,
    MAP_TABLE,
    BucketMap,
    ShardSet,
    _identifier,
    ensure_fence_table,
    hash_key,
)

__all__ = [
    "MOVES_TABLE",
    "MoveError",
    "MovePlan",
    "MoveProgress",
    "MoveResult",
    "ShardedTable",
    "abort_move",
    "move_bucket",
    "plan_move",
]

MOVES_TABLE = "scalekit_bucket_moves"
"""The control table that records each move's step."""

STEPS = ("copy", "sync", "verify", "flip", "delete", "done")
KILL_ENV = "SCALEKIT_MOVE_KILL_AT"
"""Test hook: the mover SIGKILLs itself at this point (copy, after_copy, sync,
verify, after_flip, delete) so tests can prove a rerun finishes the move."""

_logger = structlog.get_logger("scalekit.db.migrate")


class MoveError(DatabaseError):
    """A bucket move cannot go on: an unfinished move elsewhere, a map that changed, ..."""


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
        for identifier in (name, shard_key, *keys):
            _identifier(identifier)
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


@dataclasses.dataclass(frozen=True)
class MoveProgress:
    """Reported to ``progress`` as a move runs: a step, a table, rows done of total."""

    step: str
    table: str
    done: int
    total: int


@dataclasses.dataclass(frozen=True)
class MovePlan:
    """What ``move_bucket`` would do (``--dry-run``)."""

    bucket: int
    source: int
    target: int
    step: str
    rows: Mapping[str, int]
    map_version: int

    def summary(self) -> str:
        """A few lines for people."""
        if self.source == self.target and self.step == "done":
            return f"bucket {self.bucket} is already on shard {self.target}: nothing to do"
        verb = "resume" if self.step != "copy" else "start"
        lines = [
            f"bucket {self.bucket}: shard {self.source} -> shard {self.target} "
            f"(map version {self.map_version} -> {self.map_version + 1}); {verb} at step "
            f"{self.step!r}",
        ]
        lines += [f"  {table}: {count} rows" for table, count in self.rows.items()]
        lines.append("steps: " + " -> ".join(STEPS[STEPS.index(self.step) :]))
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class MoveResult:
    """A finished move: where the bucket went, the map version, rows per table.

    ``synced`` counts the rows the sync step fixed on the target in this run:
    writes that landed on the source during the copy.
    """

    bucket: int
    source: int
    target: int
    version: int
    rows: Mapping[str, int]
    resumed_from: str | None = None
    already: bool = False
    synced: int = 0


# -- SQL per shard -----------------------------------------------------------------


def _sqlite_bucket(value: Any, buckets: int) -> int:
    return hash_key(value) % buckets


class _Side:
    """A shard's primary pool and the dialect-specific SQL the move runs on it."""

    def __init__(self, pool: Pool, buckets: int, bucket: int) -> None:
        self.pool = pool
        self.buckets = buckets
        self.bucket = bucket
        self.mysql = pool.dialect == "mysql"

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        with self.pool.connection() as conn:
            if self.pool.dialect == "sqlite":
                conn.dbapi_connection.create_function(
                    "scalekit_bucket", 2, _sqlite_bucket, deterministic=True
                )
            yield conn

    def quote(self, name: str) -> str:
        return f"`{name}`" if self.mysql else f'"{name}"'

    def predicate(self, table: ShardedTable) -> tuple[str, list[Any]]:
        column = self.quote(table.shard_key)
        if self.mysql:
            expr = f"CAST(CONV(LEFT(SHA2(CAST({column} AS CHAR), 256), 16), 16, 10) AS UNSIGNED)"
            return f"{expr} %% %s = %s", [self.buckets, self.bucket]
        return f"scalekit_bucket({column}, %s) = %s", [self.buckets, self.bucket]

    def _pk(self, table: ShardedTable) -> str:
        return ", ".join(self.quote(column) for column in table.primary_key)

    def batch(
        self,
        conn: Connection,
        table: ShardedTable,
        after: tuple[Any, ...] | None,
        limit: int,
        upto: tuple[Any, ...] | None = None,
    ) -> list[Row]:
        """The bucket's rows with ``after < pk <= upto``, in key order, at most ``limit``."""
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
            f"SELECT * FROM {self.quote(table.name)} WHERE {where} "
            f"ORDER BY {self._pk(table)}{tail}",
            params,
        )

    def count(self, conn: Connection, table: ShardedTable) -> int:
        where, params = self.predicate(table)
        (row,) = conn.query(f"SELECT COUNT(*) AS n FROM {self.quote(table.name)} WHERE {where}",
                            params)  # fmt: skip
        return int(row["n"])

    def upsert(self, conn: Connection, table: ShardedTable, rows: Sequence[Row]) -> None:
        if not rows:
            return
        columns = list(rows[0])
        names = ", ".join(self.quote(column) for column in columns)
        values = ", ".join(["(" + ", ".join(["%s"] * len(columns)) + ")"] * len(rows))
        params = [row[column] for row in rows for column in columns]
        if self.mysql:
            others = [column for column in columns if column not in table.primary_key]
            updates = ", ".join(
                f"{self.quote(column)} = VALUES({self.quote(column)})"
                for column in (others or [table.primary_key[0]])
            )
            sql = (
                f"INSERT INTO {self.quote(table.name)} ({names}) VALUES {values} "
                f"ON DUPLICATE KEY UPDATE {updates}"
            )
        else:
            sql = f"INSERT OR REPLACE INTO {self.quote(table.name)} ({names}) VALUES {values}"
        conn.execute(sql, params)

    def delete(self, conn: Connection, table: ShardedTable, keys: Sequence[tuple[Any, ...]]) -> int:
        if not keys:
            return 0
        if len(table.primary_key) == 1:
            where = f"{self.quote(table.primary_key[0])} IN ({', '.join(['%s'] * len(keys))})"
            params = [key[0] for key in keys]
        else:
            one = " AND ".join(f"{self.quote(column)} = %s" for column in table.primary_key)
            where = " OR ".join([f"({one})"] * len(keys))
            params = [value for key in keys for value in key]
        return conn.execute(f"DELETE FROM {self.quote(table.name)} WHERE {where}", params).rowcount

    def set_fence(self, conn: Connection, state: str, fence_table: str) -> None:
        name = self.quote(fence_table)
        if self.mysql:
            conn.execute(
                f"INSERT INTO {name} (bucket, state) VALUES (%s, %s) "
                "ON DUPLICATE KEY UPDATE state = VALUES(state)",
                [self.bucket, state],
            )
        else:
            conn.execute(
                f"INSERT OR REPLACE INTO {name} (bucket, state) VALUES (%s, %s)",
                [self.bucket, state],
            )


def _key(row: Row, table: ShardedTable) -> tuple[Any, ...]:
    return tuple(row[column] for column in table.primary_key)


def _kill_point(name: str) -> None:
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


# -- the move ------------------------------------------------------------------------


def _pools(shards: ShardSet | Sequence[ReplicaSet | Pool]) -> list[Pool]:
    members = shards.shards if isinstance(shards, ShardSet) else shards
    return [member.primary if isinstance(member, ReplicaSet) else member for member in members]


def _control_pool(control: ReplicaSet | Pool) -> Pool:
    return control.primary if isinstance(control, ReplicaSet) else control


def _ensure_moves_table(control: Pool, table: str) -> None:
    control.execute(
        f"CREATE TABLE IF NOT EXISTS {_identifier(table)} (bucket INT NOT NULL PRIMARY KEY, "
        "source INT NOT NULL, target INT NOT NULL, step VARCHAR(16) NOT NULL, "
        "map_version BIGINT NOT NULL, updated BIGINT NOT NULL)"
    )


def _record(control: Pool, table: str, bucket: int) -> Row | None:
    rows = control.query(
        f"SELECT bucket, source, target, step, map_version FROM {table} WHERE bucket = %s",
        [bucket],
    )
    return rows[0] if rows else None


class _Move:
    def __init__(
        self,
        control: Pool,
        pools: list[Pool],
        bucket: int,
        target: int,
        tables: Sequence[ShardedTable],
        *,
        batch_size: int,
        map_table: str,
        moves_table: str,
        fence_table: str,
        progress: Callable[[MoveProgress], None] | None,
    ) -> None:
        if batch_size < 1:
            raise MoveError(f"batch_size={batch_size!r} must be at least 1")
        if not tables:
            raise MoveError("declare at least one table to move (ShardedTable or --table)")
        self.control = control
        self.pools = pools
        self.bucket = bucket
        self.target = target
        self.tables = list(tables)
        self.batch_size = batch_size
        self.map_table = _identifier(map_table)
        self.moves_table = _identifier(moves_table)
        self.fence_table = _identifier(fence_table)
        self.progress = progress
        self.map = BucketMap.load_db(control, map_table)
        if len(pools) != self.map.shard_count:
            raise MoveError(
                f"the map in {map_table} has {self.map.shard_count} shards but "
                f"{len(pools)} were given: pass every shard, in order"
            )
        if not 0 <= bucket < self.map.buckets:
            raise MoveError(f"bucket {bucket} is outside 0..{self.map.buckets - 1}")
        if not 0 <= target < len(pools):
            raise MoveError(f"target shard {target} is outside 0..{len(pools) - 1}")
        _ensure_moves_table(control, self.moves_table)
        record = _record(control, self.moves_table, bucket)
        self.resumed_from: str | None = None
        if record is not None and record["step"] != "done":
            if int(record["target"]) != target:
                raise MoveError(
                    f"bucket {bucket} has an unfinished move to shard {record['target']} "
                    f"(step {record['step']!r}): rerun it with --to {record['target']} first"
                )
            self.source = int(record["source"])
            self.step = str(record["step"])
            self.resumed_from = self.step
        else:
            self.source = self.map.shard_of_bucket(bucket)
            self.step = "done" if self.source == target else "copy"
        self.src = _Side(pools[self.source], self.map.buckets, bucket)
        self.dst = _Side(pools[target], self.map.buckets, bucket)

    def _report(self, step: str, table: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(MoveProgress(step, table, done, total))

    def counts(self) -> dict[str, int]:
        with self.src.connect() as conn:
            return {table.name: self.src.count(conn, table) for table in self.tables}

    def _set_step(self, step: str, conn: Connection | None = None) -> None:
        sql = f"UPDATE {self.moves_table} SET step = %s, updated = %s WHERE bucket = %s"
        params = [step, int(time.time()), self.bucket]
        if conn is not None:
            conn.execute(sql, params)
        else:
            self.control.execute(sql, params)
        _logger.info("bucket move step", bucket=self.bucket, step=step,
                     source=self.source, target=self.target)  # fmt: skip
        self.step = step

    def start(self) -> None:
        values = [self.bucket, self.source, self.target, "copy", self.map.version,
                  int(time.time())]  # fmt: skip
        verb = "REPLACE" if self.control.dialect == "mysql" else "INSERT OR REPLACE"
        self.control.execute(
            f"{verb} INTO {self.moves_table} (bucket, source, target, step, map_version, updated) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            values,
        )
        _logger.info("bucket move started", bucket=self.bucket, source=self.source,
                     target=self.target)  # fmt: skip

    # -- steps -------------------------------------------------------------------
    def copy(self) -> None:
        for pool in (self.src.pool, self.dst.pool):
            ensure_fence_table(pool, self.fence_table)
        with self.dst.connect() as conn:
            # A fence left by an earlier move away from the target must not
            # turn away the writers that follow the flip.
            conn.execute(f"DELETE FROM {self.fence_table} WHERE bucket = %s", [self.bucket])
        with self.src.connect() as conn:
            ignore = "INSERT IGNORE" if self.src.mysql else "INSERT OR IGNORE"
            conn.execute(f"{ignore} INTO {self.fence_table} (bucket, state) VALUES (%s, 'open')",
                         [self.bucket])  # fmt: skip
        totals = self.counts()
        batches = 0
        with self.src.connect() as source, self.dst.connect() as target:
            for table in self.tables:
                done, after = 0, None
                while rows := self.src.batch(source, table, after, self.batch_size):
                    self.dst.upsert(target, table, rows)
                    after = _key(rows[-1], table)
                    done += len(rows)
                    batches += 1
                    self._report("copy", table.name, done, max(done, totals[table.name]))
                    if batches == 2:
                        _kill_point("copy")
                self._report("copy", table.name, done, done)
        _kill_point("after_copy")
        self._set_step("sync")

    def sync(self) -> int:
        """Freeze the bucket on the source and make the target equal to it; returns fixes."""
        with self.src.connect() as conn:
            self.src.set_fence(conn, "frozen", self.fence_table)
        _kill_point("sync")
        totals = self.counts()
        fixed = 0
        with self.src.connect() as source, self.dst.connect() as target:
            for table in self.tables:
                done, after = 0, None
                while True:
                    rows = self.src.batch(source, table, after, self.batch_size)
                    upto = _key(rows[-1], table) if rows else None
                    theirs = {_key(row, table): row for row in
                              self.dst.batch(target, table, after, 0, upto)}  # fmt: skip
                    changed = [row for row in rows if theirs.get(_key(row, table)) != row]
                    ours = {_key(row, table) for row in rows}
                    gone = [key for key in theirs if key not in ours]
                    self.dst.upsert(target, table, changed)
                    for start in range(0, len(gone), self.batch_size):
                        self.dst.delete(target, table, gone[start : start + self.batch_size])
                    fixed += len(changed) + len(gone)
                    if not rows:
                        break
                    after = upto
                    done += len(rows)
                    self._report("sync", table.name, done, max(done, totals[table.name]))
        self._set_step("verify")
        return fixed

    def _digest(self, side: _Side, conn: Connection, table: ShardedTable) -> tuple[int, str]:
        digest = hashlib.sha256()
        count, after = 0, None
        while rows := side.batch(conn, table, after, self.batch_size):
            for row in rows:
                digest.update(repr(tuple(row[column] for column in sorted(row))).encode())
            count += len(rows)
            after = _key(rows[-1], table)
        return count, digest.hexdigest()

    def verify(self) -> dict[str, int]:
        """Counts and checksums per table; on a mismatch, back to ``sync``."""
        rows: dict[str, int] = {}
        with self.src.connect() as source, self.dst.connect() as target:
            for number, table in enumerate(self.tables):
                ours = self._digest(self.src, source, table)
                if number == 0:
                    _kill_point("verify")
                theirs = self._digest(self.dst, target, table)
                self._report("verify", table.name, ours[0], ours[0])
                if ours != theirs:
                    _logger.warning("bucket move verification mismatch", bucket=self.bucket,
                                    table=table.name, source=ours, target=theirs)  # fmt: skip
                    self._set_step("sync")
                    raise _Mismatch(table.name, ours, theirs)
                rows[table.name] = ours[0]
        self._set_step("flip")
        return rows

    def flip(self) -> int:
        """Compare-and-set the map to bucket → target, ``version + 1``; returns the version."""
        conn_pool = self.control
        lock = " FOR UPDATE" if conn_pool.dialect == "mysql" else ""
        with conn_pool.connection() as conn:
            conn.begin()
            try:
                found = {
                    int(row["bucket"]): row
                    for row in conn.query(
                        f"SELECT bucket, shard, version FROM {self.map_table} "
                        f"WHERE bucket IN (-1, %s){lock}",
                        [self.bucket],
                    )
                }
                version = int(found[-1]["version"])
                owner = int(found[self.bucket]["shard"])
                if owner == self.source:
                    version += 1
                    conn.execute(
                        f"UPDATE {self.map_table} SET shard = %s, version = %s WHERE bucket = %s",
                        [self.target, version, self.bucket],
                    )
                    conn.execute(f"UPDATE {self.map_table} SET version = %s WHERE bucket = -1",
                                 [version])  # fmt: skip
                elif owner != self.target:
                    raise MoveError(
                        f"the map gives bucket {self.bucket} to shard {owner}, neither the "
                        f"move's source {self.source} nor its target {self.target}: someone "
                        "changed the map during the move"
                    )
                self._set_step("delete", conn)
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
        self.version = version
        _kill_point("after_flip")
        return version

    def delete(self) -> None:
        with self.src.connect() as conn:
            self.src.set_fence(conn, "moved", self.fence_table)
        totals = self.counts()
        batches = 0
        with self.src.connect() as source:
            for table in self.tables:
                done = 0
                while rows := self.src.batch(source, table, None, self.batch_size):
                    done += self.src.delete(source, table, [_key(row, table) for row in rows])
                    batches += 1
                    self._report("delete", table.name, done, max(done, totals[table.name]))
                    if batches == 1:
                        _kill_point("delete")
                self._report("delete", table.name, done, max(done, totals[table.name]))
        self._set_step("done")


class _Mismatch(Exception):
    def __init__(self, table: str, ours: tuple[int, str], theirs: tuple[int, str]) -> None:
        super().__init__(f"{table}: source {ours} != target {theirs}")


@contextlib.contextmanager
def _mover_lock(control: Pool, bucket: int) -> Iterator[None]:
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


def move_bucket(
    shards: ShardSet | Sequence[ReplicaSet | Pool],
    bucket: int,
    to: int,
    *,
    tables: Sequence[ShardedTable],
    control: ReplicaSet | Pool,
    batch_size: int = 500,
    map_table: str = MAP_TABLE,
    moves_table: str = MOVES_TABLE,
    fence_table: str = FENCE_TABLE,
    progress: Callable[[MoveProgress], None] | None = None,
    max_syncs: int = 3,
) -> MoveResult:
    """Move one bucket's rows to shard ``to`` while the application keeps writing.

    Runs (or resumes) copy → sync (bucket frozen) → verify → flip → delete;
    see the module docstring. Rerun it after a crash: it finishes the move.

    Args:
        shards: every shard (a ``ShardSet`` or its ``ReplicaSet``s/``Pool``s), in order.
        bucket: the bucket to move.
        to: the target shard index.
        tables: the tables whose rows follow the bucket.
        control: where the ``BucketMap`` (``map_table``) and the move records
            (``moves_table``) live.
        batch_size: rows per copy, compare and delete batch.
        progress: called with a ``MoveProgress`` after each batch.
        max_syncs: sync + verify rounds before giving up on a mismatch.

    Raises:
        MoveError: bad arguments, another unfinished move of the bucket to a
            different shard, another mover at work, the map changed under the
            move, or verification kept failing (the bucket stays frozen; rerun).
    """
    pools = _pools(shards)
    control_pool = _control_pool(control)
    with _mover_lock(control_pool, bucket):
        move = _Move(control_pool, pools, bucket, to, tables, batch_size=batch_size,
                     map_table=map_table, moves_table=moves_table, fence_table=fence_table,
                     progress=progress)  # fmt: skip
        if move.step == "done":
            return MoveResult(bucket, move.source, to, move.map.version, {}, already=True)
        if move.resumed_from is None:
            move.start()
        else:
            _logger.info("bucket move resumed", bucket=bucket, step=move.step)
        rows: dict[str, int] = {}
        version = move.map.version
        syncs = synced = 0
        while move.step != "done":
            if move.step == "copy":
                move.copy()
            elif move.step == "sync":
                syncs += 1
                if syncs > max_syncs:
                    raise MoveError(
                        f"bucket {bucket}: source and target still differ after {max_syncs} "
                        "syncs; are writes bypassing ShardSet.execute/transaction? The bucket "
                        "stays frozen on the source; rerun the move when writes are guarded"
                    )
                synced += move.sync()
            elif move.step == "verify":
                with contextlib.suppress(_Mismatch):
                    rows = move.verify()
            elif move.step == "flip":
                version = move.flip()
            elif move.step == "delete":
                move.delete()
            else:
                raise MoveError(f"unknown move step {move.step!r} in {moves_table}")
        if not rows:
            rows = {table.name: 0 for table in tables}
            with move.dst.connect() as conn:
                rows = {table.name: move.dst.count(conn, table) for table in tables}
        if version == move.map.version:
            version = BucketMap.load_db(control_pool, map_table).version
        _logger.info("bucket move done", bucket=bucket, source=move.source, target=to,
                     version=version)  # fmt: skip
        return MoveResult(bucket, move.source, to, version, rows, resumed_from=move.resumed_from,
                          synced=synced)  # fmt: skip


def abort_move(
    shards: ShardSet | Sequence[ReplicaSet | Pool],
    bucket: int,
    *,
    tables: Sequence[ShardedTable],
    control: ReplicaSet | Pool,
    batch_size: int = 500,
    map_table: str = MAP_TABLE,
    moves_table: str = MOVES_TABLE,
    fence_table: str = FENCE_TABLE,
) -> int:
    """Roll back an unfinished move that has not flipped: the bucket stays on its source.

    Deletes the rows already copied to the target, unfreezes the bucket on the
    source and forgets the move. Safe to run again after a crash. Returns the
    number of target rows deleted.

    Raises:
        MoveError: no unfinished move of this bucket, or it has already
            flipped the map (then only finishing it is safe: rerun the move).
    """
    control_pool = _control_pool(control)
    pools = _pools(shards)
    _ensure_moves_table(control_pool, _identifier(moves_table))
    with _mover_lock(control_pool, bucket):
        record = _record(control_pool, _identifier(moves_table), bucket)
        if record is None or record["step"] == "done":
            raise MoveError(f"bucket {bucket} has no unfinished move to roll back")
        if record["step"] not in ("copy", "sync", "verify", "flip"):
            raise MoveError(
                f"the move of bucket {bucket} has flipped the map (step {record['step']!r}): "
                "rolling back could lose writes made on the target; rerun the move to finish it"
            )
        target = int(record["target"])
        move = _Move(control_pool, pools, bucket, target, tables, batch_size=batch_size,
                     map_table=map_table, moves_table=moves_table, fence_table=fence_table,
                     progress=None)  # fmt: skip
        if move.map.shard_of_bucket(bucket) != move.source:
            raise MoveError(
                f"the map already gives bucket {bucket} to shard "
                f"{move.map.shard_of_bucket(bucket)}: rerun the move to finish it"
            )
        deleted = 0
        with move.dst.connect() as conn:
            for table in move.tables:
                while rows := move.dst.batch(conn, table, None, batch_size):
                    deleted += move.dst.delete(conn, table, [_key(row, table) for row in rows])
        with move.src.connect() as conn:
            conn.execute(f"DELETE FROM {move.fence_table} WHERE bucket = %s", [bucket])
        control_pool.execute(f"DELETE FROM {move.moves_table} WHERE bucket = %s", [bucket])
        _logger.info("bucket move rolled back", bucket=bucket, source=move.source,
                     target=target, deleted=deleted)  # fmt: skip
        return deleted


def plan_move(
    shards: ShardSet | Sequence[ReplicaSet | Pool],
    bucket: int,
    to: int,
    *,
    tables: Sequence[ShardedTable],
    control: ReplicaSet | Pool,
    map_table: str = MAP_TABLE,
    moves_table: str = MOVES_TABLE,
) -> MovePlan:
    """What ``move_bucket`` would do, changing nothing but creating its tables (``--dry-run``)."""
    move = _Move(_control_pool(control), _pools(shards), bucket, to, tables, batch_size=1,
                 map_table=map_table, moves_table=moves_table, fence_table=FENCE_TABLE,
                 progress=None)  # fmt: skip
    rows = move.counts() if move.step in ("copy", "sync", "verify", "flip") else {}
    return MovePlan(bucket, move.source, to, move.step, rows, move.map.version)
