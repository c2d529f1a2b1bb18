"""Shared helpers for the scalekit.db integration tests (real MariaDB primary + replica)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from harness import MariaDBReplication
from harness.mariadb_servers import MariaDBServer

from scalekit._clock import ManualClock
from scalekit.db import Pool, ReplicaSet

TABLE = "db_items"


def marker() -> str:
    """A unique SQL comment text to find a test's own statements in the general log."""
    return f"m{uuid.uuid4().hex[:12]}"


def enable_general_log(setup: MariaDBReplication) -> None:
    for server in setup.servers:
        server.query("SET GLOBAL log_output = 'TABLE'")
        server.query("SET GLOBAL general_log = 1")


def disable_general_log(setup: MariaDBReplication) -> None:
    for server in setup.servers:
        server.query("SET GLOBAL general_log = 0")
        server.query("TRUNCATE TABLE mysql.general_log")


def count_statements(server: MariaDBServer, needle: str) -> int:
    """Statements the app user sent to ``server`` whose text contains ``needle``.

    The needle is passed in two halves so this query's own log line never matches.
    """
    half = len(needle) // 2
    (row,) = server.query(
        "SELECT COUNT(*) AS n FROM mysql.general_log WHERE command_type = 'Query' "
        "AND user_host LIKE 'app%%' AND argument LIKE CONCAT('%%', %s, %s, '%%')",
        (needle[:half], needle[half:]),
    )
    return int(row["n"])


def app_connections(server: MariaDBServer) -> int:
    (row,) = server.query(
        "SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST "
        "WHERE USER = 'app' AND COMMAND <> 'Killed'"
    )
    return int(row["n"])


def ensure_table(setup: MariaDBReplication) -> None:
    with setup.primary.app_connect() as conn, conn.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (id INT AUTO_INCREMENT PRIMARY KEY, "
            "user_id INT NOT NULL, note VARCHAR(100) NOT NULL, KEY (user_id))"
        )
    setup.wait_caught_up()


class Pools:
    """Pools a test opens; all closed at the end."""

    def __init__(self, setup: MariaDBReplication, clock: ManualClock) -> None:
        self.setup = setup
        self.clock = clock
        self.opened: list[Pool] = []

    def pool(self, url: str, **options: Any) -> Pool:
        options.setdefault("clock", self.clock)
        options.setdefault("acquire_timeout", 30.0)
        pool = Pool.from_url(url, **options)
        self.opened.append(pool)
        return pool

    def replica_set(
        self, *, replica_options: dict[str, Any] | None = None, **options: Any
    ) -> ReplicaSet:
        options.setdefault("clock", self.clock)
        primary = self.pool(self.setup.primary.url, name="primary")
        replica = self.pool(self.setup.replica.url, name="replica", **(replica_options or {}))
        return ReplicaSet(primary, [replica], **options)

    def close(self) -> None:
        for pool in self.opened:
            pool.close()


def open_pools(mariadb_replication: MariaDBReplication, clock: ManualClock) -> Iterator[Pools]:
    """Body of a ``pools`` fixture: the test table exists; pools closed afterwards."""
    ensure_table(mariadb_replication)
    opened = Pools(mariadb_replication, clock)
    try:
        yield opened
    finally:
        opened.close()
