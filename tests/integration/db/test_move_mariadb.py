"""Online bucket moves on a real MariaDB: two databases as shards, a writer, SIGKILLed movers.

The mover runs as a separate process (``mover_process.py``: the
``scalekit shards move`` command with a checkpoint that SIGKILLs the process
at a chosen step and batch), then it is run again and must finish the move
with every row, and every acknowledged write, on the target exactly once. One
case rolls the killed move back (``--abort``) and moves again.
"""

from __future__ import annotations

import contextlib
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from harness import MariaDBReplication

from scalekit import cli
from scalekit._clock import ManualClock
from scalekit.db import (
    BucketMap,
    ConfigError,
    Cursor,
    MapStore,
    MoveError,
    Pool,
    ReplicaSet,
    ShardedTable,
    ShardSet,
    abort_move,
    move_bucket,
)
from scalekit.db.shards import Step
from scalekit.db.shards.rows import BucketRows

BUCKETS = 1024
BUCKET = 6  # even: starts on shard 0 (round-robin map)
USERS = 100
TASKS_PER_USER = 100  # 10,000 rows in the bucket
OTHER_ROWS = 500
CONTROL_DB = "scalekit_shard_control"
SHARD_DBS = ["scalekit_shard_0", "scalekit_shard_1"]
TASKS_DDL = (
    "CREATE TABLE tasks (id BIGINT NOT NULL PRIMARY KEY, user_id BIGINT NOT NULL, "
    "title VARCHAR(64) NOT NULL, version INT NOT NULL DEFAULT 0, KEY (user_id))"
)
MAP = BucketMap(BUCKETS, shards=2)
BUCKET_USERS = [user for user in range(200_000) if MAP.bucket_for(user) == BUCKET][:USERS]
OTHER_USERS = [user for user in range(2_000) if MAP.shard_for(user) == 0
               and MAP.bucket_for(user) != BUCKET][:50]  # fmt: skip


@dataclass
class Databases:
    server: Any
    control_url: str
    shard_urls: list[str]

    def run(self, db: str, sql: str, args: Any = None) -> list[dict[str, Any]]:
        import pymysql.cursors

        connect = self.server.app_connect
        with connect(db=db, cursorclass=pymysql.cursors.DictCursor) as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())


@pytest.fixture(scope="module")
def databases(mariadb_replication: MariaDBReplication) -> Databases:
    server = mariadb_replication.primary
    base = server.url.rsplit("/", 1)[0]
    with server.app_connect(db=None) as conn, conn.cursor() as cursor:
        for name in [CONTROL_DB, *SHARD_DBS]:
            cursor.execute(f"CREATE DATABASE IF NOT EXISTS {name}")
    return Databases(server, f"{base}/{CONTROL_DB}", [f"{base}/{db}" for db in SHARD_DBS])


def _reset(databases: Databases) -> None:
    for table in ("scalekit_bucket_map", "scalekit_bucket_moves"):
        databases.run(CONTROL_DB, f"DROP TABLE IF EXISTS {table}")
    for db in SHARD_DBS:
        databases.run(db, "DROP TABLE IF EXISTS tasks")
        databases.run(db, "DROP TABLE IF EXISTS scalekit_bucket_fence")
        databases.run(db, TASKS_DDL)
    rows = [(i + 1, BUCKET_USERS[i % USERS], f"t{i + 1}", 0)
            for i in range(USERS * TASKS_PER_USER)]  # fmt: skip
    rows += [(20_001 + i, OTHER_USERS[i % len(OTHER_USERS)], "other", 0)
             for i in range(OTHER_ROWS)]  # fmt: skip
    for start in range(0, len(rows), 1000):
        chunk = rows[start : start + 1000]
        databases.run(
            SHARD_DBS[0],
            "INSERT INTO tasks (id, user_id, title, version) VALUES "
            + ", ".join(["(%s, %s, %s, %s)"] * len(chunk)),
            [value for row in chunk for value in row],
        )
    control = Pool.from_url(databases.control_url)
    MAP.save_db(control)
    control.close()


