"""ShardSet on a real MariaDB: two databases as shards, fan-out, events, fences, mover lock.

That ``query_all`` runs the shards at the same time is shown by the unit tests
(a barrier only both shards together can pass).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from harness import MariaDBReplication

from scalekit import events
from scalekit._clock import ManualClock
from scalekit.db import (
    BucketMap,
    BucketMoved,
    ConfigError,
    Cursor,
    JumpHash,
    MapStore,
    MoveError,
    Pool,
    ReplicaSet,
    ShardedTable,
    ShardSet,
    move_bucket,
)
from scalekit.db.shards.freshness import POLL_TIMEOUT

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
        shards.execute("INSERT INTO items (id, user_id, note) VALUES (%s, %s, 'n')",
                       (user_id, user_id), key=user_id)  # fmt: skip
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
    shards.execute("INSERT INTO items VALUES (1, 5, 'before')", key=key)  # creates the fence table
    shard_pools[index].execute("INSERT INTO scalekit_bucket_fence VALUES (%s, 'frozen')",
                               (bucket,))  # fmt: skip
    with pytest.raises(BucketMoved) as caught:
        shards.execute("UPDATE items SET note = 'during' WHERE id = 1", key=key)
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


@pytest.mark.anyio
@pytest.mark.parametrize("strategy", [JumpHash(2), BucketMap(64, shards=2)], ids=repr)
async def test_async_writes_pin_reads_in_the_callers_context(
    mariadb_replication: MariaDBReplication, urls: tuple[str, list[str]], strategy: object
) -> None:
    """Issue 11 point 7: aexecute/atransaction pinned a copy of the context, not the caller's.

    The replica applies nothing (its SQL thread is stopped after its lag was
    probed, and the clock does not move), so a read that is not pinned to the
    primary misses the write. Reads pass no key: only the
    context pin, not the key's mark, can send them to the primary.
    """
    mariadb_replication.wait_caught_up()
    replica_base = mariadb_replication.replica.url.rsplit("/", 1)[0]
    clock = ManualClock()
    sets = []
    for index, url in enumerate(urls[1]):
        primary = Pool.from_url(url, name=f"p{index}", acquire_timeout=30.0, clock=clock)
        replica = Pool.from_url(f"{replica_base}/{DATABASES[index]}", name=f"r{index}",
                                acquire_timeout=30.0, clock=clock)  # fmt: skip
        sets.append(ReplicaSet(primary, [replica], clock=clock))
    shards = ShardSet(sets, strategy=strategy, clock=clock)  # type: ignore[arg-type]
    for replica_set in sets:  # each replica probed healthy and fresh; the clock stays put
        assert replica_set.query("SELECT COUNT(*) AS n FROM items") == [{"n": 0}]
    mariadb_replication.stop_replication(only="sql")
    try:
        await shards.aexecute("INSERT INTO items VALUES (1, 5, 'x')", key=5)
        assert await shards.for_key(5).aquery("SELECT note FROM items WHERE id = 1") == [
            {"note": "x"}
        ]

        def write(cursor: Cursor) -> int:
            return cursor.execute("INSERT INTO items VALUES (2, 6, 'y')")

        await shards.atransaction(write, key=6)
        assert await shards.for_key(6).aquery("SELECT note FROM items WHERE id = 2") == [
            {"note": "y"}
        ]
    finally:
        mariadb_replication.start_replication()
        shards.close()


def test_a_stale_derived_map_cannot_undo_a_finished_move(
    urls: tuple[str, list[str]], shard_pools: list[ReplicaSet]
) -> None:
    """Issue 11 point 12: save_db took a map derived from an older version (compare-and-set)."""
    control = Pool.from_url(urls[0])
    BucketMap(64, shards=2).save_db(control)
    stale = BucketMap.load_db(control)  # an operator's copy, loaded before the move
    shards = ShardSet(shard_pools, strategy=stale)
    key = next(k for k in range(100) if stale.shard_for(k) == 0)
    bucket = stale.bucket_for(key)
    shards.execute("INSERT INTO items VALUES (1, %s, 'n')", (key,), key=key)
    move_bucket(shard_pools, bucket, 1, control=control,
                tables=[ShardedTable("items", "user_id", "id")])  # fmt: skip
    other = next(b for b in range(64) if b != bucket and stale.shard_of_bucket(b) == 0)
    planned = stale.reassign({other: 1}).reassign({other + 2: 1})  # version 3, from version 1
    with pytest.raises(ConfigError, match="derived from version 1"):
        planned.save_db(control)
    stored = BucketMap.load_db(control)
    assert (stored.version, stored.shard_of_bucket(bucket)) == (2, 1)  # the move stands
    assert shard_pools[1].query("SELECT user_id FROM items") == [{"user_id": key}]
    control.close()
    shards.close()


def test_a_frozen_control_database_costs_a_statement_one_poll_timeout(
    urls: tuple[str, list[str]],
    shard_pools: list[ReplicaSet],
    mariadb_replication: MariaDBReplication,
) -> None:
    """The map poll ran with the control pool's 60 s read timeout (120 s with its retry), and
    every statement of every thread waited for it, poll after poll (attack11)."""
    primary_control = Pool.from_url(urls[0])
    BucketMap(8, shards=2).save_db(primary_control)
    primary_control.close()
    mariadb_replication.wait_caught_up()
    # The map read from the replica server, so that freezing it leaves the shards alone.
    replica = mariadb_replication.replica  # thawed by the harness after the test
    control = Pool.from_url(replica.url.rsplit("/", 1)[0] + f"/{CONTROL}", name="control")
    clock = ManualClock()
    shards = ShardSet(shard_pools, map_store=MapStore(control), refresh_interval=1.0,
                      clock=clock)  # fmt: skip
    try:
        replica.freeze()
        clock.advance(1.0)
        started = time.monotonic()
        assert shards.query("SELECT 1 AS one", key=7) == [{"one": 1}]  # the old map serves
        assert shards.query("SELECT 1 AS one", key=8) == [{"one": 1}]  # no second poll
        assert time.monotonic() - started < POLL_TIMEOUT + 1.5
        assert shards.map_polls == 1
    finally:
        replica.thaw()
        control.close()
