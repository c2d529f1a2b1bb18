"""``scalekit shards plan``: what growing the shard count moves."""

from __future__ import annotations

from pathlib import Path

import pytest

from scalekit import cli
from scalekit.db import BucketMap, ConfigError, Pool, ReplicaSet, ShardSet


def test_plan_jump_four_to_five(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["shards", "plan", "--strategy", "jump", "--from", "4", "--to", "5"]) == 0
    out = capsys.readouterr().out
    assert "JumpHash(4) -> JumpHash(5)" in out
    assert "19989 of 100000 keys move (19.99%)" in out
    assert "shard 0 -> shard 4" in out
    assert "shard 0 -> shard 1" not in out


def test_plan_modulo_moves_most_keys(capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["shards", "plan", "--strategy", "modulo", "--from", "4", "--to", "5"])
    assert "80000 of 100000 keys move (80.00%)" in capsys.readouterr().out


def test_plan_bucket_lists_buckets_and_saves_the_map(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "next.json"
    argv = ["shards", "plan", "--strategy", "bucket", "--from", "4", "--to", "5"]
    assert cli.main([*argv, "--save", str(path)]) == 0
    out = capsys.readouterr().out
    assert "204 of 1024 buckets move (19.92%)" in out
    assert "820:0->4" in out
    saved = BucketMap.load(path)
    assert (saved.shard_count, saved.version) == (5, 2)


def _one_line_error(capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert "error: " in lines[0]
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_bad_arguments_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["shards", "plan", "--strategy", "ring", "--from", "4", "--to", "5"])
    assert caught.value.code == 2
    _one_line_error(capsys, "ring", "--help")
    assert cli.main(["shards", "plan", "--from", "0", "--to", "5"]) == 2
    _one_line_error(capsys, "shard count")


def test_plan_with_a_missing_map_file_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Issue 11 point 16.
    missing = tmp_path / "missing.json"
    assert cli.main(["shards", "plan", "--map", str(missing), "--to", "5"]) == 2
    _one_line_error(capsys, "missing.json", "No such file")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    assert cli.main(["shards", "plan", "--map", str(broken), "--to", "5"]) == 2
    _one_line_error(capsys)
    other = tmp_path / "other.json"
    other.write_text('{"format": "x"}', encoding="utf-8")
    assert cli.main(["shards", "plan", "--map", str(other), "--to", "5"]) == 2
    _one_line_error(capsys, "not a scalekit bucket map")


def test_plan_from_a_map_needs_no_from(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Issue 11 point 16: --from was required even with --map.
    path = tmp_path / "map.json"
    BucketMap.uniform(4).save(path)
    assert cli.main(["shards", "plan", "--map", str(path), "--to", "5"]) == 0
    assert "204 of 1024 buckets move" in capsys.readouterr().out
    assert cli.main(["shards", "plan", "--to", "5"]) == 2
    _one_line_error(capsys, "--from N", "--map FILE")
    assert cli.main(["shards", "plan", "--from", "4", "--to", "5", "--save", "x.json"]) == 2
    _one_line_error(capsys, "--strategy bucket")


def test_move_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["shards", "move", "--bucket", "3", "--control", "sqlite:///:memory:",
            "--table", "tasks:user_id:id"]  # fmt: skip
    assert cli.main([*base, "--to", "1"]) == 2
    _one_line_error(capsys, "--shard URL")
    assert cli.main([*base, "--shard", "sqlite:///:memory:"]) == 2
    _one_line_error(capsys, "--to SHARD")
    assert cli.main([*base, "--to", "1", "--shard", "sqlite:///:memory:", "--table", "x"]) == 2
    _one_line_error(capsys, "table:shard_key:primary_key")
    assert cli.main([*base, "--to", "1", "--shard", "nosuch://x"]) == 2
    _one_line_error(capsys)


# -- attacks on the command (attack11) -------------------------------------------


def test_plan_file_errors_are_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--save`` into a missing folder and a ``--map`` holding a JSON list ended in tracebacks."""
    argv = ["shards", "plan", "--strategy", "bucket", "--from", "4", "--to", "5"]
    assert cli.main([*argv, "--save", str(tmp_path / "nosuch" / "next.json")]) == 2
    _one_line_error(capsys, "--save", "No such file")
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]", encoding="utf-8")
    assert cli.main(["shards", "plan", "--map", str(listed), "--to", "5"]) == 2
    _one_line_error(capsys, f"--map {listed}", "not a scalekit bucket map")
    assert cli.main(["shards", "plan", "--from", "4", "--to", "0"]) == 2
    _one_line_error(capsys, "--to 0")


@pytest.mark.parametrize("seconds", ["nan", "inf"])
def test_move_refuses_a_refresh_interval_that_is_not_a_number_of_seconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], seconds: str
) -> None:
    """``--refresh-interval nan`` was taken: the mover failed on ``sleep(nan)`` after the flip."""
    control = Pool.from_url(f"sqlite:///{tmp_path}/control.db")
    BucketMap.uniform(2, buckets=8).save_db(control)
    control.close()
    for index in (0, 1):
        shard = Pool.from_url(f"sqlite:///{tmp_path}/s{index}.db")
        shard.execute("CREATE TABLE tasks (id INTEGER PRIMARY KEY, user_id INTEGER)")
        shard.close()
    argv = ["shards", "move", "--bucket", "0", "--to", "1", "--control",
            f"sqlite:///{tmp_path}/control.db", "--shard", f"sqlite:///{tmp_path}/s0.db",
            "--shard", f"sqlite:///{tmp_path}/s1.db", "--table", "tasks:user_id:id",
            "--refresh-interval", seconds]  # fmt: skip
    assert cli.main(argv) == 2
    _one_line_error(capsys, "refresh_interval", "finite")
    with pytest.raises(ConfigError, match="finite"):
        ShardSet([ReplicaSet(Pool.from_url("sqlite:///:memory:"))], refresh_interval=float(seconds))


def test_move_errors_never_show_a_password_nor_blame_the_tables_for_a_missing_map(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A control database with no map said "check that every --table exists"; a password
    holding a comma was cut in two URLs, and the error showed its second half (attack11)."""
    argv = ["shards", "move", "--bucket", "0", "--to", "1", "--table", "tasks:user_id:id",
            "--control", f"sqlite:///{tmp_path}/control.db"]  # fmt: skip
    assert cli.main([*argv, "--shard", "mysql://app:hunter2@127.0.0.1:1/db"]) == 2
    _one_line_error(capsys, "has no table scalekit_bucket_map", "save a bucket map")
    BucketMap.uniform(2, buckets=8).save_db(Pool.from_url(f"sqlite:///{tmp_path}/control.db"))
    shards = ["--shard", "mysql://app:hun,ter2@127.0.0.1:1/db",
              "--shard", "mysql://app:x@127.0.0.1:1/db,mysql://app:pw/db"]  # fmt: skip
    assert cli.main([*argv, *shards]) == 2
    line = _one_line_error(capsys, "the port is not a number")  # the replica's URL
    assert "ter2" not in line
    assert "pw" not in line


def test_plan_refuses_sizes_that_would_exhaust_the_machine(
    capsys: pytest.CaptureFixture[str],
) -> None:
    huge = str(10**9)
    bucket = ["shards", "plan", "--strategy", "bucket", "--from", "2", "--to", "3"]
    assert cli.main([*bucket, "--buckets", huge]) == 2
    _one_line_error(capsys, f"buckets={huge}", "exceeds")
    jump = ["shards", "plan", "--from", "2", "--to", "3", "--buckets", "64"]
    assert cli.main(jump) == 2  # not silently ignored
    _one_line_error(capsys, "--buckets 64 applies to --strategy bucket")
    assert cli.main(["shards", "plan", "--strategy", "jump", "--from", "2", "--to", "3",
                     "--keys", huge]) == 2  # fmt: skip
    _one_line_error(capsys, f"--keys {huge}", "at most")
    with pytest.raises(ConfigError, match="exceeds"):
        BucketMap(buckets=(1 << 20) + 1, shards=2)
