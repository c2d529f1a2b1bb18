"""Bucket moves on SQLite shards: the steps, writes during the copy, crashes and reruns."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import pytest
from shard_sqlite import control_pool, sqlite_shards

from scalekit import cli
from scalekit._clock import ManualClock
from scalekit.db import (
    BucketMap,
    ConfigError,
    ConnectionLost,
    MapStore,
    MoveError,
    MoveProgress,
    MoveResult,
    Pool,
    ReplicaSet,
    ShardedTable,
    ShardSet,
    abort_move,
    move_bucket,
    plan_move,
)
from scalekit.db.shards import Step, move_steps, mover

BUCKETS = 16
TABLES = [ShardedTable("tasks", "user_id", "id")]


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.shards = sqlite_shards(tmp_path, 2)
        self.control = control_pool(tmp_path)
        self.map = BucketMap(BUCKETS, shards=2)
        self.map.save_db(self.control)
        self.bucket = 4  # on shard 0
        self.waits: list[float] = []  # the mover's waits for instances to see the new map
        self.users = [u for u in range(400) if self.map.bucket_for(u) == self.bucket][:10]
        self.others = [u for u in range(400) if self.map.shard_for(u) == 0
                       and self.map.bucket_for(u) != self.bucket][:5]  # fmt: skip
        rows = [(user, number) for user in self.users + self.others for number in range(30)]
        values = [(i + 1, user, f"task {i + 1}") for i, (user, _) in enumerate(rows)]
        self.primary(0).execute(
            "INSERT INTO tasks (id, user_id, title) VALUES "
            + ", ".join(["(%s, %s, %s)"] * len(values)),
            [value for row in values for value in row],
        )

    def primary(self, index: int) -> Pool:
        return self.shards[index].primary

    def rows(self, index: int, users: list[int]) -> list[dict[str, Any]]:
        marks = ", ".join(["%s"] * len(users))
        return self.primary(index).query(
            f"SELECT * FROM tasks WHERE user_id IN ({marks}) ORDER BY id", users
        )

    def move(self, **options: Any) -> MoveResult:
        options.setdefault("batch_size", 40)
        options.setdefault("sleep", self.waits.append)
        return move_bucket(self.shards, self.bucket, 1, tables=TABLES, control=self.control,
                           **options)  # fmt: skip


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def _assert_moved(setup: Setup, expected: list[dict[str, Any]]) -> None:
    assert setup.rows(1, setup.users) == expected
    assert setup.rows(0, setup.users) == []
    assert len(setup.rows(0, setup.others)) == 5 * 30  # other buckets untouched
    bucket_map = BucketMap.load_db(setup.control)
    assert bucket_map.shard_of_bucket(setup.bucket) == 1
    assert bucket_map.version == 2
    fence = setup.primary(0).query("SELECT state FROM scalekit_bucket_fence WHERE bucket = %s",
                                   (setup.bucket,))  # fmt: skip
    assert fence == [{"state": "moved"}]


def test_move_copies_verifies_flips_and_deletes(setup: Setup) -> None:
    before = setup.rows(0, setup.users)
    seen: list[MoveProgress] = []
    result = setup.move(progress=seen.append)
    assert (result.source, result.target, result.version, result.rows) == (0, 1, 2, {"tasks": 300})
    _assert_moved(setup, before)
    steps = ["copy", "sync", "verify", "delete"]
    assert [step for step in steps if any(event.step == step for event in seen)] == steps
    again = setup.move()
    assert again.already


def test_writes_during_the_copy_reach_the_target(setup: Setup) -> None:
    source = setup.primary(0)
    user = setup.users[0]
    done = False

    def write_during_copy(event: MoveProgress) -> None:
        nonlocal done
        if event.step == "copy" and not done:
            done = True
            source.execute("INSERT INTO tasks (id, user_id, title) VALUES (9999, %s, 'new')",
                           (user,))  # fmt: skip
            source.execute("UPDATE tasks SET title = 'changed', version = 1 WHERE id = 1")
            source.execute("DELETE FROM tasks WHERE id = 2")

    setup.move(progress=write_during_copy)
    moved = {row["id"]: row for row in setup.rows(1, setup.users)}
    assert moved[9999]["title"] == "new"
    assert moved[1]["title"] == "changed"
    assert moved[1]["version"] == 1
    assert 2 not in moved
    assert len(moved) == 300


class _Crash(Exception):
    pass


def crash_at(step: Step, batch: int) -> mover.Checkpoint:
    """A checkpoint that stops the mover at ``(step, batch)``, as a SIGKILL would."""

    def checkpoint(at: Step, done: int) -> None:
        if (at, done) == (step, batch):
            raise _Crash(f"{step}:{batch}")

    return checkpoint


POINTS = [(Step.COPY, 0), (Step.COPY, 2), (Step.SYNC, 0), (Step.SYNC, 1), (Step.VERIFY, 1),
          (Step.FLIP, 0), (Step.OPEN, 0), (Step.DELETE, 0), (Step.DELETE, 1)]  # fmt: skip


@pytest.mark.parametrize(("step", "batch"), POINTS)
def test_a_crash_at_any_step_then_a_rerun_finishes_the_move(
    setup: Setup, step: Step, batch: int
) -> None:
    before = setup.rows(0, setup.users)
    with pytest.raises(_Crash):
        setup.move(checkpoint=crash_at(step, batch))
    plan = plan_move(setup.shards, setup.bucket, 1, tables=TABLES, control=setup.control)
    assert plan.step is step
    result = setup.move()
    assert result.resumed_from == step
    _assert_moved(setup, before)


def test_verification_mismatch_goes_back_to_sync(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = setup.primary(1)
    original = move_steps.Move.verify
    calls = 0

    def tamper_then_verify(self: move_steps.Move) -> Step:
        nonlocal calls
        calls += 1
        if calls == 1:  # a stray row on the target: sync must remove it
            target.execute("INSERT INTO tasks (id, user_id, title) VALUES (5000, %s, 'stray')",
                           (setup.users[0],))  # fmt: skip
        return original(self)

    monkeypatch.setattr(move_steps.Move, "verify", tamper_then_verify)
    before = setup.rows(0, setup.users)
    setup.move()
    assert calls == 2
    _assert_moved(setup, before)


def test_dry_run_plans_and_changes_nothing(setup: Setup) -> None:
    plan = plan_move(setup.shards, setup.bucket, 1, tables=TABLES, control=setup.control)
    assert (plan.source, plan.target, plan.step, plan.rows) == (0, 1, "copy", {"tasks": 300})
    assert "bucket 4: shard 0 -> shard 1" in plan.summary()
    assert len(setup.rows(1, setup.users)) == 0


def test_unfinished_move_elsewhere_and_bad_arguments_are_refused(setup: Setup) -> None:
    with pytest.raises(_Crash):
        setup.move(checkpoint=crash_at(Step.SYNC, 0))
    third = ReplicaSet(Pool.from_url(f"sqlite:///{setup.tmp_path}/s2.db"))
    with pytest.raises(MoveError, match=r"3 were given"):
        move_bucket([*setup.shards, third], setup.bucket, 1, tables=TABLES, control=setup.control)
    with pytest.raises(MoveError, match="outside"):
        move_bucket(setup.shards, 99, 1, tables=TABLES, control=setup.control)
    with pytest.raises(MoveError, match="table:shard_key:primary_key"):
        ShardedTable.parse("tasks")


def test_cli_move_and_dry_run(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    urls = ["--shard", f"sqlite:///{setup.tmp_path}/shard0.db",
            "--shard", f"sqlite:///{setup.tmp_path}/shard1.db"]  # fmt: skip
    common = ["shards", "move", "--bucket", str(setup.bucket), "--to", "1",
              "--control", f"sqlite:///{setup.tmp_path}/control.db", *urls,
              "--table", "tasks:user_id:id", "--batch-size", "50",
              "--refresh-interval", "0"]  # fmt: skip
    assert cli.main([*common, "--dry-run"]) == 0
    assert "tasks: 300 rows" in capsys.readouterr().out
    before = setup.rows(0, setup.users)
    assert cli.main(common) == 0
    out = capsys.readouterr().out
    assert "copy tasks: 300/300 rows" in out  # plain lines when not on a terminal
    assert "bucket 4 moved: shard 0 -> shard 1, map version 2" in out
    _assert_moved(setup, before)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_cli_shows_a_rich_progress_bar_on_a_terminal(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    screen = _Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    argv = ["shards", "move", "--bucket", str(setup.bucket), "--to", "1",
            "--control", f"sqlite:///{setup.tmp_path}/control.db",
            "--shard", f"sqlite:///{setup.tmp_path}/shard0.db",
            "--shard", f"sqlite:///{setup.tmp_path}/shard1.db",
            "--table", "tasks:user_id:id", "--refresh-interval", "0"]  # fmt: skip
    assert cli.main(argv) == 0
    text = screen.getvalue()
    assert "\x1b[" in text  # terminal control codes: rich drew the bars
    assert "copy tasks" in text
    assert "copy tasks: 300/300 rows" not in text  # not the plain log lines


def test_abort_rolls_back_an_unflipped_move(setup: Setup) -> None:
    before = setup.rows(0, setup.users)
    with pytest.raises(_Crash):
        setup.move(checkpoint=crash_at(Step.VERIFY, 1))
    assert len(setup.rows(1, setup.users)) == 300  # copied, frozen, not flipped
    deleted = abort_move(setup.shards, setup.bucket, tables=TABLES, control=setup.control)
    assert deleted == 300
    assert setup.rows(1, setup.users) == []
    assert setup.rows(0, setup.users) == before
    assert BucketMap.load_db(setup.control).shard_of_bucket(setup.bucket) == 0
    fences = [shard.query("SELECT state FROM scalekit_bucket_fence WHERE bucket >= 0") for shard in
              (setup.primary(0), setup.primary(1))]  # fmt: skip
    # Writes to the bucket flow again on the source; the target turns stale maps away.
    assert fences == [[{"state": "open"}], [{"state": "moved"}]]
    with pytest.raises(MoveError, match="no unfinished move"):
        abort_move(setup.shards, setup.bucket, tables=TABLES, control=setup.control)
    assert setup.move().resumed_from is None  # a fresh move works afterwards


def test_abort_after_the_flip_is_refused(setup: Setup) -> None:
    with pytest.raises(_Crash):
        setup.move(checkpoint=crash_at(Step.DELETE, 0))
    with pytest.raises(MoveError, match="flipped the map"):
        abort_move(setup.shards, setup.bucket, tables=TABLES, control=setup.control)


def test_cli_abort(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(_Crash):
        setup.move(checkpoint=crash_at(Step.SYNC, 0))
    argv = ["shards", "move", "--bucket", str(setup.bucket), "--abort",
            "--control", f"sqlite:///{setup.tmp_path}/control.db",
            "--shard", f"sqlite:///{setup.tmp_path}/shard0.db",
            "--shard", f"sqlite:///{setup.tmp_path}/shard1.db",
            "--table", "tasks:user_id:id"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "rolled back: 300 copied rows deleted" in capsys.readouterr().out
    assert cli.main(argv) == 2
    assert "no unfinished move" in capsys.readouterr().err


class _Interleaved:
    """Both shards with 2,000 rows; a quarter of shard 0's are the bucket, ids interleaved."""

    ROWS = 2000

    def __init__(self, tmp_path: Path) -> None:
        self.shards = sqlite_shards(tmp_path, 2)
        self.control = control_pool(tmp_path)
        bucket_map = BucketMap(BUCKETS, shards=2)
        bucket_map.save_db(self.control)
        self.bucket = 4
        mine = [u for u in range(4000) if bucket_map.bucket_for(u) == self.bucket]
        for shard in (0, 1):
            others = [u for u in range(4000) if bucket_map.shard_for(u) == shard
                      and bucket_map.bucket_for(u) != self.bucket]  # fmt: skip

            def user(i: int, shard: int = shard, others: list[int] = others) -> int:
                return mine[i % len(mine)] if shard == 0 and i % 4 == 0 else others[i % len(others)]

            # Even ids on shard 0, odd on shard 1: the bucket's rows interleave with others.
            values = [(2 * i + 2 - shard, user(i)) for i in range(self.ROWS)]
            for start in range(0, self.ROWS, 300):
                chunk = values[start : start + 300]
                self.shards[shard].execute(
                    "INSERT INTO tasks (id, user_id, title) VALUES "
                    + ", ".join(["(%s, %s, 't')"] * len(chunk)),
                    [value for row in chunk for value in row],
                )
        self.hashed = 0

    def move(self, to: int, **options: Any) -> MoveResult:
        return move_bucket(self.shards, self.bucket, to, tables=TABLES, control=self.control,
                           batch_size=20, sleep=lambda seconds: None, **options)  # fmt: skip