@dataclass
class Writer:
    """Inserts and updates rows of the moving bucket through a guarded ShardSet."""

    shard_set: ShardSet
    stop: threading.Event = field(default_factory=threading.Event)
    expected: dict[int, tuple[str, int]] = field(default_factory=dict)
    uncertain: set[int] = field(default_factory=set)
    owner: dict[int, int] = field(default_factory=dict)
    errors: list[BaseException] = field(default_factory=list)
    writes: int = 0
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.expected = {i + 1: (f"t{i + 1}", 0) for i in range(USERS * TASKS_PER_USER)}
        self.owner = {i + 1: BUCKET_USERS[i % USERS] for i in range(USERS * TASKS_PER_USER)}
        self.thread = threading.Thread(target=self._run, name="bucket-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        rng = random.Random(7)
        next_id = 100_000
        while not self.stop.is_set():
            self.writes += 1
            if self.writes % 2:
                next_id += 1
                task_id, user = next_id, rng.choice(BUCKET_USERS)
                title, version = f"new{task_id}", 0
                sql = "INSERT INTO tasks (id, user_id, title, version) VALUES (%s, %s, %s, %s)"
                params: tuple[Any, ...] = (task_id, user, title, version)
                self.owner[task_id] = user
            else:
                task_id = rng.choice(list(self.expected))
                title, version = f"w{self.writes}", self.writes
                sql = "UPDATE tasks SET title = %s, version = %s WHERE id = %s"
                params = (title, version, task_id)
                user = self.owner[task_id]

            def write(cursor: Cursor, sql: str = sql, params: tuple[Any, ...] = params) -> int:
                return cursor.execute(sql, params)

            try:
                self.shard_set.transaction(write, key=user)
            except Exception as exc:  # not acknowledged: its outcome is unknown
                self.errors.append(exc)
                self.uncertain.add(task_id)
                continue
            self.expected[task_id] = (title, version)

    def finish(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(timeout=90)
        assert not self.thread.is_alive()


MOVER = str(Path(__file__).with_name("mover_process.py"))
KILL_POINTS = {"copy": "copy:2", "after_copy": "sync:0", "verify": "verify:1",
               "after_flip": "delete:0", "delete": "delete:1"}  # fmt: skip


def _mover(
    databases: Databases, kill_at: str | None, *extra: str
) -> subprocess.CompletedProcess[str]:
    kill = [f"--kill-at={KILL_POINTS[kill_at]}"] if kill_at else []
    argv = [sys.executable, MOVER, *kill, "shards", "move", "--bucket", str(BUCKET),
            "--to", "1", "--control", databases.control_url,
            "--shard", databases.shard_urls[0], "--shard", databases.shard_urls[1],
            "--table", "tasks:user_id:id", "--batch-size", "500", *extra]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def writer(databases: Databases) -> Iterator[Writer]:
    _reset(databases)
    control = Pool.from_url(databases.control_url)
    shards = [ReplicaSet(Pool.from_url(url, max_connections=4, acquire_timeout=30.0))
              for url in databases.shard_urls]  # fmt: skip
    shard_set = ShardSet(
        shards,
        strategy=BucketMap.load_db(control),
        reload=lambda: BucketMap.load_db(control),
        freeze_timeout=60.0,
    )
    writer = Writer(shard_set)
    yield writer
    writer.stop.set()
    shard_set.close()
    control.close()


@pytest.mark.parametrize(
    "kill_at", [None, "copy", "after_copy", "verify", "after_flip", "delete", "verify+abort"]
)
def test_move_a_bucket_while_writing_and_killed_at_each_step(
    databases: Databases, writer: Writer, kill_at: str | None
) -> None:
    """``verify+abort``: killed during verification, rolled back, then moved again."""
    writer.start()
    while writer.writes < 5:  # the writer is going before the mover starts
        writer.stop.wait(0.01)
    started = writer.writes
    first = _mover(databases, "verify" if kill_at == "verify+abort" else kill_at)
    if kill_at is None:
        assert first.returncode == 0, first.stderr
    elif kill_at == "verify+abort":
        assert first.returncode == -signal.SIGKILL, (first.stdout, first.stderr)
        aborted = _mover(databases, None, "--abort")
        assert aborted.returncode == 0, aborted.stderr
        # Rolled back: nothing of the bucket on the target, and writes flow on the source.
        assert databases.run(SHARD_DBS[1], "SELECT COUNT(*) AS n FROM tasks")[0]["n"] == 0
        mark = writer.writes
        while writer.writes < mark + 20 and not writer.errors:
            writer.stop.wait(0.01)
        final = _mover(databases, None)
        assert final.returncode == 0, final.stderr
    else:
        assert first.returncode == -signal.SIGKILL, (first.stdout, first.stderr)
        second = _mover(databases, None)
        assert second.returncode == 0, second.stderr
        assert "resumed" in second.stdout or kill_at in ("copy", "after_copy")
    during = writer.writes
    # Keep writing after the move: those writes must reach the target.
    while writer.writes < during + 50 and not writer.errors:
        writer.stop.wait(0.01)
    writer.finish()
    assert writer.errors == []
    assert during - started >= 10  # the move happened under writes

    source = databases.run(SHARD_DBS[0], "SELECT id, user_id FROM tasks")
    target = databases.run(SHARD_DBS[1], "SELECT id, user_id, title, version FROM tasks")
    bucket_users = set(BUCKET_USERS)
    assert [row for row in source if row["user_id"] in bucket_users] == []
    assert len(source) == OTHER_ROWS
    assert all(row["user_id"] in bucket_users for row in target)
    by_id = {row["id"]: row for row in target}
    assert len(by_id) == len(target)
    assert set(by_id) == set(writer.expected) | (writer.uncertain & set(by_id))
    for task_id, (title, version) in writer.expected.items():
        if task_id in writer.uncertain:
            continue
        assert (by_id[task_id]["title"], by_id[task_id]["version"]) == (title, version), task_id

    control = Pool.from_url(databases.control_url)
    try:
        bucket_map = BucketMap.load_db(control)
        assert (bucket_map.shard_of_bucket(BUCKET), bucket_map.version) == (1, 2)
        (record,) = control.query("SELECT step FROM scalekit_bucket_moves WHERE bucket = %s",
                                  [BUCKET])  # fmt: skip
        assert record["step"] == "done"
    finally:
        control.close()


def test_the_sql_bucket_predicate_selects_what_python_computes(databases: Databases) -> None:
    """The mover's own predicate (``BucketRows``), on ints, text in two charsets, and bytes."""
    values: dict[str, list[Any]] = {
        "BIGINT": [0, 1, 42, 2**40 + 3, 2**63 - 1, -7],
        "VARCHAR(20) CHARACTER SET utf8mb4": ["user-42", "é", "日本", ""],
        "VARCHAR(20) CHARACTER SET latin1": ["café", "plain"],
        "VARBINARY(16)": [b"\xff\xfe\x00\x01", b"\xc3\xa9", b"", bytes(range(16))],
        "BINARY(4)": [b"\xff\x00\x80\x7f"],
    }
    pool = Pool.from_url(databases.shard_urls[0])
    # A connection in another character set computes the same buckets (attack11).
    latin1 = Pool.from_url(databases.shard_urls[0] + "?charset=latin1")
    try:
        for number, (column_type, keys) in enumerate(values.items()):
            name = f"bucket_probe_{number}"
            pool.execute(f"DROP TABLE IF EXISTS {name}")
            pool.execute(f"CREATE TABLE {name} (id INT PRIMARY KEY, k {column_type})")
            for index, key in enumerate(keys):
                pool.execute(f"INSERT INTO {name} VALUES (%s, %s)", [index, key])
            table = ShardedTable(name, "k", "id")
            for index, key in enumerate(keys):
                for connected in (pool, latin1):
                    rows = BucketRows(connected, BUCKETS, MAP.bucket_for(key), [table])
                    with rows.connect() as conn:
                        found = [row["id"] for row in rows.batch(conn, table, None, 0)]
                    assert index in found, (column_type, key, connected.name)
                    # ... and no row of another bucket: the predicate is exact.
                    assert all(MAP.bucket_for(keys[n]) == MAP.bucket_for(key) for n in found)
            pool.execute(f"DROP TABLE {name}")
    finally:
        pool.close()
        latin1.close()


# -- regression tests of issue 11 on one small bucket -------------------------------

SMALL_CONTROL = "scalekit_move_ctl"
SMALL_DBS = ["scalekit_move_a", "scalekit_move_b"]
SMALL_BUCKETS = 64
ITEMS_DDL = (
    "CREATE TABLE items (id BIGINT NOT NULL PRIMARY KEY, user_id BIGINT NOT NULL, "
    "note VARCHAR(32) NOT NULL)"
)
ITEMS = [ShardedTable("items", "user_id", "id")]


@dataclass
class Small:
    """Two shard databases, a control database, a map, and one bucket's rows on shard 0."""

    server: Any
    control: Pool
    shards: list[ReplicaSet]
    map: BucketMap
    bucket: int
    users: list[int]
    rows: int
    waits: list[float] = field(default_factory=list)

    def count(self, shard: int, users: list[int] | None = None) -> int:
        users = users or self.users
        marks = ", ".join(["%s"] * len(users))
        (row,) = self.shards[shard].primary.query(
            f"SELECT COUNT(*) AS n FROM items WHERE user_id IN ({marks})", users
        )
        return int(row["n"])

    def move(self, to: int, **options: Any) -> Any:
        options.setdefault("sleep", self.waits.append)
        options.setdefault("batch_size", 25)
        return move_bucket(self.shards, self.bucket, to, tables=ITEMS, control=self.control,
                           **options)  # fmt: skip


@pytest.fixture
def small(mariadb_replication: MariaDBReplication) -> Iterator[Small]:
    server = mariadb_replication.primary
    base = server.url.rsplit("/", 1)[0]
    with server.app_connect(db=None) as conn, conn.cursor() as cursor:
        for name in [SMALL_CONTROL, *SMALL_DBS]:
            cursor.execute(f"DROP DATABASE IF EXISTS {name}")
            cursor.execute(f"CREATE DATABASE {name}")
        for name in SMALL_DBS:
            cursor.execute(f"USE {name}")
            cursor.execute(ITEMS_DDL)
    control = Pool.from_url(f"{base}/{SMALL_CONTROL}", name="control")
    shards = [ReplicaSet(Pool.from_url(f"{base}/{name}", name=name, acquire_timeout=30.0))
              for name in SMALL_DBS]  # fmt: skip
    bucket_map = BucketMap(SMALL_BUCKETS, shards=2)
    bucket_map.save_db(control)
    bucket = 6
    users = [u for u in range(5000) if bucket_map.bucket_for(u) == bucket][:20]
    others = [u for u in range(5000) if bucket_map.shard_for(u) == 0
              and bucket_map.bucket_for(u) != bucket][:60]  # fmt: skip
    # One row in four is the bucket's, interleaved by id with other buckets' rows.
    values = [(i + 1, users[i // 4 % 20] if i % 4 == 0 else others[i % 60], "n")
              for i in range(800)]  # fmt: skip
    shards[0].execute(
        "INSERT INTO items (id, user_id, note) VALUES " + ", ".join(["(%s, %s, %s)"] * 800),
        [value for row in values for value in row],
    )
    small = Small(server, control, shards, bucket_map, bucket, users, 200)
    yield small
    control.close()
    for replica_set in shards:
        replica_set.close()


def test_moving_a_bucket_back_keeps_a_write_routed_by_an_old_map(small: Small) -> None:
    """Issue 11 point 10: copy unfenced the target before the flip; sync deleted the write."""
    old_map = BucketMap.load_db(small.control)
    small.move(1)
    stale = ShardSet(small.shards, strategy=old_map, map_store=MapStore(small.control),
                     refresh_interval=None, freeze_timeout=30.0)  # fmt: skip
    user = small.users[0]

    def write_by_the_old_map(step: Step, batch: int) -> None:
        if (step, batch) == (Step.COPY, 1):
            stale.execute("INSERT INTO items VALUES (9001, %s, 'late')", (user,), key=user)

    small.move(0, checkpoint=write_by_the_old_map)
    rows = small.shards[0].primary.query("SELECT note FROM items WHERE id = 9001")
    assert rows == [{"note": "late"}]
    assert small.count(0) == small.rows + 1
    assert small.count(1) == 0


def test_abort_leaves_the_target_fenced_against_old_maps(small: Small) -> None:
    """Issue 11 point 10: abort_move left the target open to writers with an old map."""
    old_map = BucketMap.load_db(small.control)
    small.move(1)

    def crash(step: Step, batch: int) -> None:
        if step is Step.VERIFY:
            raise RuntimeError("stopped before the flip")

    with pytest.raises(RuntimeError):
        small.move(0, checkpoint=crash)
    abort_move(small.shards, small.bucket, tables=ITEMS, control=small.control)
    stale = ShardSet(small.shards, strategy=old_map, map_store=MapStore(small.control),
                     refresh_interval=None)  # fmt: skip
    user = small.users[0]
    stale.execute("INSERT INTO items VALUES (9002, %s, 'x')", (user,), key=user)
    assert small.count(0) == 0
    assert small.count(1) == small.rows + 1


def test_an_instance_with_an_old_map_reads_the_new_shard_after_its_interval(
    small: Small,
) -> None:
    """Issue 11 point 11: an instance holding the old map read the emptied source: no rows."""
    clock = ManualClock()
    reader = ShardSet(small.shards, map_store=MapStore(small.control), refresh_interval=3.0,
                      clock=clock)  # fmt: skip
    user = small.users[0]
    select = "SELECT id FROM items WHERE user_id = %s ORDER BY id"
    expected = reader.query(select, (user,), key=user)
    assert len(expected) == 10
    reads: list[tuple[Step, int, int]] = []

    def read(step: Step, batch: int) -> None:
        if batch == 0:
            found = reader.query(select, (user,), key=user)
            reads.append((step, reader.shard_for(user), len(found)))

    def wait(seconds: float) -> None:
        small.waits.append(seconds)
        clock.advance(seconds)

    small.move(1, refresh_interval=3.0, sleep=wait, checkpoint=read)
    assert all(found == 10 for _, _, found in reads), reads  # never an empty read
    assert [(step, shard) for step, shard, _ in reads][-2:] == [(Step.OPEN, 0), (Step.DELETE, 1)]
    assert reader.query(select, (user,), key=user) == expected
    assert small.count(0) == 0
    assert reader.map_polls == 2  # one one-row poll after each of the mover's two waits


def test_binary_shard_keys_move_end_to_end(small: Small) -> None:
    """Issue 11 point 13: VARBINARY keys hashed as CAST(col AS CHAR) in SQL, as bytes in Python."""
    rng = random.Random(13)
    for shard in small.shards:
        shard.execute("CREATE TABLE blobs (id BIGINT PRIMARY KEY, owner VARBINARY(16) NOT NULL, "
                      "note VARCHAR(16) NOT NULL)")  # fmt: skip
    keys = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 17))) for _ in range(3000)]
    keys = list(dict.fromkeys(key for key in keys if key.rstrip(b"\x00") == key))
    bucket = small.map.bucket_for(keys[0])
    source = small.map.shard_of_bucket(bucket)
    writer = ShardSet(small.shards, map_store=MapStore(small.control), refresh_interval=0.0)
    for number, key in enumerate(keys):
        writer.execute("INSERT INTO blobs VALUES (%s, %s, 'b')", (number, key), key=key)
    mine = [key for key in keys if small.map.bucket_for(key) == bucket]
    assert len(mine) >= 20
    assert any(not _utf8(key) for key in mine)  # bytes that are not text
    moved = move_bucket(small.shards, bucket, 1 - source, control=small.control,
                        tables=[ShardedTable("blobs", "owner", "id")],
                        sleep=small.waits.append)  # fmt: skip
    assert moved.rows == {"blobs": len(mine)}
    on = [{row["owner"] for row in shard.primary.query("SELECT owner FROM blobs")}
          for shard in small.shards]  # fmt: skip
    assert on[1 - source] >= set(mine)
    assert not on[source] & set(mine)
    for number, key in enumerate(keys):
        assert writer.query("SELECT id FROM blobs WHERE owner = %s", (key,), key=key) == [
            {"id": number}
        ]


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@contextlib.contextmanager
def _slow_log(server: Any) -> Iterator[None]:
    server.query("SET GLOBAL log_output = 'TABLE'")
    server.query("TRUNCATE TABLE mysql.slow_log")
    (filters,) = server.query("SELECT @@GLOBAL.log_slow_filter AS f")
    server.query("SET GLOBAL long_query_time = 0")
    server.query("SET GLOBAL log_slow_filter = ''")  # every statement, index range scans too
    server.query("SET GLOBAL slow_query_log = 1")
    try:
        yield
    finally:
        server.query("SET GLOBAL slow_query_log = 0")
        server.query("SET GLOBAL long_query_time = 10")
        server.query("SET GLOBAL log_slow_filter = %s", (filters["f"],))
        server.query("TRUNCATE TABLE mysql.slow_log")


