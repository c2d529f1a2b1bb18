"""Driver exceptions → scalekit's errors, decided by error number and by what reached the server.

A pool calls :func:`translate` for every exception its driver raises on a
statement and :func:`connect_error` for one raised while connecting; both
only decide, the pool acts on the decision (discard the connection, back
off from the server, recheck ``@@read_only``).
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import socket
from collections.abc import Callable
from types import ModuleType

from .errors import (
    CONNECTION_LOST_CODES,
    READ_ONLY_CODE,
    READ_ONLY_TRANSACTION_CODE,
    RETRYABLE_TRANSACTION_CODES,
    ConnectionLost,
    MisroutedWrite,
    PrimaryReadOnly,
    RetryableTransactionError,
    WriteOutcomeUnknown,
    error_code,
)

__all__ = [
    "ConnectFailure",
    "Decision",
    "connect_error",
    "connect_failure",
    "is_refused",
    "is_timeout",
    "outcome_name",
    "translate",
]

_SQLITE_READONLY = 8


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """What a driver exception means for the caller and for the pool.

    ``error`` is what to raise (the driver's own exception when scalekit has
    nothing to add); ``lost``: the connection is unusable; ``timed_out``: the
    server did not answer within the timeout; ``demoted``: the primary
    refused a write as read-only.
    """

    error: Exception
    lost: bool = False
    timed_out: bool = False
    demoted: bool = False


def _in_chain(exc: BaseException, found: Callable[[BaseException], bool]) -> bool:
    """True when ``exc`` or one of the exceptions it wraps (``__cause__`` or
    ``__context__``, four deep) is ``found``."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return False
        if found(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def is_timeout(exc: BaseException) -> bool:
    """True when ``exc`` (or what it wraps) is a socket timeout."""
    return _in_chain(exc, lambda seen: isinstance(seen, (TimeoutError, socket.timeout)))


def is_refused(exc: BaseException) -> bool:
    """True when ``exc`` (or what it wraps) is a refused TCP connect: nothing listens.

    pymysql raises ``OperationalError(2003, "... ([Errno 111] Connection
    refused)")`` while handling the socket's ``ConnectionRefusedError``, so
    the refusal is found on the exception's ``__cause__``/``__context__``.
    """
    return _in_chain(
        exc,
        lambda seen: (
            isinstance(seen, ConnectionRefusedError)
            or (isinstance(seen, OSError) and seen.errno == errno.ECONNREFUSED)
        ),
    )


class ConnectFailure(enum.Enum):
    """Why a connect failed: how its server's back-off grows, and what "server down" says."""

    REFUSED = "refused a connect"
    """Nothing listens (a TCP connect refused): one round trip, retried every base step."""
    UNANSWERED = "did not answer"
    """A timeout: every attempt holds its caller for ``connect_timeout``."""
    REJECTED = "rejected the connect"
    """The server answered with an error: 1045 access denied, 1040 too many
    connections, 1129 host blocked. Retrying at once only adds to it."""
    FAILED = "could not be connected to"
    """Anything else: no route to the host, an unknown host name, a lost handshake."""


def connect_failure(exc: BaseException) -> tuple[ConnectFailure, str]:
    """Why a connect failed, and the error in words for the "server down" message."""
    code = error_code(exc)
    # The server's own error numbers; pymysql's client errors (CR_*: 2000-2999) and an
    # OSError's errno are not an answer from the server.
    if code is not None and not isinstance(exc, OSError) and not 2000 <= code < 3000:
        args = exc.args
        text = f"{code} {args[1]}" if len(args) == 2 and isinstance(args[1], str) else str(exc)
        return ConnectFailure.REJECTED, text
    if is_timeout(exc):
        return ConnectFailure.UNANSWERED, str(exc)
    if is_refused(exc):
        return ConnectFailure.REFUSED, str(exc)
    return ConnectFailure.FAILED, str(exc)


def translate(
    exc: Exception,
    *,
    where: str,
    driver: ModuleType | None,
    read_only_pool: bool,
    write: bool,
    in_transaction: bool,
) -> Decision:
    """Decide what a driver exception raised by a statement means.

    Args:
        exc: the driver's exception.
        where: the pool, for messages (``"pool 'db' (primary)"``).
        driver: the DB-API module (for its ``InterfaceError``).
        read_only_pool: the pool's sessions are read-only (a replica).
        write: the statement may change data (it is not a read by its text).
        in_transaction: the statement ran inside an explicit transaction,
            which the server rolls back when the connection dies.
    """
    code = error_code(exc)
    interface_error = driver is not None and isinstance(exc, getattr(driver, "InterfaceError", ()))
    if code in CONNECTION_LOST_CODES or isinstance(exc, OSError) or interface_error:
        timed_out = is_timeout(exc)
        # pymysql raises InterfaceError(0) before sending on a closed socket.
        never_sent = interface_error and code == 0
        if write and not in_transaction and not never_sent:
            error: Exception = WriteOutcomeUnknown(
                f"connection to {where} lost while a write was in flight ({exc}); "
                "the server may have applied it and scalekit will not send it again"
            )
        else:
            error = ConnectionLost(f"connection to {where} lost: {exc}")
        return Decision(error, lost=True, timed_out=timed_out)
    if code in RETRYABLE_TRANSACTION_CODES:
        return Decision(
            RetryableTransactionError(
                f"{exc} on {where}: the transaction was rolled back; run it again"
            )
        )
    sqlite_read_only = getattr(exc, "sqlite_errorcode", None) == _SQLITE_READONLY
    if (
        code == READ_ONLY_TRANSACTION_CODE
        or (code == READ_ONLY_CODE and read_only_pool)
        or (sqlite_read_only and read_only_pool)
    ):
        return Decision(
            MisroutedWrite(
                f"a write reached the read-only {where} ({exc}): send writes with "
                "execute() or transaction(), never query()"
            )
        )
    if code == READ_ONLY_CODE:
        return Decision(
            PrimaryReadOnly(
                f"the primary {where} refused a write as read-only ({exc}): it was "
                "demoted; point the primary pool at the new primary"
            ),
            demoted=True,
        )
    return Decision(exc)


def connect_error(exc: Exception, *, where: str, driver: ModuleType | None) -> Exception | None:
    """The ``ConnectionLost`` for an exception raised while connecting, or None.

    Every driver error and socket error at connect time is the server's (or
    the network's, or the credentials') doing, never the caller's statement:
    ``ConnectionLost`` naming the error. Anything else (a ``TypeError`` from
    a bad connect argument) is returned as None and raised unchanged.
    """
    driver_error = driver is not None and isinstance(exc, getattr(driver, "Error", ()))
    if not (driver_error or isinstance(exc, OSError) or error_code(exc) is not None):
        return None
    return ConnectionLost(f"cannot connect to {where}: {exc}")


def outcome_name(exc: Exception) -> str:
    """The ``DbQuery.outcome`` label of an error."""
    if isinstance(exc, WriteOutcomeUnknown):
        return "write_outcome_unknown"
    if isinstance(exc, ConnectionLost):
        return "connection_lost"
    if isinstance(exc, RetryableTransactionError):
        return "retryable"
    if isinstance(exc, MisroutedWrite):
        return "misrouted_write"
    if isinstance(exc, PrimaryReadOnly):
        return "read_only"
    return "error"
