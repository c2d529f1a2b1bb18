"""One reading of ``SHOW REPLICA STATUS``, shared by ``scalekit.db`` and the health checks.

MariaDB and MySQL spell the columns two ways (``Slave_IO_Running`` /
``Replica_IO_Running``, ``Seconds_Behind_Master`` / ``Seconds_Behind_Source``,
``Read_Master_Log_Pos`` / ``Read_Source_Log_Pos`` ...); both are read here
and nowhere else.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["STATUS_STATEMENTS", "IoThread", "ReplicaStatus", "parse_replica_status"]

STATUS_STATEMENTS = ("SHOW REPLICA STATUS", "SHOW SLAVE STATUS")
"""The status statement, newest spelling first (MariaDB < 10.5 knows only the second)."""


class IoThread(enum.StrEnum):
    """The state of the replica's IO thread (``Slave_IO_Running``)."""

    RUNNING = "Yes"
    CONNECTING = "Connecting"
    STOPPED = "No"


@dataclasses.dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """What one ``SHOW REPLICA STATUS`` row says.

    ``lag`` is ``Seconds_Behind_Master`` (whole seconds; None when the server
    does not know, e.g. while the IO thread reconnects). ``applied_all_received``
    is True when the SQL thread has executed everything the IO thread fetched.
    ``received_gtid`` is MariaDB's ``Gtid_IO_Pos`` (the GTIDs the IO thread
    fetched) when the replica replicates by GTID (``Using_Gtid`` is
    ``Slave_Pos`` or ``Current_Pos``); None on MySQL or by file and position.
    A ``MASTER_GTID_WAIT`` can wait for it.
    """

    configured: bool
    io: IoThread
    sql_running: bool
    lag: float | None
    applied_all_received: bool
    received_gtid: str | None = None

    @property
    def replicating(self) -> bool:
        """Both threads run and the server reports a lag."""
        return self.io is IoThread.RUNNING and self.sql_running and self.lag is not None


NOT_CONFIGURED = ReplicaStatus(False, IoThread.STOPPED, False, None, False)


def _column(row: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if name in row:
            return row[name]
    return None


def parse_replica_status(rows: Sequence[Mapping[str, Any]]) -> ReplicaStatus:
    """The status from the rows of ``SHOW REPLICA STATUS`` (none: not a replica)."""
    if not rows:
        return NOT_CONFIGURED
    row = rows[0]
    io_value = str(_column(row, "Slave_IO_Running", "Replica_IO_Running") or "No")
    try:
        io = IoThread(io_value)
    except ValueError:
        io = IoThread.STOPPED
    sql_running = _column(row, "Slave_SQL_Running", "Replica_SQL_Running") == "Yes"
    lag = _column(row, "Seconds_Behind_Master", "Seconds_Behind_Source")
    read_file = _column(row, "Master_Log_File", "Source_Log_File")
    read_pos = _column(row, "Read_Master_Log_Pos", "Read_Source_Log_Pos")
    exec_file = _column(row, "Relay_Master_Log_File", "Relay_Source_Log_File")
    exec_pos = _column(row, "Exec_Master_Log_Pos", "Exec_Source_Log_Pos")
    applied = read_file is not None and read_file == exec_file and read_pos == exec_pos
    # Gtid_IO_Pos keeps its last value when the replica stops using GTID
    # (MASTER_USE_GTID=no): it then says nothing about what was received.
    using_gtid = str(row.get("Using_Gtid") or "").lower()
    received = row.get("Gtid_IO_Pos") if using_gtid in ("slave_pos", "current_pos") else None
    return ReplicaStatus(
        configured=True,
        io=io,
        sql_running=sql_running,
        lag=None if lag is None else float(lag),
        applied_all_received=bool(applied),
        received_gtid=str(received) if received else None,
    )