def _rows_hashed(server: Any, database: str, since: Any) -> int:
    """Rows examined by the statements that evaluated a bucket predicate in ``database``."""
    (row,) = server.query(
        "SELECT COALESCE(SUM(rows_examined), 0) AS n FROM mysql.slow_log WHERE db = %s "
        "AND start_time >= %s AND sql_text LIKE %s",
        (database, since, "%SHA2(%"),
    )
    return int(row["n"])


def test_the_delete_step_and_abort_hash_each_row_at_most_twice(small: Small) -> None:
    """Issue 11 point 14: each batch rescanned from the first key (quadratic rows hashed)."""
    marks: dict[Step, Any] = {}

    def now() -> Any:
        return small.server.query("SELECT NOW(6) AS t")[0]["t"]

    def stop_before_the_flip(step: Step, batch: int) -> None:
        if step is Step.VERIFY:
            raise RuntimeError("stopped before the flip, to abort")

    def mark(step: Step, batch: int) -> None:
        if batch == 0:
            marks[step] = now()

    with _slow_log(small.server):
        # New connections: long_query_time = 0 applies to sessions opened from now on.
        base = small.server.url.rsplit("/", 1)[0]
        shards = [Pool.from_url(f"{base}/{name}", name=name) for name in SMALL_DBS]
        control = Pool.from_url(f"{base}/{SMALL_CONTROL}", name="control")
        options: dict[str, Any] = {"tables": ITEMS, "control": control, "batch_size": 25}
        try:
            with pytest.raises(RuntimeError):
                move_bucket(shards, small.bucket, 1, checkpoint=stop_before_the_flip,
                            sleep=small.waits.append, **options)  # fmt: skip
            target_rows = small.count(1)
            assert target_rows == small.rows
            since = now()
            assert abort_move(shards, small.bucket, **options) == small.rows
            assert 0 < _rows_hashed(small.server, SMALL_DBS[1], since) <= 2 * target_rows
            move_bucket(shards, small.bucket, 1, checkpoint=mark, sleep=small.waits.append,
                        **options)  # fmt: skip
        finally:
            control.close()
            for pool in shards:
                pool.close()
        source_rows = 800  # the bucket's 200 among 600 of other buckets
        hashed = _rows_hashed(small.server, SMALL_DBS[0], marks[Step.DELETE])
        assert 0 < hashed <= 2 * source_rows
    assert small.count(0) == 0


