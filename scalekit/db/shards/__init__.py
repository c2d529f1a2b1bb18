"""Shards: strategies, the bucket map, the shard set, and online bucket moves.

Where things live:

* :mod:`.strategies` — ``hash_key``, ``Modulo``, ``JumpHash``: key → shard, pure.
* :mod:`.bucket_map` — ``BucketMap``: key → bucket → shard by a versioned table.
* :mod:`.map_store` — ``MapStore``: the map in a database table on a control database.
* :mod:`.shard_set` — ``ShardSet``: one ``ReplicaSet`` per shard, statements routed by key.
* :mod:`.call_order` — the old ``(key, sql, params)`` argument order, kept for one release.
* :mod:`.fence` — the per-shard bucket fences: every fence read and write.
* :mod:`.fence_retry` — what a guarded statement does after meeting a fence.
* :mod:`.dialect` — the SQL that differs between MariaDB/MySQL and SQLite.
* :mod:`.rows` — ``ShardedTable`` and a bucket's rows on one shard.
* :mod:`.mover` — ``move_bucket``, ``abort_move``, ``plan_move``: the move's entry points.
* :mod:`.move_steps` — ``Move``: the move's steps (copy, sync, verify, flip, open, delete).
* :mod:`.move_records` — the control table of moves, ``Step`` and the values a move reports.
* :mod:`.lock` — one mover per bucket at a time.
* :mod:`.plan` — ``plan``: what a change of strategy moves.
"""

from __future__ import annotations

from ..errors import BucketMoved, MoveError
from .bucket_map import BucketMap
from .fence import FENCE_TABLE, FenceState, ensure_fence_table
from .map_store import MAP_TABLE, MapStore
from .mover import (
    MOVES_TABLE,
    Checkpoint,
    MovePlan,
    MoveProgress,
    MoveResult,
    Step,
    abort_move,
    move_bucket,
    plan_move,
)
from .plan import Plan, plan
from .rows import ShardedTable
from .shard_set import ShardRow, ShardSet
from .strategies import JumpHash, Modulo, ShardStrategy, hash_key, jump_hash

__all__ = [
    "FENCE_TABLE",
    "MAP_TABLE",
    "MOVES_TABLE",
    "BucketMap",
    "BucketMoved",
    "Checkpoint",
    "FenceState",
    "JumpHash",
    "MapStore",
    "Modulo",
    "MoveError",
    "MovePlan",
    "MoveProgress",
    "MoveResult",
    "Plan",
    "ShardRow",
    "ShardSet",
    "ShardStrategy",
    "ShardedTable",
    "Step",
    "abort_move",
    "ensure_fence_table",
    "hash_key",
    "jump_hash",
    "move_bucket",
    "plan",
    "plan_move",
]