@pytest.fixture
def interleaved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> _Interleaved:
    """Shards as above, counting the rows SQLite hashes for a bucket predicate."""
    from scalekit.db.shards import dialect

    setup = _Interleaved(tmp_path)
    real = dialect._sqlite_bucket

    def counting(value: object, buckets: int) -> int:
        setup.hashed += 1
        return real(value, buckets)

    monkeypatch.setattr(dialect, "_sqlite_bucket", counting)
    return setup


def test_the_delete_step_hashes_each_row_at_most_twice(interleaved: _Interleaved) -> None:
    # Issue 11 point 14: each delete batch rescanned from the first key (rows
    # hashed grew quadratically: 141,158 for 7,991 rows).
    at: dict[Step, int] = {}

    def checkpoint(step: Step, batch: int) -> None:
        if batch == 0:
            at[step] = interleaved.hashed

    assert interleaved.move(1, checkpoint=checkpoint).rows == {"tasks": _Interleaved.ROWS // 4}
    assert interleaved.hashed - at[Step.DELETE] <= 2 * _Interleaved.ROWS


def test_abort_hashes_each_row_at_most_twice(interleaved: _Interleaved) -> None:
    with pytest.raises(_Crash):
        interleaved.move(1, checkpoint=crash_at(Step.VERIFY, 0))
    target_rows = _Interleaved.ROWS + _Interleaved.ROWS // 4
    assert interleaved.shards[1].query("SELECT COUNT(*) AS n FROM tasks") == [{"n": target_rows}]
    before = interleaved.hashed
    deleted = abort_move(interleaved.shards, interleaved.bucket, tables=TABLES,
                         control=interleaved.control, batch_size=20)  # fmt: skip
    assert deleted == _Interleaved.ROWS // 4
    assert interleaved.hashed - before <= 2 * target_rows


def test_moving_a_bucket_back_keeps_a_write_routed_by_an_old_map(setup: Setup) -> None:
    # Issue 11 point 10: copy removed the target's fence before the flip, so an
    # instance with a map from before the first move wrote to the target
    # unguarded, and sync deleted that acknowledged row as gone from the source.
    old_map = BucketMap.load_db(setup.control)
    setup.move()  # 0 -> 1, map version 2
    stale = ShardSet(setup.shards, strategy=old_map, map_store=MapStore(setup.control),
                     refresh_interval=None, freeze_timeout=10.0)  # fmt: skip
    user = setup.users[0]

    def write_by_the_old_map(step: Step, batch: int) -> None:
        if (step, batch) == (Step.COPY, 1):
            stale.execute("INSERT INTO tasks (id, user_id, title) VALUES (7777, %s, 'late')",
                          (user,), key=user)  # fmt: skip

    move_bucket(setup.shards, setup.bucket, 0, tables=TABLES, control=setup.control,
                batch_size=40, checkpoint=write_by_the_old_map,
                sleep=setup.waits.append)  # fmt: skip
    assert [row["title"] for row in setup.rows(0, [user]) if row["id"] == 7777] == ["late"]
    assert setup.rows(1, setup.users) == []


def test_abort_leaves_the_target_fenced_against_old_maps(setup: Setup) -> None:
    # Issue 11 point 10: abort_move left the target open to writers with an old map.
    old_map = BucketMap.load_db(setup.control)
    setup.move()  # 0 -> 1
    with pytest.raises(_Crash):
        move_bucket(setup.shards, setup.bucket, 0, tables=TABLES, control=setup.control,
                    checkpoint=crash_at(Step.VERIFY, 0), sleep=setup.waits.append)  # fmt: skip
    abort_move(setup.shards, setup.bucket, tables=TABLES, control=setup.control)
    stale = ShardSet(setup.shards, strategy=old_map, map_store=MapStore(setup.control),
                     refresh_interval=None)  # fmt: skip
    user = setup.users[0]
    stale.execute("INSERT INTO tasks (id, user_id, title) VALUES (7778, %s, 'x')", (user,),
                  key=user)  # fmt: skip
    assert setup.rows(0, [user]) == []  # not on the shard the bucket left
    assert [row["id"] for row in setup.rows(1, [user])].count(7778) == 1
    assert stale.strategy.shard_for(user) == 1  # the fence made it reload


def test_a_stale_reader_follows_the_move_within_its_refresh_interval(setup: Setup) -> None:
    # Issue 11 point 11: an instance holding the old map read the (emptied)
    # source and got nothing, with no error.
    clock = ManualClock()
    reader = ShardSet(setup.shards, map_store=MapStore(setup.control), refresh_interval=5.0,
                      clock=clock)  # fmt: skip
    user = setup.users[0]
    select = "SELECT id FROM tasks WHERE user_id = %s ORDER BY id"
    expected = reader.query(select, (user,), key=user)
    assert len(expected) == 30
    seen: dict[Step, tuple[int, list[dict[str, Any]]]] = {}

    def read(step: Step, batch: int) -> None:
        if batch == 0:
            seen[step] = (reader.shard_for(user), reader.query(select, (user,), key=user))

    def wait(seconds: float) -> None:
        setup.waits.append(seconds)
        clock.advance(seconds)

    setup.move(refresh_interval=5.0, sleep=wait, checkpoint=read)
    assert setup.waits == [5.0 + mover.MAP_WAIT_MARGIN] * 2  # flip -> open -> delete
    assert seen[Step.OPEN] == (0, expected)  # flipped, not yet seen: the source still has it
    assert seen[Step.DELETE] == (1, expected)  # polled after the wait: the target
    assert reader.query(select, (user,), key=user) == expected


def test_map_polls_cost_one_row_per_interval(setup: Setup) -> None:
    clock = ManualClock()
    reader = ShardSet(setup.shards, map_store=MapStore(setup.control), refresh_interval=2.0,
                      clock=clock)  # fmt: skip
    for _ in range(50):
        reader.query("SELECT 1 AS one", key=setup.users[0])
    assert reader.map_polls == 0
    clock.advance(2.0)
    for _ in range(50):
        reader.query("SELECT 1 AS one", key=setup.users[0])
        reader.for_key(setup.users[1])
    assert reader.map_polls == 1
    never = ShardSet(setup.shards, map_store=MapStore(setup.control), refresh_interval=None,
                     clock=clock)  # fmt: skip
    clock.advance(100.0)
    never.query("SELECT 1 AS one", key=1)
    assert never.map_polls == 0


def test_a_second_mover_on_sqlite_is_refused(setup: Setup) -> None:
    # Issue 11 point 17: SQLite had no mover lock; two movers could run at once.
    refused: list[str] = []

    def second_mover(step: Step, batch: int) -> None:
        if (step, batch) == (Step.COPY, 1):
            with pytest.raises(MoveError, match="another mover") as caught:
                move_bucket(setup.shards, setup.bucket, 1, tables=TABLES, control=setup.control,
                            sleep=setup.waits.append)  # fmt: skip
            refused.append(str(caught.value))
            with pytest.raises(MoveError, match="another mover"):
                abort_move(setup.shards, setup.bucket, tables=TABLES, control=setup.control)

    setup.move(checkpoint=second_mover)
    assert len(refused) == 1
    assert setup.move().already  # the lock was released


# -- attacks on the move (attack11) ----------------------------------------------


def test_a_control_failure_right_after_the_flip_still_opens_the_bucket(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flip recorded ``delete`` and a separate write ``open``: a failure between the two
    resumed at ``delete``, skipped ``open``, and left the bucket frozen on its new shard."""
    execute = setup.control.execute
    failed: list[str] = []

    def flaky(sql: str, params: Any = None, **options: Any) -> Any:
        flipped = BucketMap.load_db(setup.control).version == 2
        if flipped and not failed and sql.startswith("UPDATE scalekit_bucket_moves"):
            failed.append(sql)
            raise ConnectionLost("control database gone")
        return execute(sql, params, **options)

    monkeypatch.setattr(setup.control, "execute", flaky)
    with pytest.raises(ConnectionLost):
        setup.move()
    assert failed
    setup.move()  # the rerun
    fence = "SELECT state FROM scalekit_bucket_fence WHERE bucket = %s"
    fences = [setup.primary(index).query(fence, (setup.bucket,)) for index in (0, 1)]
    assert fences == [[{"state": "moved"}], [{"state": "open"}]]
    writer = ShardSet(setup.shards, map_store=MapStore(setup.control), freeze_timeout=0.0)
    user = setup.users[0]
    writer.execute("INSERT INTO tasks (id, user_id, title) VALUES (7000, %s, 'after')", (user,),
                   key=user)  # fmt: skip
    assert setup.rows(1, [user])[-1]["title"] == "after"


def test_a_row_with_a_null_shard_key_stays_and_does_not_stop_the_move(setup: Setup) -> None:
    """SQLite's bucket function raised on NULL: the move failed on any such row."""
    for index in (0, 1):
        setup.primary(index).execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, user_id INTEGER)")
    user = setup.users[0]
    setup.primary(0).execute("INSERT INTO notes VALUES (1, NULL), (2, %s)", (user,))
    before = setup.rows(0, setup.users)
    tables = [*TABLES, ShardedTable("notes", "user_id", "id")]
    move_bucket(setup.shards, setup.bucket, 1, tables=tables, control=setup.control,
                sleep=setup.waits.append)  # fmt: skip
    _assert_moved(setup, before)
    assert setup.primary(0).query("SELECT * FROM notes") == [{"id": 1, "user_id": None}]
    assert setup.primary(1).query("SELECT * FROM notes") == [{"id": 2, "user_id": user}]


def test_one_database_given_as_two_shards_is_refused(setup: Setup, tmp_path: Path) -> None:
    """The same file under two paths: the move copied onto itself, then deleted every row."""
    (tmp_path / "alias").mkdir()
    (tmp_path / "alias" / "shard1.db").symlink_to(tmp_path / "shard0.db")
    alias = ReplicaSet(Pool.from_url(f"sqlite:///{tmp_path}/alias/shard1.db"))
    before = setup.rows(0, setup.users)
    with pytest.raises(MoveError, match="records it as shard 0"):
        move_bucket([setup.shards[0], alias], setup.bucket, 1, tables=TABLES,
                    control=setup.control, sleep=setup.waits.append)  # fmt: skip
    assert setup.rows(0, setup.users) == before
    with pytest.raises(ConfigError, match="records it as shard 0"):
        ShardSet([setup.shards[0], alias], strategy=setup.map).execute(
            "UPDATE tasks SET title = 'x' WHERE user_id = %s", (1,), key=1
        )


def test_shards_given_in_another_order_are_refused(setup: Setup) -> None:
    """Swapped shards: the sync deleted every row of the bucket as gone, and reported success."""
    before = setup.rows(0, setup.users)
    swapped = [setup.shards[1], setup.shards[0]]
    with pytest.raises(MoveError, match="map's order"):  # no shard recorded yet
        move_bucket(swapped, setup.bucket, 1, tables=TABLES, control=setup.control,
                    sleep=setup.waits.append)  # fmt: skip
    writer = ShardSet(setup.shards, strategy=setup.map)
    for user in (setup.users[0], next(u for u in range(99) if setup.map.shard_for(u) == 1)):
        # A guarded write records the index of the shard it goes to.
        writer.execute("UPDATE tasks SET version = 1 WHERE user_id = %s", (user,), key=user)
    with pytest.raises(MoveError, match="records it as shard"):
        move_bucket(swapped, setup.bucket, 1, tables=TABLES, control=setup.control,
                    sleep=setup.waits.append)  # fmt: skip
    assert len(setup.rows(0, setup.users)) == len(before)
    setup.move()  # in the right order


def test_a_declared_primary_key_that_is_not_the_tables_is_refused(setup: Setup) -> None:
    """Rows are deleted by the declared key: ``id`` where the key is (user_id, id) deleted
    other buckets' rows sharing an id on the source."""
    for index in (0, 1):
        setup.primary(index).execute(
            "CREATE TABLE notes (user_id INTEGER NOT NULL, id INTEGER NOT NULL, "
            "PRIMARY KEY (user_id, id))"
        )
    setup.primary(0).execute("INSERT INTO notes VALUES (%s, 1), (%s, 1)",
                             (setup.users[0], setup.others[0]))  # fmt: skip
    with pytest.raises(MoveError, match="notes:user_id:user_id,id"):
        move_bucket(setup.shards, setup.bucket, 1, tables=[ShardedTable("notes", "user_id", "id")],
                    control=setup.control, sleep=setup.waits.append)  # fmt: skip
    assert len(setup.primary(0).query("SELECT * FROM notes")) == 2


def test_a_rerun_must_declare_the_same_tables(setup: Setup) -> None:
    """A rerun without one of the tables flipped the map with that table's rows (and the
    writes made to them during the copy) left behind on the source."""
    for index in (0, 1):
        setup.primary(index).execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, user_id INTEGER)")
    setup.primary(0).execute("INSERT INTO notes VALUES (1, %s)", (setup.users[0],))
    both = [*TABLES, ShardedTable("notes", "user_id", "id")]
    options: dict[str, Any] = {"control": setup.control, "sleep": setup.waits.append}
    with pytest.raises(_Crash):
        move_bucket(setup.shards, setup.bucket, 1, tables=both,
                    checkpoint=crash_at(Step.SYNC, 0), **options)  # fmt: skip
    with pytest.raises(MoveError, match="moves the tables notes:user_id:id, tasks:user_id:id"):
        move_bucket(setup.shards, setup.bucket, 1, tables=TABLES, **options)
    with pytest.raises(MoveError, match="same --table declarations"):
        abort_move(setup.shards, setup.bucket, tables=TABLES, control=setup.control)
    move_bucket(setup.shards, setup.bucket, 1, tables=both, **options)
    assert setup.primary(0).query("SELECT * FROM notes") == []
    assert setup.primary(1).query("SELECT * FROM notes") == [{"id": 1, "user_id": setup.users[0]}]