def test_a_mover_that_loses_its_lock_stops(small: Small) -> None:
    """Issue 11 point 17: GET_LOCK died with its connection unnoticed; a second mover could run."""
    lock = f"{SMALL_CONTROL}.scalekit.bucket_move.{small.bucket}"

    def kill_the_lock_connection(step: Step, batch: int) -> None:
        if (step, batch) == (Step.COPY, 1):
            (row,) = small.server.query("SELECT IS_USED_LOCK(%s) AS id", (lock,))
            small.server.query(f"KILL CONNECTION {int(row['id'])}")

    with pytest.raises(MoveError, match="lost the lock of bucket"):
        small.move(1, checkpoint=kill_the_lock_connection)
    assert small.server.query("SELECT IS_USED_LOCK(%s) AS id", (lock,)) == [{"id": None}]
    done = small.move(1)  # a rerun resumes and finishes
    assert done.resumed_from == "copy"
    assert (small.count(0), small.count(1)) == (0, small.rows)


def test_a_stale_save_is_refused_after_a_move_on_the_control_database(small: Small) -> None:
    """Issue 11 point 12 through the mover's own flip."""
    stale = BucketMap.load_db(small.control)
    small.move(1)
    with pytest.raises(ConfigError, match="derived from version 1"):
        stale.reassign({0: 1}).save_db(small.control)
    assert BucketMap.load_db(small.control).shard_of_bucket(small.bucket) == 1


