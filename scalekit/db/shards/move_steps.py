"""A bucket move's step machine: ``Move`` runs copy → sync → verify → flip → open → delete.

``Move`` holds one bucket's move: it checks the arguments and the shards,
reads and records the step (through :class:`.move_records.Records`) and has a
handler per step; the waits around the flip (the target's replicas before it,
every instance's map poll after it) are its own. The entry points that build
and run it are in :mod:`.mover`.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence

import structlog

from ..._replica_status import STATUS_STATEMENTS, parse_replica_status
from ..errors import ConfigError, DatabaseError, MoveError
from ..pool import Connection, Pool
from . import fence
from .dialect import dialect_of, identifier
from .fence import FenceState
from .freshness import DEFAULT_REFRESH_INTERVAL
from .lock import MoverLock
from .map_store import MapStore
from .move_records import Checkpoint, MoveProgress, Records, Step, spec
from .rows import BucketRows, ShardedTable

__all__ = ["DEFAULT_REPLICA_TIMEOUT", "MAP_WAIT_MARGIN", "Move"]

_logger = structlog.get_logger("scalekit.db.shards.mover")

DEFAULT_REPLICA_TIMEOUT = 30.0
"""Seconds the mover waits, before the flip, for the target's replicas to have the copied rows."""

MAP_WAIT_MARGIN = 0.1
"""Seconds the mover waits beyond ``refresh_interval``: for clocks that run at slightly
different rates, and a poll's own round trip."""


class Move:
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
        self.records = Records(control, moves_table)
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
            if declared is not None and declared != spec(self.tables):
                raise MoveError(
                    f"the unfinished move of bucket {bucket} moves the tables "
                    f"{declared.replace(';', ', ')}: rerun it (or roll it back) with the same "
                    f"--table declarations, not {spec(self.tables).replace(';', ', ')}; a table "
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
                           spec(self.tables))  # fmt: skip
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
