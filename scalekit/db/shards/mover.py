"""Online bucket moves for a ``BucketMap``: copy, freeze and sync, verify, flip, delete.

``move_bucket`` moves every row of one bucket of the declared tables from its
shard to another, while the application keeps writing:

1. **copy** — the bucket is fenced ``frozen`` on the target (an instance with
   a map from before an earlier move could otherwise write there unguarded),
   then its rows, in primary-key batches, are upserted into the target
   (idempotent: a rerun copies again without duplicating).
2. **sync** — the bucket is *frozen* on the source: its fence row becomes
   ``frozen``, which waits for in-flight guarded writes and makes new ones
   wait (``ShardSet.execute`` / ``transaction``). Then each batch of the source
   is compared with the target and the differences (writes made during the
   copy) are applied, rows deleted meanwhile are deleted.
3. **verify** — row count and a SHA-256 checksum per table, source against
   target; a mismatch goes back to sync.
4. **flip** — the map table gets the bucket → target with ``version + 1``
   (compare-and-set, one transaction that also records the step).
5. **open** — after waiting the instances' ``refresh_interval`` (every
   instance now routes by the new map), the source fence becomes ``moved``
   and the target's ``open``: writes flow again, on the target.
6. **delete** — after waiting ``refresh_interval`` again (for reads routed by
   the old map just before), the bucket's rows are deleted from the source
   in batches.

Why a freeze rather than a change log: it needs no triggers (which need
extra privileges with binary logging on) and no second write path in the
application; the freeze lasts only for the sync and verification of one
bucket, and only writes to that bucket wait.

Resumable: the step is recorded in ``scalekit_bucket_moves`` on the control
database before and after each step, and every step can run again, so a
crash at any point followed by a rerun finishes the move; nothing is lost or
duplicated. ``abort_move`` rolls back a move that has not flipped yet. A
lock (``GET_LOCK`` on MariaDB, a file lock on SQLite) keeps two movers off
the same bucket, and a mover that loses it stops (see :mod:`.lock`).

Requirements: the tables exist on every shard with the same schema; primary
keys are unique across shards (rows keep them on the target); the shard-key
column of a row never changes. A row's bucket is computed in SQL by the
shard's dialect exactly as ``BucketMap.bucket_for`` computes it.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence

import structlog

from ..._replica_status import STATUS_STATEMENTS, parse_replica_status
from ..errors import ConfigError, DatabaseError, MoveError
from ..pool import Connection, Pool, Row
from ..replicas import ReplicaSet
from . import fence
from .dialect import dialect_of, identifier, primary_pool
from .fence import FENCE_TABLE, FenceState
from .freshness import DEFAULT_REFRESH_INTERVAL
from .lock import MoverLock, mover_lock
from .map_store import MAP_TABLE, MapStore
from .rows import BucketRows, ShardedTable
from .shard_set import ShardSet

__all__ = [
    "MOVES_TABLE",
    "Checkpoint",
    "MovePlan",
    "MoveProgress",
    "MoveResult",
    "Step",
    "abort_move",
    "move_bucket",
    "plan_move",
]

MOVES_TABLE = "scalekit_bucket_moves"
"""The control table that records each move's step."""

_logger = structlog.get_logger("scalekit.db.shards.mover")


class Step(enum.StrEnum):
    """A move's steps, in order; the one recorded is where a rerun resumes."""

    COPY = "copy"
    SYNC = "sync"
    VERIFY = "verify"
    FLIP = "flip"
    OPEN = "open"
    DELETE = "delete"
    DONE = "done"


_UNFLIPPED = frozenset({Step.COPY, Step.SYNC, Step.VERIFY, Step.FLIP})

DEFAULT_REPLICA_TIMEOUT = 30.0
"""Seconds the mover waits, before the flip, for the target's replicas to have the copied rows."""

MAP_WAIT_MARGIN = 0.1
"""Seconds the mover waits beyond ``refresh_interval``: for clocks that run at slightly
different rates, and a poll's own round trip."""