# -- attacks on the move (attack11) ----------------------------------------------


def test_a_primary_key_taken_on_the_target_by_another_bucket_stops_the_copy(small: Small) -> None:
    """Per-shard AUTO_INCREMENT ids collide: the copy overwrote another user's row, and the
    move reported success."""
    stranger = next(u for u in range(5000) if small.map.shard_for(u) == 1)
    small.shards[1].execute("INSERT INTO items VALUES (1, %s, 'not yours')", (stranger,))
    with pytest.raises(MoveError, match=r"primary keys of bucket 6's rows \(1\)"):
        small.move(1)
    assert small.shards[1].primary.query("SELECT user_id, note FROM items WHERE id = 1") == [
        {"user_id": stranger, "note": "not yours"}
    ]
    abort_move(small.shards, small.bucket, tables=ITEMS, control=small.control)
    assert (small.count(0), small.count(1)) == (small.rows, 0)
    assert small.count(1, [stranger]) == 1


def test_keys_equal_under_a_case_insensitive_collation_are_not_overwritten(small: Small) -> None:
    """'Ann' and 'ann' hash to different buckets, but utf8mb4_general_ci makes them one key."""
    ddl = (
        "CREATE TABLE people (name VARCHAR(32) CHARACTER SET utf8mb4 "
        "COLLATE utf8mb4_general_ci NOT NULL PRIMARY KEY, note VARCHAR(16) NOT NULL)"
    )
    for shard in small.shards:
        shard.execute(ddl)
    upper, lower = next(
        (f"Ann{n}", f"ann{n}")
        for n in range(1000)
        if small.map.shard_for(f"Ann{n}") == 0 and small.map.shard_for(f"ann{n}") == 1
    )
    writer = ShardSet(small.shards, map_store=MapStore(small.control), refresh_interval=None)
    writer.execute("INSERT INTO people VALUES (%s, 'upper')", (upper,), key=upper)
    writer.execute("INSERT INTO people VALUES (%s, 'lower')", (lower,), key=lower)
    tables = [ShardedTable("people", "name", "name")]
    with pytest.raises(MoveError, match="case-insensitive"):
        move_bucket(small.shards, small.map.bucket_for(upper), 1, tables=tables,
                    control=small.control, sleep=small.waits.append)  # fmt: skip
    assert writer.query("SELECT name, note FROM people WHERE name = %s", (lower,), key=lower) == [
        {"name": lower, "note": "lower"}
    ]


