"""Read-your-writes on real servers: across processes (Redis marks, GTID causal), expiry."""

from __future__ import annotations

import contextvars
import json
import subprocess
import sys
import textwrap
import time

import anyio
import pytest
from db_helpers import (
    TABLE,
    Pools,
    count_statements,
    marker,
)
from harness import MariaDBReplication, RedisServer
from harness.ports import wait_until

from scalekit._clock import ManualClock
from scalekit.db import Mark, RedisMarks, ReplicaSet

# The other instance: its own pools, its own ReplicaSet, the same Redis.
READER = textwrap.dedent(
    """
    import json, sys
    from scalekit.db import Pool, ReplicaSet

    primary_url, replica_url, redis_url, causal, user, note = sys.argv[1:]
    rs = ReplicaSet(
        Pool.from_url(primary_url, name="primary"),
        [Pool.from_url(replica_url, name="replica")],
        max_lag=100.0, pin_after_write=4000.0, lag_check_interval=3600.0,
        marks=redis_url, causal=causal == "causal", causal_timeout=0.05,
    )
    sql = "SELECT COUNT(*) AS n FROM db_items WHERE note = %s"
    keyed = rs.query(sql, [note], key=user)[0]["n"]
    unkeyed = rs.query(sql, [note])[0]["n"]
    rs.close()
    print(json.dumps({"keyed": keyed, "unkeyed": unkeyed}))
    """
)


def read_in_other_process(
    setup: MariaDBReplication, redis_url: str, mode: str, user: int, note: str
) -> dict[str, int]:
    argv = [sys.executable, "-c", READER, setup.primary.url, setup.replica.url, redis_url]
    done = subprocess.run(
        [*argv, mode, str(user), note], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, int] = json.loads(done.stdout)
    return result


def writer(pools: Pools, redis_url: str, *, causal: bool) -> ReplicaSet:
    """A ReplicaSet with Redis marks (which expire by Redis' own clock)."""
    return pools.replica_set(
        max_lag=100.0,
        pin_after_write=4000.0,
        lag_check_interval=3600.0,
        marks=RedisMarks(redis_url),
        causal=causal,
    )


@pytest.mark.parametrize("mode", ["marks", "causal"])
def test_write_in_one_process_is_read_in_another(
    mariadb_replication: MariaDBReplication,
    redis_server: RedisServer,
    pools: Pools,
    mode: str,
) -> None:
    rs = writer(pools, redis_server.url, causal=mode == "causal")
    rs.query("SELECT 1")  # replica checked once while caught up
    mariadb_replication.set_delay(60)
    note, user = marker(), 4242
    result = contextvars.copy_context().run(
        rs.execute, f"INSERT INTO {TABLE} (user_id, note) VALUES (%s, %s)", [user, note], key=user
    )
    if mode == "causal":
        assert result.token is not None
    seen = read_in_other_process(mariadb_replication, redis_server.url, mode, user, note)
    # Keyed: sees its write. Unkeyed: served by the delayed replica, which has not.
    assert seen == {"keyed": 1, "unkeyed": 0}
    assert rs.marks_unavailable == 0


def test_mark_lives_as_long_as_its_redis_key(
    mariadb_replication: MariaDBReplication,
    redis_server: RedisServer,
    pools: Pools,
) -> None:
    prefix = f"{marker()}:"
    rs = pools.replica_set(
        max_lag=100.0,
        pin_after_write=4000.0,
        lag_check_interval=3600.0,
        marks=RedisMarks(redis_server.url, prefix=prefix),
    )
    rs.query("SELECT 1")
    mariadb_replication.set_delay(60)
    note, user = marker(), 77
    sql = f"SELECT COUNT(*) AS n FROM {TABLE} WHERE note = %s"
    contextvars.copy_context().run(
        rs.execute, f"INSERT INTO {TABLE} (user_id, note) VALUES (%s, %s)", [user, note], key=user
    )
    client = redis_server.client()
    try:
        assert 3_990_000 < client.pttl(f"{prefix}{user}") <= 4_000_000  # Redis' clock keeps it
        assert rs.query(sql, [note], key=user) == [{"n": 1}]  # the primary
        client.pexpire(f"{prefix}{user}", 1)  # Redis expires it: the pin is over
        wait_until(lambda: not client.exists(f"{prefix}{user}"), timeout=5, what="mark expired")
    finally:
        client.close()
    assert rs.query(sql, [note], key=user) == [{"n": 0}]  # the delayed replica again
    assert rs.marks_unavailable == 0