Checkpoint = Callable[[Step, int], None]
"""Called with ``(step, 0)`` as a step starts and ``(step, n)`` after its n-th batch.

For progress beyond ``MoveProgress`` and for tests that stop a mover at a
chosen point (raise, or kill the process) to prove a rerun finishes the move.
"""


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
    step: Step
    rows: Mapping[str, int]
    map_version: int

    def summary(self) -> str:
        """A few lines for people."""
        if self.source == self.target and self.step is Step.DONE:
            return f"bucket {self.bucket} is already on shard {self.target}: nothing to do"
        verb = "resume" if self.step is not Step.COPY else "start"
        lines = [
            f"bucket {self.bucket}: shard {self.source} -> shard {self.target} "
            f"(map version {self.map_version} -> {self.map_version + 1}); {verb} at step "
            f"{self.step.value!r}",
        ]
        lines += [f"  {table}: {count} rows" for table, count in self.rows.items()]
        steps = list(Step)
        lines.append("steps: " + " -> ".join(steps[steps.index(self.step) :]))
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


class _Records:
    """The control table of moves: one row per bucket with its source, target and step."""

    def __init__(self, control: Pool, table: str) -> None:
        self.control = control
        self.table = identifier(table)
        # The tables each move declared: a rerun must move the same ones.
        self.declared = identifier(f"{table}_tables")
        self.control.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} (bucket INT NOT NULL PRIMARY KEY, "
            "source INT NOT NULL, target INT NOT NULL, step VARCHAR(16) NOT NULL, "
            "map_version BIGINT NOT NULL, updated BIGINT NOT NULL)"
        )
        self.control.execute(
            f"CREATE TABLE IF NOT EXISTS {self.declared} (bucket INT NOT NULL PRIMARY KEY, "
            "tables TEXT NOT NULL)"
        )

    def tables(self, bucket: int) -> str | None:
        """The tables the unfinished move of ``bucket`` declared (None: not recorded)."""
        rows = self.control.query(f"SELECT tables FROM {self.declared} WHERE bucket = %s", [bucket])
        return str(rows[0]["tables"]) if rows else None

    def get(self, bucket: int) -> Row | None:
        rows = self.control.query(
            f"SELECT bucket, source, target, step, map_version FROM {self.table} WHERE bucket = %s",
            [bucket],
        )
        if not rows:
            return None
        row = rows[0]
        try:
            row["step"] = Step(row["step"])
        except ValueError:
            raise MoveError(
                f"unknown move step {row['step']!r} for bucket {bucket} in {self.table}"
            ) from None
        return row

    def start(self, bucket: int, source: int, target: int, map_version: int, tables: str) -> None:
        dialect = dialect_of(self.control)
        self.control.execute(
            dialect.upsert(self.declared, ["bucket", "tables"], ["bucket"], 1), [bucket, tables]
        )
        columns = ["bucket", "source", "target", "step", "map_version", "updated"]
        self.control.execute(
            dialect.upsert(self.table, columns, ["bucket"], 1),
            [bucket, source, target, Step.COPY.value, map_version, int(time.time())],
        )

    def set_step(self, bucket: int, step: Step, conn: Connection | None = None) -> None:
        sql = f"UPDATE {self.table} SET step = %s, updated = %s WHERE bucket = %s"
        params = [step.value, int(time.time()), bucket]
        if conn is not None:
            conn.execute(sql, params)
        else:
            self.control.execute(sql, params)

    def forget(self, bucket: int) -> None:
        self.control.execute(f"DELETE FROM {self.table} WHERE bucket = %s", [bucket])
        self.control.execute(f"DELETE FROM {self.declared} WHERE bucket = %s", [bucket])


class _Mismatch(Exception):
    def __init__(self, table: str, ours: tuple[int, str], theirs: tuple[int, str]) -> None:
        super().__init__(f"{table}: source {ours} != target {theirs}")


