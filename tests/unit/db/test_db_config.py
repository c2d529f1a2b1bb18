"""Pool URLs: options parsed, bad parts named, the password never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest

import scalekit.db
from scalekit.db import ConfigError, Pool, ReplicaSet
from scalekit.db._config import parse_url, redact


def test_mysql_url_options() -> None:
    parsed = parse_url(
        "mysql://app:s%40cret@db.local:3307/tasks?max_connections=20&acquire_timeout=1.5"
        "&connect_timeout=2&read_timeout=3&write_timeout=4&max_lifetime=60&min_idle=1"
        "&max_idle=5&idle_timeout=30"
    )
    assert parsed.driver == "pymysql"
    assert parsed.connect_args == {
        "host": "db.local",
        "port": 3307,
        "user": "app",
        "password": "s@cret",
        "database": "tasks",
        "charset": "utf8mb4",
        "connect_timeout": 2.0,
        "read_timeout": 3.0,
        "write_timeout": 4.0,
    }
    assert parsed.options == {
        "max_connections": 20,
        "acquire_timeout": 1.5,
        "max_lifetime": 60.0,
        "min_idle": 1,
        "max_idle": 5,
        "idle_timeout": 30.0,
    }
    assert parsed.name == "db.local:3307/tasks"


def test_from_url_builds_a_pool_without_connecting() -> None:
    pool = Pool.from_url("mysql://app:pw@127.0.0.1:1/x?max_connections=3", acquire_timeout=0.5)
    assert (pool.max_connections, pool.acquire_timeout, pool.dialect) == (3, 0.5, "mysql")
    assert pool.stats().open == 0


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("mysql://app:hunter2@h/db?max_conections=3", "max_conections"),
        ("mysql://app:hunter2@h/db?max_connections=lots", "max_connections='lots'"),
        ("mysql://app:hunter2@h:notaport/db", "bad database URL"),
        ("postgres://app:hunter2@h/db", "unsupported database URL scheme 'postgres'"),
        ("mysql://app:hunter2@h/db?max_connections=0", "max_connections=0"),
        ("sqlite://host/x.db", "three or four slashes"),
        # No "@host": urllib reads the password as a port and quoted it (attack11).
        ("mysql://app:hunter2/db", "the port is not a number"),
        ("mysql://app:hunter2/db?max_connections=0", "the port is not a number"),
    ],
)
def test_bad_urls_name_the_bad_part_and_hide_the_password(url: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Pool.from_url(url)
    assert named in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_redact() -> None:
    assert redact("mysql://app:pw@h:1/db") == "mysql://app:***@h:1/db"
    assert redact("sqlite:///x.db") == "sqlite:///x.db"


def test_sqlite_paths(tmp_path: Path) -> None:
    assert parse_url("sqlite:///relative/app.db").connect_args == {"database": "relative/app.db"}
    assert parse_url(f"sqlite:///{tmp_path}/a.db").connect_args == {"database": f"{tmp_path}/a.db"}
    pool = Pool.from_url(f"sqlite:///{tmp_path}/a.db")
    assert pool.dialect == "sqlite"


def test_replica_set_options_are_checked(tmp_path: Path) -> None:
    primary = Pool.from_url(f"sqlite:///{tmp_path}/a.db")
    with pytest.raises(ConfigError, match="balance"):
        ReplicaSet(primary, balance="random")
    with pytest.raises(ConfigError, match="cannot also be a replica"):
        ReplicaSet(primary, [primary])
    with pytest.raises(ConfigError, match="needs a function"):
        ReplicaSet(primary).transaction(retries=2)


def test_all_is_sorted_and_complete() -> None:
    names = scalekit.db.__all__
    assert names == sorted(names)
    public = {
        name
        for name, value in vars(scalekit.db).items()
        if not name.startswith("_") and isinstance(value, type)
    }
    assert public <= set(names)
    for name in names:
        assert hasattr(scalekit.db, name)