def test_marks_ignore_clock_skew_between_hosts(redis_server: RedisServer) -> None:
    prefix = f"{marker()}:"
    behind = ManualClock(wall=time.time() - 3600)  # the writer's host runs an hour late
    with pytest.warns(DeprecationWarning, match="unused"):
        writer_marks = RedisMarks(redis_server.url, prefix=prefix, clock=behind)
    reader_marks = RedisMarks(redis_server.url, prefix=prefix)
    try:
        writer_marks.mark("k", 5.0, "0-1-3")
        assert reader_marks.lookup("k") == Mark("0-1-3")
    finally:
        writer_marks.close()
        reader_marks.close()


def test_causal_reads_are_served_by_a_running_replica(
    general_log: MariaDBReplication,
    redis_server: RedisServer,
    pools: Pools,
    clock: ManualClock,
) -> None:
    rs = writer(pools, redis_server.url, causal=True)
    tag = marker()
    for user in range(10):
        contextvars.copy_context().run(
            rs.execute,
            f"INSERT INTO {TABLE} (user_id, note) VALUES (%s, %s)",
            [user, tag],
            key=user,
        )
        (row,) = rs.query(
            f"SELECT /* {tag} */ COUNT(*) AS n FROM {TABLE} WHERE note = %s AND user_id = %s",
            [tag, user],
            key=user,
        )
        assert row["n"] == 1
    assert count_statements(general_log.replica, f"/* {tag} */") == 10
    assert count_statements(general_log.primary, f"/* {tag} */") == 0


def test_redis_marks_keep_the_highest_gtid_per_domain(redis_server: RedisServer) -> None:
    marks = RedisMarks(redis_server.url, prefix=f"{marker()}:")
    try:
        marks.mark("k", 5.0, "0-1-10,1-2-5")
        marks.mark("k", 5.0, "0-1-7,1-2-9")  # a slower writer never lowers domain 0
        assert marks.lookup("k") == Mark("0-1-10,1-2-9")
        assert marks.lookup("other") is None
    finally:
        marks.close()


def test_unreachable_redis_sends_keyed_reads_to_primary_and_counts(
    general_log: MariaDBReplication,
    redis_server: RedisServer,
    pools: Pools,
    clock: ManualClock,
) -> None:
    rs = writer(pools, redis_server.url, causal=False)
    tag = marker()
    redis_server.stop()
    for user in range(5):
        rs.query(f"SELECT /* {tag} */ 1", key=user)
    rs.query(f"SELECT /* {tag} */ 2")  # no key: the replica as usual
    assert count_statements(general_log.primary, f"/* {tag} */ 1") == 5
    assert count_statements(general_log.replica, f"/* {tag} */ 2") == 1
    assert rs.marks_unavailable == 5


@pytest.mark.anyio
async def test_async_reads_run_concurrently_and_a_write_pins_the_task(
    general_log: MariaDBReplication, pools: Pools
) -> None:
    rs = pools.replica_set()
    tag = marker()
    seen: list[int] = []

    async def read(i: int) -> None:
        rows = await rs.aquery(f"SELECT /* {tag}-r */ SLEEP(0.05) AS s, %s AS i", [i])
        seen.append(rows[0]["i"])

    async with anyio.create_task_group() as group:
        for i in range(8):
            group.start_soon(read, i)
    assert sorted(seen) == list(range(8))
    assert count_statements(general_log.replica, f"{tag}-r") == 8
    assert rs.replicas[0].stats().opened > 1  # they overlapped: more than one connection

    await rs.aexecute(f"INSERT INTO {TABLE} (user_id, note) VALUES (%s, %s)", [9, tag])
    await rs.aquery(f"SELECT /* {tag}-w */ 1")  # pinned in this task: the primary
    assert count_statements(general_log.primary, f"{tag}-w") == 1


def test_a_write_sent_with_query_on_the_primary_is_read_back_too(
    mariadb_replication: MariaDBReplication, pools: Pools
) -> None:
    """``query("INSERT … RETURNING …", primary=True, key=…)`` wrote without a pin or a mark:
    the next read, in the same request too, went to a lagging replica and missed it (attack11)."""
    rs = pools.replica_set(max_lag=100.0, pin_after_write=4000.0, lag_check_interval=3600.0)
    rs.query("SELECT 1")  # replica checked once while caught up
    mariadb_replication.set_delay(60)
    note = marker()
    inserted = rs.query(f"INSERT INTO {TABLE} (user_id, note) VALUES (9, %s) RETURNING id",
                        [note], primary=True, key=9)  # fmt: skip
    sql = f"SELECT COUNT(*) AS n FROM {TABLE} WHERE id = %s"
    assert rs.query(sql, [inserted[0]["id"]], key=9) == [{"n": 1}]  # the mark for key 9

    def other_request() -> list[dict[str, object]]:  # no pin there: only the mark counts
        return rs.query(sql, [inserted[0]["id"]], key=9)

    assert contextvars.Context().run(other_request) == [{"n": 1}]