class _Move:
    """One bucket's move: the recorded step and a handler per step."""

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
        progress: Callable[[MoveProgress], None] | None = None,
        checkpoint: Checkpoint | None = None,
        lock: MoverLock | None = None,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        sleep: Callable[[float], None] = time.sleep,
        replicas: Sequence[Sequence[Pool]] = (),
        replica_timeout: float = DEFAULT_REPLICA_TIMEOUT,
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
        self.store = MapStore(control, map_table)
        self.fence_table = identifier(fence_table)
        self.progress = progress
        self.checkpoint = checkpoint
        self.lock = lock
        if not 0 <= refresh_interval < math.inf:  # NaN too: sleep(nan) fails after the flip
            raise MoveError(
                f"refresh_interval={refresh_interval!r} must be a finite number of seconds, "
                "at least 0"
            )
        self.map_wait = refresh_interval + MAP_WAIT_MARGIN if refresh_interval else 0.0
        self.sleep = sleep
        if not 0 <= replica_timeout < math.inf:
            raise MoveError(
                f"replica_timeout={replica_timeout!r} must be finite seconds, at least 0"
            )
        self.replica_timeout = replica_timeout
        self.dst_replicas = tuple(replicas[target]) if 0 <= target < len(replicas) else ()
        self.map = self.store.load()
        if len(pools) != self.map.shard_count:
            raise MoveError(
                f"the map in {map_table} has {self.map.shard_count} shards but "
                f"{len(pools)} were given: pass every shard, in order"
            )
        if not 0 <= bucket < self.map.buckets:
            raise MoveError(f"bucket {bucket} is outside 0..{self.map.buckets - 1}")
        if not 0 <= target < len(pools):
            raise MoveError(f"target shard {target} is outside 0..{len(pools) - 1}")
        self.records = _Records(control, moves_table)
        record = self.records.get(bucket)
        self.resumed_from: Step | None = None
        if record is not None and record["step"] is not Step.DONE:
            if int(record["target"]) != target:
                raise MoveError(
                    f"bucket {bucket} has an unfinished move to shard {record['target']} "
                    f"(step {record['step'].value!r}): rerun it with --to {record['target']} "
                    "first"
                )
            declared = self.records.tables(bucket)
            if declared is not None and declared != _spec(self.tables):
                raise MoveError(
                    f"the unfinished move of bucket {bucket} moves the tables "
                    f"{declared.replace(';', ', ')}: rerun it (or roll it back) with the same "
                    f"--table declarations, not {_spec(self.tables).replace(';', ', ')}; a table "
                    "left out would stay behind on the source"
                )
            self.source = int(record["source"])
            self.step: Step = record["step"]
            self.resumed_from = self.step
        else:
            self.source = self.map.shard_of_bucket(bucket)
            self.step = Step.DONE if self.source == target else Step.COPY
        self.src = BucketRows(pools[self.source], self.map.buckets, bucket, self.tables)
        self.dst = BucketRows(pools[target], self.map.buckets, bucket, self.tables)
        self.version = self.map.version
        self.rows: dict[str, int] = {}
        self.synced = 0

    # -- bookkeeping --------------------------------------------------------------
    def _report(self, step: Step, table: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(MoveProgress(step.value, table, done, total))

    def _checkpoint(self, step: Step, batch: int) -> None:
        if self.lock is not None:
            self.lock.check()
        if self.checkpoint is not None:
            self.checkpoint(step, batch)

    def counts(self) -> dict[str, int]:
        """The bucket's rows per table on the source."""
        return self._counts(self.src)

    def _counts(self, side: BucketRows) -> dict[str, int]:
        with side.connect() as conn:
            return {table.name: side.count(conn, table) for table in self.tables}

    def _set_step(self, step: Step, conn: Connection | None = None) -> None:
        self.records.set_step(self.bucket, step, conn)
        _logger.info("bucket move step", bucket=self.bucket, step=step.value,
                     source=self.source, target=self.target)  # fmt: skip
        self.step = step

    def check_shards(self) -> None:
        """The source and target are the databases the map knows by those indexes.

        Shards given in another order, or one database under two URLs, would
        copy nothing and then delete the bucket's rows as gone. Each shard's
        fence table records its index (see :func:`.fence.check_shard`); a
        shard that records none yet is recorded unless the source holds none
        of the bucket's rows and the target does (the shards look swapped).

        Raises:
            MoveError: a database is recorded as another shard, or looks swapped,
                or a table's declared primary key is not a key of the table.
        """
        indexes = list(dict.fromkeys((self.source, self.target)))
        for index in indexes:
            fence.ensure_fence_table(self.pools[index], self.fence_table)
        recorded = {index: fence.recorded_shard(self.pools[index], self.fence_table)
                    for index in indexes}  # fmt: skip
        if None in recorded.values() and self.step is Step.COPY and self.source != self.target:
            source, target = self.counts(), self._counts(self.dst)
            if not any(source.values()) and any(target.values()):
                raise MoveError(
                    f"bucket {self.bucket} has no rows on shard {self.source}, which the map "
                    f"gives it to, but {sum(target.values())} on shard {self.target}: are the "
                    "shards given in the map's order, each database once?"
                )
        for index in indexes:
            try:
                fence.check_shard(self.pools[index], index, self.fence_table)
            except ConfigError as exc:
                raise MoveError(str(exc)) from None
        for side in (self.src, self.dst):
            with side.connect() as conn:
                for table in self.tables:
                    side.check_key(conn, table)

    def start(self) -> None:
        """Record a new move at its first step."""
        self.records.start(self.bucket, self.source, self.target, self.map.version,
                           _spec(self.tables))  # fmt: skip
        _logger.info("bucket move started", bucket=self.bucket, source=self.source,
                     target=self.target)  # fmt: skip

    def run(self, max_syncs: int) -> None:
        """Run the recorded step and the ones after it until the move is done."""
        handlers: dict[Step, Callable[[], Step]] = {
            Step.COPY: self.copy,
            Step.SYNC: self.sync,
            Step.VERIFY: self.verify,
            Step.FLIP: self.flip,
            Step.OPEN: self.open,
            Step.DELETE: self.delete,
        }
        syncs = 0
        while self.step is not Step.DONE:
            if self.step is Step.SYNC:
                syncs += 1
                if syncs > max_syncs:
                    raise MoveError(
                        f"bucket {self.bucket}: source and target still differ after "
                        f"{max_syncs} syncs; are writes bypassing ShardSet.execute/transaction? "
                        "The bucket stays frozen on the source; rerun the move when writes "
                        "are guarded"
                    )
            self._checkpoint(self.step, 0)
            following = handlers[self.step]()
            if following is not self.step:
                self._set_step(following)

    # -- steps -----------------------------------------------------------------
    def copy(self) -> Step:
        """Fence the target, then upsert the bucket's rows into it, batch by batch."""
        for pool in (self.src.pool, self.dst.pool):
            fence.ensure_fence_table(pool, self.fence_table)
        with self.dst.connect() as conn:
            # Until the flip, no guarded write may land here: one routed by a
            # map from before an earlier move away from this shard would be
            # taken by sync for a row deleted on the source, and deleted.
            fence.set_state(conn, self.dst.dialect, self.bucket, FenceState.FROZEN,
                            self.fence_table)  # fmt: skip
        with self.src.connect() as conn:
            fence.open_if_missing(conn, self.src.dialect, self.bucket, self.fence_table)
        totals = self.counts()
        batches = 0
        with self.src.connect() as source, self.dst.connect() as target:
            for table in self.tables:
                done = 0
                for rows in self.src.batches(source, table, self.batch_size):
                    self.dst.upsert(target, table, rows)
                    done += len(rows)
                    batches += 1
                    self._report(Step.COPY, table.name, done, max(done, totals[table.name]))
                    self._checkpoint(Step.COPY, batches)
                self._report(Step.COPY, table.name, done, done)
        return Step.SYNC

    def sync(self) -> Step:
        """Freeze the bucket on the source and make the target equal to it."""
        with self.src.connect() as conn:
            fence.set_state(conn, self.src.dialect, self.bucket, FenceState.FROZEN,
                            self.fence_table)  # fmt: skip
        totals = self.counts()
        batches = 0
        with self.src.connect() as source, self.dst.connect() as target:
            for table in self.tables:
                done, after = 0, None
                while True:
                    rows = self.src.batch(source, table, after, self.batch_size)
                    upto = table.key(rows[-1]) if rows else None
                    theirs = {table.key(row): row for row in
                              self.dst.batch(target, table, after, 0, upto)}  # fmt: skip
                    changed = [row for row in rows if theirs.get(table.key(row)) != row]
                    ours = {table.key(row) for row in rows}
                    gone = [key for key in theirs if key not in ours]
                    self.dst.upsert(target, table, changed)
                    for start in range(0, len(gone), self.batch_size):
                        self.dst.delete(target, table, gone[start : start + self.batch_size])
                    self.synced += len(changed) + len(gone)
                    if not rows:
                        break
                    after = upto
                    done += len(rows)
                    batches += 1
                    self._report(Step.SYNC, table.name, done, max(done, totals[table.name]))
                    self._checkpoint(Step.SYNC, batches)
        return Step.VERIFY

    def _digest(self, side: BucketRows, conn: Connection, table: ShardedTable) -> tuple[int, str]:
        digest = hashlib.sha256()
        count = 0
        for rows in side.batches(conn, table, self.batch_size):
            for row in rows:
                digest.update(repr(tuple(row[column] for column in sorted(row))).encode())
            count += len(rows)
        return count, digest.hexdigest()

    def verify(self) -> Step:
        """Counts and checksums per table; on a mismatch, back to ``sync``."""
        rows: dict[str, int] = {}
        digests = 0
        with self.src.connect() as source, self.dst.connect() as target:
            for table in self.tables:
                ours = self._digest(self.src, source, table)
                digests += 1
                self._checkpoint(Step.VERIFY, digests)
                theirs = self._digest(self.dst, target, table)
                digests += 1
                self._report(Step.VERIFY, table.name, ours[0], ours[0])
                if ours != theirs:
                    _logger.warning("bucket move verification mismatch", bucket=self.bucket,
                                    table=table.name, source=ours, target=theirs)  # fmt: skip
                    return Step.SYNC
                rows[table.name] = ours[0]
        self.rows = rows
        return Step.FLIP

    def _wait_for_replicas(self) -> None:
        """Wait until the target's replicas have applied every copied row.

        From the flip on, reads of the bucket go to the target, and to its
        replicas: one behind by less than its ``max_lag`` would otherwise answer
        with the bucket's old rows missing. A replica whose SQL thread is
        stopped serves no reads (``ReplicaSet`` skips it) and is not waited for.

        Raises:
            MoveError: a replica has not caught up within ``replica_timeout``
                (the bucket stays frozen; rerun the move, or roll it back).
        """
        if not self.dst_replicas:
            return
        with self.dst.connect() as conn:
            position = self.dst.dialect.replication_position(conn)
        if position is None:
            return
        for pool in self.dst_replicas:
            # One-second waits on the server, so the lock is checked between them.
            for _ in range(max(1, math.ceil(self.replica_timeout))):
                with pool.connection() as conn:
                    if self.dst.dialect.wait_for_position(conn, position, 1.0):
                        break
                    stopped = not _sql_running(conn)
                if stopped:
                    _logger.warning("bucket move: replica not replicating, not waited for",
                                    bucket=self.bucket, replica=pool.name)  # fmt: skip
                    break
                if self.lock is not None:
                    self.lock.check()
            else:
                raise MoveError(
                    f"replica {pool.name!r} of shard {self.target} has not applied the rows "
                    f"copied to its primary within {self.replica_timeout:g}s; reads of bucket "
                    f"{self.bucket} would go there after the flip and miss them. The bucket stays "
                    "frozen: rerun the move when the replica has caught up, or roll it back"
                )

    def flip(self) -> Step:
        """Compare-and-set the map to bucket → target, ``version + 1``, recording the step."""
        self._wait_for_replicas()
        lock = dialect_of(self.control).update_lock
        table = self.store.table
        with self.control.connection() as conn:
            conn.begin()
            try:
                found = {
                    int(row["bucket"]): row
                    for row in conn.query(
                        f"SELECT bucket, shard, version FROM {table} "
                        f"WHERE bucket IN (-1, %s){lock}",
                        [self.bucket],
                    )
                }
                version = int(found[-1]["version"])
                owner = int(found[self.bucket]["shard"])
                if owner == self.source:
                    version += 1
                    conn.execute(
                        f"UPDATE {table} SET shard = %s, version = %s WHERE bucket = %s",
                        [self.target, version, self.bucket],
                    )
                    conn.execute(f"UPDATE {table} SET version = %s WHERE bucket = -1", [version])
                elif owner != self.target:
                    raise MoveError(
                        f"the map gives bucket {self.bucket} to shard {owner}, neither the "
                        f"move's source {self.source} nor its target {self.target}: someone "
                        "changed the map during the move"
                    )
                # The next step is recorded with the flip: a crash before a separate
                # write would resume past ``open`` and leave the bucket frozen for good.
                self._set_step(Step.OPEN, conn)
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
        self.version = version
        return Step.OPEN

    def _wait_for_instances(self) -> None:
        """Wait until every instance has polled the map since the flip (see .freshness)."""
        if self.map_wait:
            self.sleep(self.map_wait)

    def open(self) -> Step:
        """After every instance has the new map: source ``moved``, target ``open``."""
        self._wait_for_instances()
        with self.src.connect() as conn:
            fence.set_state(conn, self.src.dialect, self.bucket, FenceState.MOVED,
                            self.fence_table)  # fmt: skip
        with self.dst.connect() as conn:
            fence.set_state(conn, self.dst.dialect, self.bucket, FenceState.OPEN,
                            self.fence_table)  # fmt: skip
        return Step.DELETE

    def delete(self) -> Step:
        """After reads routed by the old map are done, delete the bucket's rows on the source."""
        self._wait_for_instances()
        batches = 0
        with self.src.connect() as source:
            for table in self.tables:
                # The total is known when verify ran in this run; counting again
                # would hash every row of the table once more.
                total = self.rows.get(table.name, 0)
                done = 0
                for rows in self.src.batches(source, table, self.batch_size):
                    done += self.src.delete(source, table, [table.key(row) for row in rows])
                    batches += 1
                    self._report(Step.DELETE, table.name, done, max(done, total))
                    self._checkpoint(Step.DELETE, batches)
                self._report(Step.DELETE, table.name, done, max(done, total))
        return Step.DONE


def _spec(tables: Sequence[ShardedTable]) -> str:
    """The declared tables as the command line writes them, sorted: ``a:k:id;b:k:id``."""
    return ";".join(sorted(f"{t.name}:{t.shard_key}:{','.join(t.primary_key)}" for t in tables))


def _pools(shards: ShardSet | Sequence[ReplicaSet | Pool]) -> list[Pool]:
    members = shards.shards if isinstance(shards, ShardSet) else shards
    return [primary_pool(member) for member in members]


def _replicas(shards: ShardSet | Sequence[ReplicaSet | Pool]) -> list[tuple[Pool, ...]]:
    members = shards.shards if isinstance(shards, ShardSet) else shards
    return [member.replicas if isinstance(member, ReplicaSet) else () for member in members]


def _sql_running(conn: Connection) -> bool:
    """Whether the replica's SQL thread runs (True where the status cannot be read)."""
    for statement in STATUS_STATEMENTS:
        try:
            return parse_replica_status(conn.query(statement)).sql_running
        except DatabaseError:
            raise
        except Exception:  # the driver's syntax error: an older spelling
            continue
    return True


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
    checkpoint: Checkpoint | None = None,
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
    sleep: Callable[[float], None] = time.sleep,
    replica_timeout: float = DEFAULT_REPLICA_TIMEOUT,
) -> MoveResult:
    """Move one bucket's rows to shard ``to`` while the application keeps writing.

    Runs (or resumes) copy → sync (bucket frozen) → verify → flip → open →
    delete; see the module docstring. Rerun it after a crash: it finishes the move.

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
        checkpoint: called at each step's start and after each batch (see
            :data:`Checkpoint`).
        refresh_interval: the largest ``refresh_interval`` of the instances'
            ``ShardSet``s; the mover waits that long (plus ``MAP_WAIT_MARGIN``)
            after the flip before opening the target, and again before deleting.
            0 waits not at all: only when no instance reads the bucket.
        sleep: how the mover waits (``time.sleep``; tests pass their own).
        replica_timeout: before the flip, seconds to wait for the target's
            replicas (those of a ``ReplicaSet`` in ``shards``) to apply the
            copied rows; reads of the bucket go there from the flip on.

    Raises:
        MoveError: bad arguments, another unfinished move of the bucket to a
            different shard, another mover at work, the map changed under the
            move, verification kept failing (the bucket stays frozen; rerun), or
            the mover lost its lock (rerun).
    """
    pools = _pools(shards)
    control_pool = primary_pool(control)
    with mover_lock(control_pool, bucket) as lock:
        move = _Move(control_pool, pools, bucket, to, tables, batch_size=batch_size,
                     map_table=map_table, moves_table=moves_table, fence_table=fence_table,
                     progress=progress, checkpoint=checkpoint, lock=lock,
                     refresh_interval=refresh_interval, sleep=sleep,
                     replicas=_replicas(shards), replica_timeout=replica_timeout)  # fmt: skip
        if move.step is Step.DONE:
            return MoveResult(bucket, move.source, to, move.map.version, {}, already=True)
        move.check_shards()
        if move.resumed_from is None:
            move.start()
        else:
            _logger.info("bucket move resumed", bucket=bucket, step=move.step.value)
        move.run(max_syncs)
        rows = move.rows
        if not rows:
            with move.dst.connect() as conn:
                rows = {table.name: move.dst.count(conn, table) for table in move.tables}
        version = move.version
        if version == move.map.version:
            version = move.store.load().version
        _logger.info("bucket move done", bucket=bucket, source=move.source, target=to,
                     version=version)  # fmt: skip
        resumed = move.resumed_from.value if move.resumed_from else None
        return MoveResult(bucket, move.source, to, version, rows, resumed_from=resumed,
                          synced=move.synced)  # fmt: skip


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

    Deletes the rows already copied to the target (which stays fenced:
    ``moved``, so a writer with an old map reloads), unfreezes the bucket on
    the source and forgets the move. Safe to run again after a crash. Returns
    the number of target rows deleted.

    Raises:
        MoveError: no unfinished move of this bucket, or it has already
            flipped the map (then only finishing it is safe: rerun the move).
    """
    control_pool = primary_pool(control)
    pools = _pools(shards)
    records = _Records(control_pool, moves_table)
    with mover_lock(control_pool, bucket) as lock:
        record = records.get(bucket)
        if record is None or record["step"] is Step.DONE:
            raise MoveError(f"bucket {bucket} has no unfinished move to roll back")
        if record["step"] not in _UNFLIPPED:
            raise MoveError(
                f"the move of bucket {bucket} has flipped the map (step "
                f"{record['step'].value!r}): rolling back could lose writes made on the target; "
                "rerun the move to finish it"
            )
        target = int(record["target"])
        move = _Move(control_pool, pools, bucket, target, tables, batch_size=batch_size,
                     map_table=map_table, moves_table=moves_table, fence_table=fence_table,
                     lock=lock)  # fmt: skip
        if move.map.shard_of_bucket(bucket) != move.source:
            raise MoveError(
                f"the map already gives bucket {bucket} to shard "
                f"{move.map.shard_of_bucket(bucket)}: rerun the move to finish it"
            )
        move.check_shards()
        deleted = 0
        with move.dst.connect() as conn:
            fence.ensure_fence_table(move.dst.pool, move.fence_table)
            # The bucket does not live here: a writer with an old map reloads.
            fence.set_state(conn, move.dst.dialect, bucket, FenceState.MOVED, move.fence_table)
            for table in move.tables:
                for rows in move.dst.batches(conn, table, batch_size):
                    deleted += move.dst.delete(conn, table, [table.key(row) for row in rows])
                    lock.check()
        with move.src.connect() as conn:
            fence.set_state(conn, move.src.dialect, bucket, FenceState.OPEN, move.fence_table)
        records.forget(bucket)
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
    move = _Move(primary_pool(control), _pools(shards), bucket, to, tables, batch_size=1,
                 map_table=map_table, moves_table=moves_table,
                 fence_table=FENCE_TABLE)  # fmt: skip
    rows = move.counts() if move.step in _UNFLIPPED else {}
    return MovePlan(bucket, move.source, to, move.step, rows, move.map.version)
