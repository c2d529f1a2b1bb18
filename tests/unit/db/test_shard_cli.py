"""``scalekit shards plan``: what growing the shard count moves."""

from __future__ import annotations

from pathlib import Path

import pytest

from scalekit import cli
from scalekit.db import BucketMap


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


def test_bad_arguments_exit_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["shards", "plan", "--strategy", "ring", "--from", "4", "--to", "5"])
    assert caught.value.code == 2
    assert cli.main(["shards", "plan", "--from", "0", "--to", "5"]) == 1
    assert "shard count" in capsys.readouterr().err