def test_one_database_under_two_urls_is_refused(small: Small) -> None:
    """127.0.0.1 and localhost: the move copied the bucket onto itself, then deleted it."""
    url = small.server.url.rsplit("/", 1)[0] + f"/{SMALL_DBS[0]}"
    alias = ReplicaSet(Pool.from_url(url.replace("127.0.0.1", "localhost"), name="alias"))
    try:
        with pytest.raises(MoveError, match="records it as shard 0"):
            move_bucket([small.shards[0], alias], small.bucket, 1, tables=ITEMS,
                        control=small.control, sleep=small.waits.append)  # fmt: skip
    finally:
        alias.close()
    assert small.count(0) == small.rows


def test_shards_given_in_another_order_are_refused(small: Small) -> None:
    """Swapped --shard URLs: the sync deleted the bucket's rows as gone, and reported success."""
    swapped = [small.shards[1], small.shards[0]]
    with pytest.raises(MoveError, match="map's order"):
        move_bucket(swapped, small.bucket, 1, tables=ITEMS, control=small.control,
                    sleep=small.waits.append)  # fmt: skip
    assert (small.count(0), small.count(1)) == (small.rows, 0)
    small.move(1)
    assert (small.count(0), small.count(1)) == (0, small.rows)


def test_cli_errors_on_mariadb_are_one_line_without_the_password(
    small: Small, capsys: pytest.CaptureFixture[str]
) -> None:
    """A control URL with no database said "another mover is working"; a missing table or
    column ended in a pymysql traceback."""
    base = small.server.url.rsplit("/", 1)[0]
    password = base.rsplit("@", 1)[0].rsplit(":", 1)[1]
    argv = ["shards", "move", "--bucket", str(small.bucket), "--to", "1",
            "--shard", f"{base}/{SMALL_DBS[0]}", "--shard", f"{base}/{SMALL_DBS[1]}",
            "--refresh-interval", "0"]  # fmt: skip
    cases = [
        (["--control", f"{base}/", "--table", "items:user_id:id"], "names no database"),
        (["--control", f"{base}/{SMALL_CONTROL}", "--table", "nope:user_id:id"], "nope"),
        (["--control", f"{base}/{SMALL_CONTROL}", "--table", "items:owner:id"], "owner"),
    ]
    for extra, fragment in cases:
        assert cli.main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1, err
        assert fragment in err
        assert password not in err
    assert small.count(0) == small.rows


