"""Settings for a sharded app: ``shard_urls``, ``shard_strategy`` and ``env``; Stack.shards."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from scalekit import Settings, install
from scalekit.db import JumpHash, Modulo, ReplicaSet, ShardSet
from scalekit.settings import Environment, ShardStrategyName


def test_shard_urls_from_env_one_list_per_shard() -> None:
    settings = Settings.from_env(
        {
            "SCALEKIT_SHARD_URLS": " mysql://a/s0, mysql://a-r/s0 ; mysql://b/s1 ;",
            "SCALEKIT_SHARD_STRATEGY": "modulo",
            "SCALEKIT_ENV": "development",
        }
    )
    assert settings.shard_urls == (("mysql://a/s0", "mysql://a-r/s0"), ("mysql://b/s1",))
    assert settings.shard_strategy is ShardStrategyName.MODULO
    assert settings.env is Environment.DEVELOPMENT


def test_defaults_are_no_shards_jump_hash_production() -> None:
    settings = Settings.from_env({})
    assert settings.shard_urls == ()
    assert settings.shard_strategy == "jump-hash"
    assert settings.env == "production"


def test_keywords_accept_strings_and_bare_urls() -> None:
    settings = Settings(
        shard_urls=("sqlite:///a.db", ("sqlite:///b.db",)),  # type: ignore[arg-type]
        shard_strategy="modulo",  # type: ignore[arg-type]
        env="development",  # type: ignore[arg-type]
    )
    assert settings.shard_urls == (("sqlite:///a.db",), ("sqlite:///b.db",))
    assert settings.shard_strategy is ShardStrategyName.MODULO
    assert settings.env is Environment.DEVELOPMENT


@pytest.mark.parametrize(
    ("variable", "value"),
    [("SCALEKIT_SHARD_STRATEGY", "consistent"), ("SCALEKIT_ENV", "prod")],
)
def test_a_bad_choice_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ValueError, match=variable) as raised:
        Settings.from_env({variable: value})
    assert repr(value) in str(raised.value)


def test_a_shard_without_a_primary_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="primary"):
        Settings(shard_urls=((),))
    with pytest.raises(ValueError, match="jump-hash"):
        Settings(shard_strategy="ring")  # type: ignore[arg-type]


@pytest.mark.parametrize(("strategy", "expected"), [("jump-hash", JumpHash), ("modulo", Modulo)])
def test_install_builds_a_shard_set(tmp_path: Path, strategy: str, expected: type) -> None:
    settings = Settings(
        shard_urls=tuple((f"sqlite:///{tmp_path}/shard{i}.db",) for i in range(2)),
        shard_strategy=strategy,  # type: ignore[arg-type]
    )
    stack = install(Starlette(), settings, registry=CollectorRegistry())
    try:
        assert isinstance(stack.shards, ShardSet)
        assert isinstance(stack.shards.strategy, expected)
        assert len(stack.shards) == 2
        assert all(isinstance(shard, ReplicaSet) for shard in stack.shards.shards)
        stack.shards.execute("CREATE TABLE t (k INTEGER)", key=7)
        stack.shards.execute("INSERT INTO t (k) VALUES (%s)", [7], key=7)
        assert stack.shards.query("SELECT k FROM t", key=7) == [{"k": 7}]
        checks = [check.name for check in stack.health.checks]
        assert checks == ["shard0", "shard1"]
    finally:
        stack.shards.close()


def test_no_shard_urls_no_shard_set() -> None:
    stack = install(Starlette(), Settings(), registry=CollectorRegistry())
    assert stack.shards is None


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("sqlite:///a.db;;sqlite:///b.db", "number 2 of 3"),
        (";sqlite:///a.db;sqlite:///b.db", "number 1 of 3"),
        (" ; ", "number 1 of 1"),
    ],
)
def test_an_empty_shard_is_an_error_not_skipped(text: str, where: str) -> None:
    # Skipping it would renumber the shards after it, and move their keys.
    with pytest.raises(ValueError, match=f"SCALEKIT_SHARD_URLS has an empty shard \\({where}\\)"):
        Settings.from_env({"SCALEKIT_SHARD_URLS": text})
