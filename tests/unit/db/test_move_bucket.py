"""Bucket moves on SQLite shards: the steps, writes during the copy, crashes and reruns."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import pytest
from shard_sqlite import control_pool, sqlite_shards

from scalekit import cli
from scalekit.db import (
    BucketMap,
    MoveError,
    MoveProgress,
    Pool,
    ReplicaSet,
    ShardedTable,
    abort_move,
    migrate,
    move_bucket,
    plan_move,
)

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

    def move(self, **options: Any) -> migrate.MoveResult:
        options.setdefault("batch_size", 40)
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


@pytest.mark.parametrize("point", ["copy", "after_copy", "sync", "verify", "after_flip", "delete"])
def test_a_crash_at_any_step_then_a_rerun_finishes_the_move(
    setup: Setup, point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = setup.rows(0, setup.users)

    def crash(name: str) -> None:
        if name == point:
            raise _Crash(name)

    monkeypatch.setattr(migrate, "_kill_point", crash)
    with pytest.raises(_Crash):
        setup.move()
    plan = plan_move(setup.shards, setup.bucket, 1, tables=TABLES, control=setup.control)
    resume_at = {"copy": "copy", "after_copy": "copy", "sync": "sync", "verify": "verify",
                 "after_flip": "delete", "delete": "delete"}  # fmt: skip
    assert plan.step == resume_at[point]
    monkeypatch.setattr(migrate, "_kill_point", lambda name: None)
    result = setup.move()
    assert result.resumed_from is not None
    _assert_moved(setup, before)


def test_verification_mismatch_goes_back_to_sync(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = setup.primary(1)
    original = migrate._Move.verify
    calls = 0

    def tamper_then_verify(self: migrate._Move) -> dict[str, int]:
        nonlocal calls
        calls += 1
        if calls == 1:  # a stray row on the target: sync must remove it
            target.execute("INSERT INTO tasks (id, user_id, title) VALUES (5000, %s, 'stray')",
                           (setup.users[0],))  # fmt: skip
        return original(self)

    monkeypatch.setattr(migrate._Move, "verify", tamper_then_verify)
    before = setup.rows(0, setup.users)
    setup.move()
    assert calls == 2
    _assert_moved(setup, before)


def test_dry_run_plans_and_changes_nothing(setup: Setup) -> None:
    plan = plan_move(setup.shards, setup.bucket, 1, tables=TABLES, control=setup.control)
    assert (plan.source, plan.target, plan.step, plan.rows) == (0, 1, "copy", {"tasks": 300})
    assert "bucket 4: shard 0 -> shard 1" in plan.summary()
    assert len(setup.rows(1, setup.users)) == 0


def test_unfinished_move_elsewhere_and_bad_arguments_are_refused(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(name: str) -> None:
        if name == "after_copy":
            raise _Crash(name)

    monkeypatch.setattr(migrate, "_kill_point", crash)
    with pytest.raises(_Crash):
        setup.move()
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
              "--table", "tasks:user_id:id", "--batch-size", "50"]  # fmt: skip
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
            "--table", "tasks:user_id:id"]  # fmt: skip
    assert cli.main(argv) == 0
    text = screen.getvalue()
    assert "\x1b[" in text  # terminal control codes: rich drew the bars
    assert "copy tasks" in text
    assert "copy tasks: 300/300 rows" not in text  # not the plain log lines


def test_abort_rolls_back_an_unflipped_move(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    before = setup.rows(0, setup.users)

    def crash(name: str) -> None:
        if name == "verify":
            raise _Crash(name)

    monkeypatch.setattr(migrate, "_kill_point", crash)
    with pytest.raises(_Crash):
        setup.move()
    assert len(setup.rows(1, setup.users)) == 300  # copied, frozen, not flipped
    deleted = abort_move(setup.shards, setup.bucket, tables=TABLES, control=setup.control)
    assert deleted == 300
    assert setup.rows(1, setup.users) == []
    assert setup.rows(0, setup.users) == before
    assert BucketMap.load_db(setup.control).shard_of_bucket(setup.bucket) == 0
    fence = setup.primary(0).query("SELECT state FROM scalekit_bucket_fence")
    assert fence == []  # writes to the bucket flow again
    with pytest.raises(MoveError, match="no unfinished move"):
        abort_move(setup.shards, setup.bucket, tables=TABLES, control=setup.control)
    monkeypatch.setattr(migrate, "_kill_point", lambda name: None)
    assert setup.move().resumed_from is None  # a fresh move works afterwards


def test_abort_after_the_flip_is_refused(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(name: str) -> None:
        if name == "after_flip":
            raise _Crash(name)

    monkeypatch.setattr(migrate, "_kill_point", crash)
    with pytest.raises(_Crash):
        setup.move()
    with pytest.raises(MoveError, match="flipped the map"):
        abort_move(setup.shards, setup.bucket, tables=TABLES, control=setup.control)


def test_cli_abort(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def crash(name: str) -> None:
        if name == "after_copy":
            raise _Crash(name)

    monkeypatch.setattr(migrate, "_kill_point", crash)
    with pytest.raises(_Crash):
        setup.move()
    argv = ["shards", "move", "--bucket", str(setup.bucket), "--to", "1", "--abort",
            "--control", f"sqlite:///{setup.tmp_path}/control.db",
            "--shard", f"sqlite:///{setup.tmp_path}/shard0.db",
            "--shard", f"sqlite:///{setup.tmp_path}/shard1.db",
            "--table", "tasks:user_id:id"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "rolled back: 300 copied rows deleted" in capsys.readouterr().out
    assert cli.main(argv) == 1
    assert "no unfinished move" in capsys.readouterr().err
