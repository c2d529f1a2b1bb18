"""SQLite shards for the shard, bucket and move unit tests."""

from __future__ import annotations

from pathlib import Path

from scalekit.db import Pool, ReplicaSet

TASKS_DDL = (
    "CREATE TABLE IF NOT EXISTS tasks (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, "
    "title TEXT NOT NULL, version INTEGER NOT NULL DEFAULT 0)"
)


def sqlite_shards(tmp_path: Path, count: int, ddl: str = TASKS_DDL) -> list[ReplicaSet]:
    """``count`` ReplicaSets, each over its own SQLite file holding ``ddl``."""
    shards = []
    for index in range(count):
        pool = Pool.from_url(f"sqlite:///{tmp_path}/shard{index}.db", name=f"shard{index}")
        pool.execute(ddl)
        shards.append(ReplicaSet(pool))
    return shards


def control_pool(tmp_path: Path) -> Pool:
    return Pool.from_url(f"sqlite:///{tmp_path}/control.db", name="control")