def test_reads_after_the_flip_find_every_row_on_a_lagging_target_replica(
    small: Small, mariadb_replication: MariaDBReplication
) -> None:
    """After the flip, reads of the bucket go to the target's replicas; one behind by less
    than max_lag lacked the rows just copied, so old rows read as missing."""
    mariadb_replication.wait_caught_up()
    base = mariadb_replication.replica.url.rsplit("/", 1)[0]
    replica = Pool.from_url(f"{base}/{SMALL_DBS[1]}", name="replica-b")
    target = ReplicaSet(small.shards[1].primary, [replica], max_lag=30.0, pin_after_write=40.0)
    shards = [small.shards[0], target]
    reader = ShardSet(shards, map_store=MapStore(small.control), refresh_interval=None)
    select = "SELECT COUNT(*) AS n FROM items WHERE user_id = %s"
    mariadb_replication.set_delay(3)  # the harness clears it after the test
    try:
        move_bucket(shards, small.bucket, 1, tables=ITEMS, control=small.control,
                    sleep=small.waits.append)  # fmt: skip
        reader.reload()
        counts = [reader.query(select, (user,), key=user)[0]["n"] for user in small.users]
        assert counts == [10] * len(small.users)
    finally:
        replica.close()


def test_a_target_replica_that_does_not_catch_up_holds_the_flip(
    small: Small, mariadb_replication: MariaDBReplication, capsys: pytest.CaptureFixture[str]
) -> None:
    """The flip waits for the target's replicas at most replica_timeout; one whose SQL thread
    is stopped (it takes no reads) is not waited for."""
    mariadb_replication.wait_caught_up()
    base = mariadb_replication.replica.url.rsplit("/", 1)[0]
    replica = Pool.from_url(f"{base}/{SMALL_DBS[1]}", name="replica-b")
    shards = [small.shards[0], ReplicaSet(small.shards[1].primary, [replica])]
    options: dict[str, Any] = {"tables": ITEMS, "control": small.control,
                               "sleep": small.waits.append}  # fmt: skip
    mariadb_replication.set_delay(20)
    primary = small.server.url.rsplit("/", 1)[0]
    argv = ["shards", "move", "--bucket", str(small.bucket), "--to", "1",
            "--control", f"{primary}/{SMALL_CONTROL}", "--table", "items:user_id:id",
            "--shard", f"{primary}/{SMALL_DBS[0]}",
            "--shard", f"{primary}/{SMALL_DBS[1]},{base}/{SMALL_DBS[1]}",
            "--replica-timeout", "1", "--refresh-interval", "0"]  # fmt: skip
    try:
        assert cli.main(argv) == 2  # the command takes a shard's replicas after its primary
        assert "replica 'shard1-replica1' of shard 1 has not applied" in capsys.readouterr().err
        with pytest.raises(MoveError, match="replica 'replica-b' of shard 1 has not applied"):
            move_bucket(shards, small.bucket, 1, replica_timeout=1.0, **options)
        assert BucketMap.load_db(small.control).shard_of_bucket(small.bucket) == 0
        mariadb_replication.stop_replication(only="sql")
        done = move_bucket(shards, small.bucket, 1, replica_timeout=1.0, **options)
        assert done.resumed_from == "flip"
    finally:
        replica.close()
    assert (small.count(0), small.count(1)) == (0, small.rows)


