"""What a returned connection needs before its next borrower: nothing, a rollback, or a reset.

SQLAlchemy's ``reset_on_return`` is the model: a connection goes back to
the pool with no open transaction and none of its borrower's session state
(user variables, ``SET SESSION``, temporary tables, locks). The checks here
cost no round trip: the transaction flag is the ``SERVER_STATUS_IN_TRANS``
bit of the server's last reply, and session changes are seen from the
statements' text (``_sql.classify``). Only a connection that needs it pays
one ``COM_RESET_CONNECTION``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

__all__ = ["can_reset", "in_transaction", "reset"]

_COM_RESET_CONNECTION = 0x1F  # MySQL 5.7+, MariaDB 10.2+; pymysql has no name for it
_SERVER_STATUS_IN_TRANS = 0x0001


def in_transaction(raw: Any, *, tracked: bool) -> bool:
    """Whether the server has a transaction open on ``raw``, without asking it.

    pymysql keeps the status flags of the last OK packet (a ``SELECT`` in
    autocommit mode cannot open a transaction, so a stale value is exact
    there; ``SET autocommit = 0`` marks the session for a reset anyway);
    sqlite3 says ``in_transaction``; other drivers fall back to ``tracked``
    (a ``BEGIN`` or ``START TRANSACTION`` seen and not yet ended).
    """
    status = getattr(raw, "server_status", None)
    if isinstance(status, int):
        return bool(status & _SERVER_STATUS_IN_TRANS)
    flag = getattr(raw, "in_transaction", None)
    if isinstance(flag, bool):
        return flag
    return tracked


def can_reset(raw: Any) -> bool:
    """The driver can send ``COM_RESET_CONNECTION`` (pymysql)."""
    return hasattr(raw, "_execute_command") and hasattr(raw, "_read_ok_packet")


def reset(raw: Any, session: Sequence[str], *, database: str | None = None) -> None:
    """Reset the session (rolls back, drops variables, temporary tables, locks), then re-apply ours.

    ``database``: select it again (``COM_RESET_CONNECTION`` keeps the one a
    borrower chose with ``USE``; one more round trip, only then).

    Raises:
        Exception: the driver's, when the server does not know the command
            (MariaDB < 10.2) or the connection failed; discard it then.
    """
    raw._execute_command(_COM_RESET_CONNECTION, b"")
    raw._read_ok_packet()
    if database is not None:
        raw.select_db(database)
    raw.autocommit(True)  # no round trip unless the server's default is off
    if session:
        cursor = raw.cursor()
        try:
            for statement in session:
                cursor.execute(statement)
        finally:
            with contextlib.suppress(Exception):
                cursor.close()
