"""One parser for SHOW REPLICA STATUS, both spellings, for ReplicaSet and the health check."""

from __future__ import annotations

from typing import Any

import pytest

from scalekit._replica_status import IoThread, parse_replica_status

RUNNING = {
    "Slave_IO_Running": "Yes",
    "Slave_SQL_Running": "Yes",
    "Seconds_Behind_Master": 1,
    "Master_Log_File": "primary-bin.000001",
    "Read_Master_Log_Pos": 2213,
    "Relay_Master_Log_File": "primary-bin.000001",
    "Exec_Master_Log_Pos": 2000,
}


def test_a_running_replica_reports_its_lag() -> None:
    status = parse_replica_status([RUNNING])
    assert (status.replicating, status.lag, status.applied_all_received) == (True, 1.0, False)


def test_a_replica_whose_primary_is_gone_has_applied_all_it_received() -> None:
    row = {**RUNNING, "Slave_IO_Running": "Connecting", "Seconds_Behind_Master": None,
           "Exec_Master_Log_Pos": 2213}  # fmt: skip
    status = parse_replica_status([row])
    assert status.io is IoThread.CONNECTING
    assert (status.replicating, status.sql_running, status.applied_all_received) == (
        False,
        True,
        True,
    )


@pytest.mark.parametrize(
    "row",
    [
        {
            "Replica_IO_Running": "Yes",
            "Replica_SQL_Running": "Yes",
            "Seconds_Behind_Source": 0,
            "Source_Log_File": "b.1",
            "Read_Source_Log_Pos": 5,
            "Relay_Source_Log_File": "b.1",
            "Exec_Source_Log_Pos": 5,
        }
    ],
)
def test_mysql_8_spelling(row: dict[str, Any]) -> None:
    status = parse_replica_status([row])
    assert (status.replicating, status.lag, status.applied_all_received) == (True, 0.0, True)


def test_no_rows_is_not_a_replica() -> None:
    status = parse_replica_status([])
    assert (status.configured, status.replicating) == (False, False)


@pytest.mark.parametrize(
    ("using_gtid", "received"),
    [("Slave_Pos", "0-1-17"), ("Current_Pos", "0-1-17"), ("No", None), (None, None)],
)
def test_received_gtid_only_when_the_replica_replicates_by_gtid(
    using_gtid: str | None, received: str | None
) -> None:
    # With MASTER_USE_GTID=no, Gtid_IO_Pos keeps the last GTID-mode position:
    # waiting for it would wait for nothing (the attack's r5/r6 scripts).
    row = {"Slave_IO_Running": "Connecting", "Slave_SQL_Running": "Yes", "Gtid_IO_Pos": "0-1-17"}
    if using_gtid is not None:
        row["Using_Gtid"] = using_gtid
    assert parse_replica_status([row]).received_gtid == received