def test_a_declared_primary_key_that_is_not_the_tables_is_refused(small: Small) -> None:
    """``--table notes:user_id:id`` where the key is (user_id, id): the delete step removed
    the rows of users in other buckets that share an id, and the move reported success."""
    for shard in small.shards:
        shard.execute("CREATE TABLE notes (user_id BIGINT NOT NULL, id INT NOT NULL, "
                      "body VARCHAR(16) NOT NULL, PRIMARY KEY (user_id, id))")  # fmt: skip
    other = next(u for u in range(5000) if small.map.shard_for(u) == 0
                 and small.map.bucket_for(u) != small.bucket)  # fmt: skip
    small.shards[0].execute("INSERT INTO notes VALUES (%s, 1, 'mine'), (%s, 1, 'not mine')",
                            (small.users[0], other))  # fmt: skip
    with pytest.raises(MoveError, match=r"declare the table's primary key, e\.g\. notes:user_id:"
                                        r"user_id,id"):  # fmt: skip
        move_bucket(small.shards, small.bucket, 1, tables=[ShardedTable("notes", "user_id", "id")],
                    control=small.control, sleep=small.waits.append)  # fmt: skip
    assert len(small.shards[0].primary.query("SELECT * FROM notes")) == 2
    move_bucket(small.shards, small.bucket, 1, control=small.control, sleep=small.waits.append,
                tables=[ShardedTable("notes", "user_id", ("user_id", "id"))])  # fmt: skip
    assert small.shards[0].primary.query("SELECT body FROM notes") == [{"body": "not mine"}]
