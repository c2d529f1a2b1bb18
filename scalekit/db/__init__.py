"""Connection pools, read/write routing to replicas, read-your-writes.

::

    from scalekit.db import Pool, ReplicaSet

    primary = Pool.from_url("mysql://app:pw@127.0.0.1:3306/tasks?max_connections=20")
    replica = Pool.from_url("mysql://app:pw@127.0.0.1:3307/tasks")
    db = ReplicaSet(primary, [replica], max_lag=2.0, pin_after_write=5.0)
    rows = db.query("SELECT * FROM tasks WHERE user_id = %s", [42], key=42)
    db.execute("INSERT INTO tasks (user_id, title) VALUES (%s, %s)", [42, "x"], key=42)

Errors::

    DatabaseError
    ├── ConfigError                  a bad URL or option, raised at construction
    ├── PoolTimeout                  no connection within ``acquire_timeout``
    ├── NoHealthyServer              no replica and no primary could serve the read
    ├── ConnectionLost               the connection died (2006, 2013, 4031, ...)
    │   └── WriteOutcomeUnknown      ... while a write was in flight: never re-sent
    ├── RetryableTransactionError    deadlock (1213) or lock wait timeout (1205)
    ├── PrimaryReadOnly              the primary answered 1290: it was demoted
    ├── MisroutedWrite               a write reached a read-only replica session (1792)
    ├── BucketMoved                  a guarded shard write met a frozen or moved bucket
    └── MoveError                    a bucket move cannot go on (arguments, lock, map)

Events (``scalekit.events``): ``DbQuery`` per statement, ``DbRouting`` per
routing decision, ``DbPoolStats`` when a pool's counts change.
"""

from __future__ import annotations

from ._connector import SslMode
from ._scope import RequestScopeMiddleware, request_scope
from .errors import (
    BucketMoved,
    ConfigError,
    ConnectionLost,
    DatabaseError,
    MisroutedWrite,
    MoveError,
    NoHealthyServer,
    PoolTimeout,
    PrimaryReadOnly,
    RetryableTransactionError,
    WriteOutcomeUnknown,
)
from .marks import Mark, MarkStore, MarkStoreUnavailable, MemoryMarks, RedisMarks
from .pool import Connection, Cursor, Pool, PoolStats, Result, Role
from .replicas import ReplicaSet
from .shards import (
    BucketMap,
    JumpHash,
    MapStore,
    Modulo,
    MovePlan,
    MoveProgress,
    MoveResult,
    Plan,
    ShardedTable,
    ShardRow,
    ShardSet,
    ShardStrategy,
    abort_move,
    move_bucket,
    plan,
    plan_move,
)

__all__ = [
    "BucketMap",
    "BucketMoved",
    "ConfigError",
    "Connection",
    "ConnectionLost",
    "Cursor",
    "DatabaseError",
    "JumpHash",
    "MapStore",
    "Mark",
    "MarkStore",
    "MarkStoreUnavailable",
    "MemoryMarks",
    "MisroutedWrite",
    "Modulo",
    "MoveError",
    "MovePlan",
    "MoveProgress",
    "MoveResult",
    "NoHealthyServer",
    "Plan",
    "Pool",
    "PoolStats",
    "PoolTimeout",
    "PrimaryReadOnly",
    "RedisMarks",
    "ReplicaSet",
    "RequestScopeMiddleware",
    "Result",
    "RetryableTransactionError",
    "Role",
    "ShardRow",
    "ShardSet",
    "ShardStrategy",
    "ShardedTable",
    "SslMode",
    "WriteOutcomeUnknown",
    "abort_move",
    "move_bucket",
    "plan",
    "plan_move",
    "request_scope",
]
