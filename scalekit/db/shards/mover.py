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

Where the code lives: this module holds the entry points (``move_bucket``,
``abort_move``, ``plan_move``) and re-exports the public names of
:mod:`.move_records` (the control table of moves, ``Step``, the values a move
reports) and :mod:`.move_steps` (``Move``, the step machine, and its waits).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import structlog

from ..errors import MoveError
from ..pool import Pool
from ..replicas import ReplicaSet
from . import fence
from .dialect import primary_pool
from .fence import FENCE_TABLE, FenceState
from .freshness import DEFAULT_REFRESH_INTERVAL
from .lock import mover_lock
from .map_store import MAP_TABLE
from .move_records import (
    MOVES_TABLE,
    UNFLIPPED,
    Checkpoint,
    MovePlan,
    MoveProgress,
    MoveResult,
    Records,
    Step,
)
from .move_steps import DEFAULT_REPLICA_TIMEOUT as DEFAULT_REPLICA_TIMEOUT
from .move_steps import MAP_WAIT_MARGIN as MAP_WAIT_MARGIN
from .move_steps import Move
from .rows import ShardedTable
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

_logger = structlog.get_logger("scalekit.db.shards.mover")


def _pools(shards: ShardSet | Sequence[ReplicaSet | Pool]) -> list[Pool]:
    members = shards.shards if isinstance(shards, ShardSet) else shards
    return [primary_pool(member) for member in members]


def _replicas(shards: ShardSet | Sequence[ReplicaSet | Pool]) -> list[tuple[Pool, ...]]:
    members = shards.shards if isinstance(shards, ShardSet) else shards
    return [member.replicas if isinstance(member, ReplicaSet) else () for member in members]


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
        move = Move(control_pool, pools, bucket, to, tables, batch_size=batch_size,
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
    records = Records(control_pool, moves_table)
    with mover_lock(control_pool, bucket) as lock:
        record = records.get(bucket)
        if record is None or record["step"] is Step.DONE:
            raise MoveError(f"bucket {bucket} has no unfinished move to roll back")
        if record["step"] not in UNFLIPPED:
            raise MoveError(
                f"the move of bucket {bucket} has flipped the map (step "
                f"{record['step'].value!r}): rolling back could lose writes made on the target; "
                "rerun the move to finish it"
            )
        target = int(record["target"])
        move = Move(control_pool, pools, bucket, target, tables, batch_size=batch_size,
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
    move = Move(primary_pool(control), _pools(shards), bucket, to, tables, batch_size=1,
                 map_table=map_table, moves_table=moves_table,
                 fence_table=FENCE_TABLE)  # fmt: skip
    rows = move.counts() if move.step in UNFLIPPED else {}
    return MovePlan(bucket, move.source, to, move.step, rows, move.map.version)
