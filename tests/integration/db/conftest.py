"""Fixtures shared by the ReplicaSet tests on the real primary + replica."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from db_helpers import Pools, disable_general_log, enable_general_log, open_pools
from harness import MariaDBReplication

from scalekit._clock import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def pools(mariadb_replication: MariaDBReplication, clock: ManualClock) -> Iterator[Pools]:
    yield from open_pools(mariadb_replication, clock)


@pytest.fixture(scope="module")
def general_log_off_afterwards(mariadb_replication: MariaDBReplication) -> Iterator[None]:
    yield
    disable_general_log(mariadb_replication)


@pytest.fixture
def general_log(
    mariadb_replication: MariaDBReplication, general_log_off_afterwards: None
) -> MariaDBReplication:
    # Per test: a restarted server (another test) comes back with it off.
    enable_general_log(mariadb_replication)
    return mariadb_replication
