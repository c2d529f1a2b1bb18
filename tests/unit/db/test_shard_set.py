"""ShardSet on SQLite shards: construction checks, routing, fan-out, events, fences."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
from shard_sqlite import sqlite_shards

from scalekit import events
from scalekit.db import (
    BucketMap,
    BucketMoved,
    ConfigError,
    Cursor,
    JumpHash,
    Modulo,
    ReplicaSet,
    ShardRow,
    ShardSet,
)
from scalekit.db.shards import ensure_fence_table


def test_strategy_shard_count_must_equal_the_number_of_shards(tmp_path: Path) -> None:
    shards = sqlite_shards(tmp_path, 3)
    with pytest.raises(ConfigError, match="JumpHash\\(4\\) spreads keys over 4 shards"):
        ShardSet(shards, strategy=JumpHash(4))
    with pytest.raises(ConfigError, match="at least one shard"):
        ShardSet([], strategy=JumpHash(1))
    assert ShardSet(shards).strategy == JumpHash(3)  # JumpHash is the default


def test_for_key_routes_by_the_strategy(tmp_path: Path) -> None:
    shards = sqlite_shards(tmp_path, 4)
    shard_set = ShardSet(shards, strategy=Modulo(4))
    for user_id in range(20):
        replica_set = shard_set.for_key(user_id)
        assert isinstance(replica_set, ReplicaSet)
        assert replica_set is shards[user_id % 4]


def _fill(shard_set: ShardSet, users: range) -> None:
    for user_id in users:
        shard_set.execute("INSERT INTO tasks (id, user_id, title) VALUES (%s, %s, %s)",
                          (user_id, user_id, f"t{user_id}"), key=user_id)  # fmt: skip


def test_query_all_runs_on_every_shard_and_tags_rows(tmp_path: Path) -> None:
    shard_set = ShardSet(sqlite_shards(tmp_path, 3), strategy=JumpHash(3))
    _fill(shard_set, range(30))
    rows = shard_set.query_all("SELECT id, user_id FROM tasks WHERE id < %s ORDER BY id", (100,))
    assert sorted(row["id"] for row in rows) == list(range(30))
    assert all(isinstance(row, ShardRow) for row in rows)
    for row in rows:
        assert row.shard == JumpHash(3).shard_for(row["user_id"])
    assert [row.shard for row in rows] == sorted(row.shard for row in rows)  # shard order
    shard_set.close()


def test_query_all_runs_the_shards_concurrently(tmp_path: Path) -> None:
    shard_set = ShardSet(sqlite_shards(tmp_path, 3), strategy=JumpHash(3))
    arrived = threading.Barrier(3, timeout=10)
    seen: list[str] = []

    def listener(event: events.DbQuery) -> None:
        seen.append(threading.current_thread().name)
        arrived.wait()  # passes only if all three shards run at the same time

    unsubscribe = events.subscribe(listener, events.DbQuery)
    try:
        shard_set.query_all("SELECT 1 AS one")
    finally:
        unsubscribe()
        shard_set.close()
    assert len(set(seen)) == 3


def test_shard_index_reaches_db_events(tmp_path: Path) -> None:
    shard_set = ShardSet(sqlite_shards(tmp_path, 4), strategy=Modulo(4))
    got: list[events.DbQuery] = []
    unsubscribe = events.subscribe(got.append, events.DbQuery)
    try:
        shard_set.execute("INSERT INTO tasks (id, user_id, title) VALUES (6, 6, 'x')", key=6)
        shard_set.query("SELECT * FROM tasks WHERE user_id = %s", (6,), key=6)
        shard_set.query_all("SELECT COUNT(*) AS n FROM tasks")
        shard_set.for_key(6).query("SELECT 1")  # outside the set: no shard
        with shard_set.using(7) as db:
            db.query("SELECT 2")
    finally:
        unsubscribe()
        shard_set.close()
    assert [event.shard for event in got[:2]] == [2, 2]
    assert sorted(event.shard for event in got[2:6]) == [0, 1, 2, 3]  # type: ignore[type-var]
    assert got[6].shard is None
    assert got[7].shard == 3
    assert events.current_shard.get() is None


def test_guarded_write_on_a_frozen_bucket_waits_then_raises(tmp_path: Path) -> None:
    bucket_map = BucketMap(16, shards=2)
    shards = sqlite_shards(tmp_path, 2)
    shard_set = ShardSet(shards, strategy=bucket_map, freeze_timeout=0.0)
    key = 7
    index, bucket = bucket_map.shard_for(key), bucket_map.bucket_for(key)
    ensure_fence_table(shards[index].primary)
    shards[index].execute("INSERT INTO scalekit_bucket_fence VALUES (%s, 'frozen')", (bucket,))
    with pytest.raises(BucketMoved, match="frozen") as caught:
        shard_set.execute("INSERT INTO tasks (id, user_id, title) VALUES (1, 7, 'x')", key=key)
    assert caught.value.state == "frozen"
    assert shards[index].query("SELECT COUNT(*) AS n FROM tasks")[0]["n"] == 0
    # Other buckets on the same shard are not affected.
    other = next(k for k in range(100) if bucket_map.shard_for(k) == index
                 and bucket_map.bucket_for(k) != bucket)  # fmt: skip
    shard_set.execute(
        "INSERT INTO tasks (id, user_id, title) VALUES (2, %s, 'y')", (other,), key=other
    )


def test_guarded_write_on_a_moved_bucket_reloads_the_map(tmp_path: Path) -> None:
    old = BucketMap(16, shards=2)
    key = 7
    bucket = old.bucket_for(key)
    source = old.shard_for(key)
    new = old.reassign({bucket: 1 - source})
    shards = sqlite_shards(tmp_path, 2)
    ensure_fence_table(shards[source].primary)
    shards[source].execute("INSERT INTO scalekit_bucket_fence VALUES (%s, 'moved')", (bucket,))

    stale = ShardSet(shards, strategy=old)
    with pytest.raises(BucketMoved, match="reload="):
        stale.execute("INSERT INTO tasks (id, user_id, title) VALUES (1, 7, 'x')", key=key)

    following = ShardSet(shards, strategy=old, reload=lambda: new)
    following.execute("INSERT INTO tasks (id, user_id, title) VALUES (1, 7, 'x')", key=key)
    assert following.strategy is new
    assert shards[1 - source].query("SELECT user_id FROM tasks") == [{"user_id": 7}]
    assert shards[source].query("SELECT user_id FROM tasks") == []


def test_reload_checks_the_shard_count(tmp_path: Path) -> None:
    shard_set = ShardSet(sqlite_shards(tmp_path, 2), strategy=BucketMap(8, shards=2),
                         reload=lambda: BucketMap(8, shards=3))  # fmt: skip
    with pytest.raises(ConfigError, match="3 shards"):
        shard_set.reload()
    with pytest.raises(ConfigError, match="no reload="):
        ShardSet(sqlite_shards(tmp_path, 2), strategy=JumpHash(2)).reload()


def test_transaction_returns_the_function_result(tmp_path: Path) -> None:
    shard_set = ShardSet(sqlite_shards(tmp_path, 2), strategy=BucketMap(8, shards=2))

    def write(cursor: object) -> int:
        return cursor.execute(  # type: ignore[attr-defined, no-any-return]
            "INSERT INTO tasks (id, user_id, title) VALUES (3, 3, 'z')"
        )

    assert shard_set.transaction(write, key=3).rowcount == 1
    assert shard_set.query("SELECT title FROM tasks WHERE id = 3", key=3) == [{"title": "z"}]


@pytest.mark.anyio
async def test_async_twins(tmp_path: Path) -> None:
    shard_set = ShardSet(sqlite_shards(tmp_path, 2), strategy=BucketMap(8, shards=2))
    seen: list[int | None] = []
    unsubscribe = events.subscribe(lambda event: seen.append(event.shard), events.DbQuery)
    try:
        await shard_set.aexecute("INSERT INTO tasks (id, user_id, title) VALUES (5, 5, 'a')", key=5)
        assert await shard_set.aquery("SELECT title FROM tasks", key=5) == [{"title": "a"}]
        rows = await shard_set.aquery_all("SELECT user_id FROM tasks")
        assert [(row.shard, row["user_id"]) for row in rows] == [(shard_set.shard_for(5), 5)]

        def count(cursor: Cursor) -> int:
            return len(cursor.query("SELECT id FROM tasks"))

        assert await shard_set.atransaction(count, key=5) == 1
    finally:
        unsubscribe()
        shard_set.close()
    assert None not in seen


def test_fenced_writes_are_reported_as_routing_events(tmp_path: Path) -> None:
    bucket_map = BucketMap(16, shards=2)
    shards = sqlite_shards(tmp_path, 2)
    shard_set = ShardSet(shards, strategy=bucket_map, freeze_timeout=0.0)
    index, bucket = bucket_map.shard_for(7), bucket_map.bucket_for(7)
    ensure_fence_table(shards[index].primary)
    shards[index].execute("INSERT INTO scalekit_bucket_fence VALUES (%s, 'frozen')", (bucket,))
    got: list[events.DbRouting] = []
    unsubscribe = events.subscribe(got.append, events.DbRouting)
    try:
        with pytest.raises(BucketMoved):
            shard_set.execute("INSERT INTO tasks (id, user_id, title) VALUES (1, 7, 'x')", key=7)
    finally:
        unsubscribe()
    assert [(e.decision, e.reason, e.shard) for e in got] == [
        ("bucket_frozen", f"bucket {bucket}", index)
    ]


def test_statements_take_the_key_as_a_keyword_like_replica_set(tmp_path: Path) -> None:
    shard_set = ShardSet(sqlite_shards(tmp_path, 2), strategy=Modulo(2))
    insert = "INSERT INTO tasks (id, user_id, title) VALUES (%s, %s, 'n')"
    assert shard_set.execute(insert, (1, 3), key=3).rowcount == 1
    assert shard_set.query("SELECT id FROM tasks", key=3) == [{"id": 1}]
    assert shard_set.query("SELECT id FROM tasks", key=3, primary=True) == [{"id": 1}]
    assert shard_set.transaction(lambda cursor: cursor.query("SELECT id FROM tasks"), key=3) == [
        {"id": 1}
    ]
    assert shard_set.query("SELECT id FROM tasks", key=4) == []  # the other shard


def test_the_old_argument_order_works_with_a_deprecation_warning(tmp_path: Path) -> None:
    shard_set = ShardSet(sqlite_shards(tmp_path, 2), strategy=Modulo(2))
    insert = "INSERT INTO tasks (id, user_id, title) VALUES (%s, %s, 'n')"
    with pytest.warns(DeprecationWarning, match=r"shards\.execute\(sql, params, key=key\)"):
        shard_set.execute(3, insert, (1, 3))
    with pytest.warns(DeprecationWarning, match=r"shards\.query\(sql, params, key=key\)"):
        assert shard_set.query(3, "SELECT id FROM tasks") == [{"id": 1}]
    with pytest.warns(DeprecationWarning, match=r"shards\.query"):
        assert shard_set.query("user-3", "SELECT id FROM tasks", params=None) == []  # type: ignore[call-overload]
    with pytest.warns(DeprecationWarning, match=r"shards\.transaction\(fn, key=key\)"):
        assert shard_set.transaction(3, lambda cursor: 7) == 7


@pytest.mark.anyio
async def test_the_old_argument_order_of_the_async_twins_warns(tmp_path: Path) -> None:
    shard_set = ShardSet(sqlite_shards(tmp_path, 2), strategy=BucketMap(8, shards=2))
    insert = "INSERT INTO tasks (id, user_id, title) VALUES (%s, %s, 'n')"
    with pytest.warns(DeprecationWarning, match=r"shards\.aexecute\(sql, params, key=key\)"):
        await shard_set.aexecute(3, insert, (1, 3))
    with pytest.warns(DeprecationWarning, match=r"shards\.aquery\(sql, params, key=key\)"):
        assert await shard_set.aquery(3, "SELECT id FROM tasks") == [{"id": 1}]
    with pytest.warns(DeprecationWarning, match=r"shards\.atransaction\(fn, key=key\)"):
        assert await shard_set.atransaction(3, lambda cursor: 7) == 7
    shard_set.close()


def test_a_statement_without_a_key_is_a_type_error_naming_the_fix(tmp_path: Path) -> None:
    shard_set = ShardSet(sqlite_shards(tmp_path, 2), strategy=Modulo(2))
    with pytest.raises(TypeError, match=r"needs key=, the shard key"):
        shard_set.query("SELECT 1", [])  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"needs key="):
        shard_set.execute("SELECT 1")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"needs key="):
        shard_set.transaction(lambda cursor: 1)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="two values"):
        shard_set.query("SELECT 1", [], key=1, params=[])  # type: ignore[call-overload]
    # (sql, one str parameter) without key=: the old order ran the parameter as the SQL,
    # on the shard of the SQL text (attack11).
    with pytest.raises(TypeError, match=r"needs key="):
        shard_set.execute("DELETE FROM tasks WHERE title = %s", "old")
    with pytest.warns(DeprecationWarning, match="is deprecated"):  # the old order still works
        assert shard_set.query("user 3", "SELECT 1 AS one") == [{"one": 1}]


@pytest.mark.anyio
@pytest.mark.parametrize("strategy", [Modulo(2), BucketMap(8, shards=2)])
async def test_execute_returning_keeps_the_rows_as_on_replica_set(
    tmp_path: Path, strategy: Modulo | BucketMap
) -> None:
    """``returning=True`` was a TypeError on ShardSet.execute, though ReplicaSet takes it."""
    shard_set = ShardSet(sqlite_shards(tmp_path, 2), strategy=strategy)
    insert = "INSERT INTO tasks (id, user_id, title) VALUES (%s, %s, 'n') RETURNING id, title"
    result = shard_set.execute(insert, (7, 3), key=3, returning=True)
    assert result.rows == [{"id": 7, "title": "n"}]
    done = await shard_set.aexecute(insert, (8, 3), key=3, returning=True)
    assert done.rows == [{"id": 8, "title": "n"}]


def test_query_all_in_a_forked_child_does_not_wait_forever(tmp_path: Path) -> None:
    """After fork (gunicorn --preload) the parent's fan-out executor has no threads in the
    child: query_all queued its reads there and waited forever (attack11)."""
    shard_set = ShardSet(sqlite_shards(tmp_path, 2), strategy=JumpHash(2))
    assert len(shard_set.query_all("SELECT 1 AS one")) == 2  # the executor's threads start
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            signal.alarm(10)  # a hang ends the child with SIGALRM
            code = 0 if len(shard_set.query_all("SELECT 1 AS one")) == 2 else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(shard_set.query_all("SELECT 1 AS one")) == 2  # the parent's still works
    shard_set.close()
