"""The errors ``scalekit.db`` raises, and how driver errors map onto them.

Every error is a :class:`DatabaseError`::

    DatabaseError
    ├── ConfigError                  a bad URL or option, raised at construction
    ├── PoolTimeout                  no connection within ``acquire_timeout``
    ├── NoHealthyServer              no replica and no primary could serve the read
    ├── ConnectionLost               the connection died (2006, 2013, 4031, ...)
    │   └── WriteOutcomeUnknown      ... while a write was in flight: never re-sent
    ├── RetryableTransactionError    deadlock (1213) or lock wait timeout (1205)
    ├── PrimaryReadOnly              the primary answered 1290: it was demoted
    ├── MisroutedWrite               a write reached a read-only replica session (1792)
    ├── BucketMoved                  a guarded shard write met a frozen or moved bucket
    └── MoveError                    a bucket move cannot go on (arguments, lock, map)

Other driver errors (a syntax error, a duplicate key) are raised unchanged:
they are the caller's to handle and retrying them would not help.
"""

from __future__ import annotations

from scalekit.errors import ConfigurationError, ScalekitError

__all__ = [
    "CONNECTION_LOST_CODES",
    "SERVER_REFUSED_CODES",
    "BucketMoved",
    "ConfigError",
    "ConnectionLost",
    "DatabaseError",
    "MisroutedWrite",
    "MoveError",
    "NoHealthyServer",
    "PoolTimeout",
    "PrimaryReadOnly",
    "RetryableTransactionError",
    "WriteOutcomeUnknown",
    "error_code",
]

CONNECTION_LOST_CODES = frozenset(
    {
        1053,  # server shutdown in progress
        1927,  # connection killed
        2002,  # can't connect through socket
        2003,  # can't connect to server
        2006,  # server has gone away
        2013,  # lost connection during query
        2055,  # lost connection at reading initial packet
        4031,  # disconnected by the server because of inactivity
    }
)
"""MySQL/MariaDB error numbers that mean the connection is gone."""

SERVER_REFUSED_CODES = frozenset(
    {
        1040,  # too many connections
        1044,  # access denied to the database
        1045,  # access denied (bad user or password)
        1129,  # host blocked after too many connection errors
        1130,  # host not allowed to connect
        1203,  # max_user_connections reached
        1226,  # a user resource limit reached
        1227,  # a privilege is missing (e.g. for SHOW REPLICA STATUS)
    }
)
"""Error numbers by which a server refuses us rather than the statement: a
replica answering one of them is taken out of rotation like a dead one."""

RETRYABLE_TRANSACTION_CODES = frozenset({1205, 1213})
READ_ONLY_CODE = 1290
READ_ONLY_TRANSACTION_CODE = 1792


class DatabaseError(ScalekitError):
    """Base class of every error ``scalekit.db`` raises."""


class ConfigError(DatabaseError, ConfigurationError):
    """A bad URL, option or combination of options; raised at construction."""


class PoolTimeout(DatabaseError, TimeoutError):
    """No connection became free within the pool's ``acquire_timeout``.

    Raise ``max_connections``, shorten what holds connections, or shed load.
    """


class NoHealthyServer(DatabaseError):
    """Neither a replica nor the primary could serve the statement."""


class ConnectionLost(DatabaseError):
    """The connection to the server was lost; the pool has discarded it."""


class WriteOutcomeUnknown(ConnectionLost):
    """The connection was lost while a write was in flight.

    The server may or may not have applied it; scalekit never sends it a
    second time. Check (for example by a unique request id) before retrying.
    """


class RetryableTransactionError(DatabaseError):
    """A deadlock (1213) or lock wait timeout (1205) rolled the transaction back.

    Run the whole transaction again: ``transaction(fn, retries=3)`` does.
    """


class PrimaryReadOnly(DatabaseError):
    """The primary refused a write with 1290 (``--read-only``): it was demoted.

    Point the primary pool at the new primary. scalekit checks ``@@read_only``
    again before the next write.
    """


class MisroutedWrite(DatabaseError):
    """A write was sent on a read-only replica session (1792 or 1290).

    A programming error: send writes with ``execute()`` or ``transaction()``,
    or ``query(..., primary=True)`` for a read that locks. Never retried.
    """


class BucketMoved(DatabaseError):
    """A guarded shard write met a bucket that is frozen for a move, or has moved away.

    ``state`` is ``"frozen"`` (the move did not finish within the set's
    ``freeze_timeout``) or ``"moved"`` (the set has no ``reload`` to learn the
    new map). Reload the ``BucketMap`` and retry.
    """

    def __init__(self, message: str, *, bucket: int, state: str) -> None:
        super().__init__(message)
        self.bucket = bucket
        self.state = state


class MoveError(DatabaseError):
    """A bucket move cannot go on: bad arguments, another mover, a map that changed, ..."""


def error_code(exc: BaseException) -> int | None:
    """The MySQL error number of a driver exception, or None."""
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    return None
