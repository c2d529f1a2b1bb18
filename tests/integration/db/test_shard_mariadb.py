"""ShardSet on a real MariaDB: two databases as shards, fan-out, events, fences, mover lock.

That ``query_all`` runs the shards at the same time is shown by the unit tests
(a barrier only both shards together can pass).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import MariaDBReplication

from scalekit import events
from scalekit.db import (
    BucketMap,
    BucketMoved,
    JumpHash,
    MoveError,
    Pool,
    ReplicaSet,
    ShardedTable,
    ShardSet,
    move_bucket,
)

DATABASES = ["scalekit_shard_a", "scalekit_shard_b"]
CONTROL = "scalekit_shard_ctl"


@pytest.fixture
def urls(mariadb_replication: MariaDBReplication) -> tuple[str, list[str]]:
    server = mariadb_replication.primary
    base = server.url.rsplit("/", 1)[0]
    with server.app_connect(db=None) as conn, conn.cursor() as cursor:
        for name in [CONTROL, *DATABASES]:
            cursor.execute(f"DROP DATABASE IF EXISTS {name}")
            cursor.execute(f"CREATE DATABASE {name}")
        for name in DATABASES:
            cursor.execute(
                f"CREATE TABLE {name}.items (id BIGINT PRIMARY KEY, user_id BIGINT NOT NULL, "
                "note VARCHAR(32) NOT NULL)"
            )
    return f"{base}/{CONTROL}", [f"{base}/{name}" for name in DATABASES]


@pytest.fixture
def shard_pools(urls: tuple[str, list[str]]) -> Iterator[list[ReplicaSet]]:
    replica_sets = [ReplicaSet(Pool.from_url(url, name=f"shard{i}", acquire_timeout=30.0))
                    for i, url in enumerate(urls[1])]  # fmt: skip
    yield replica_sets
    for replica_set in replica_sets:
        replica_set.close()


def test_rows_land_on_their_shard_and_query_all_fans_out(shard_pools: list[ReplicaSet]) -> None:
    shards = ShardSet(shard_pools, strategy=JumpHash(2))
    for user_id in range(40):
        shards.execute(user_id, "INSERT INTO items (id, user_id, note) VALUES (%s, %s, 'n')",
                       (user_id, user_id))  # fmt: skip
    for index, replica_set in enumerate(shard_pools):
        users = {row["user_id"] for row in replica_set.query("SELECT user_id FROM items")}
        assert users == {u for u in range(40) if JumpHash(2).shard_for(u) == index}

    got: list[events.DbQuery] = []
    unsubscribe = events.subscribe(got.append, events.DbQuery)
    try:
        rows = shards.query_all("SELECT user_id FROM items WHERE user_id < %s", (40,))
    finally:
        unsubscribe()
    assert sorted(row["user_id"] for row in rows) == list(range(40))
    assert all(row.shard == JumpHash(2).shard_for(row["user_id"]) for row in rows)
    assert sorted(event.shard for event in got) == [0, 1]  # type: ignore[type-var]
    shards.close()


def test_guarded_write_waits_for_a_frozen_bucket(
    urls: tuple[str, list[str]], shard_pools: list[ReplicaSet]
) -> None:
    bucket_map = BucketMap(64, shards=2)
    shards = ShardSet(shard_pools, strategy=bucket_map, freeze_timeout=0.2)
    key = 5
    index, bucket = bucket_map.shard_for(key), bucket_map.bucket_for(key)
    shards.execute(key, "INSERT INTO items VALUES (1, 5, 'before')")  # creates the fence table
    shard_pools[index].execute("INSERT INTO scalekit_bucket_fence VALUES (%s, 'frozen')",
                               (bucket,))  # fmt: skip
    with pytest.raises(BucketMoved) as caught:
        shards.execute(key, "UPDATE items SET note = 'during' WHERE id = 1")
    assert caught.value.state == "frozen"
    assert shard_pools[index].query("SELECT note FROM items WHERE id = 1") == [{"note": "before"}]


def test_a_second_mover_on_the_same_bucket_is_refused(
    mariadb_replication: MariaDBReplication,
    urls: tuple[str, list[str]],
    shard_pools: list[ReplicaSet],
) -> None:
    control = Pool.from_url(urls[0])
    BucketMap(64, shards=2).save_db(control)
    with mariadb_replication.primary.app_connect(db=CONTROL) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT GET_LOCK(CONCAT(DATABASE(), '.scalekit.bucket_move.3'), 0)")
        with pytest.raises(MoveError, match="another mover"):
            move_bucket(shard_pools, 3, 0, control=control,
                        tables=[ShardedTable("items", "user_id", "id")])  # fmt: skip
    control.close()
