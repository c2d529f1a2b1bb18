"""Bucket moves; kept so ``scalekit.db.migrate`` imports keep working.

The code lives in :mod:`scalekit.db.shards.mover` (the entry points; the
steps in :mod:`scalekit.db.shards.move_steps`),
:mod:`scalekit.db.shards.rows` (``ShardedTable``) and the rest of
:mod:`scalekit.db.shards`; import from ``scalekit.db`` or there.
"""

from __future__ import annotations

from .errors import MoveError
from .shards.mover import (
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
from .shards.rows import ShardedTable

__all__ = [
    "MOVES_TABLE",
    "Checkpoint",
    "MoveError",
    "MovePlan",
    "MoveProgress",
    "MoveResult",
    "ShardedTable",
    "Step",
    "abort_move",
    "move_bucket",
    "plan_move",
]
