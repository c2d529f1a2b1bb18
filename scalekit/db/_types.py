"""The values the pool hands out: ``Result``, ``PoolStats``, ``Role`` and the row types."""

from __future__ import annotations

import dataclasses
import enum
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DEFAULT_TIMEOUTS", "Params", "PoolStats", "Result", "Role", "Row"]

Params = Sequence[Any] | Mapping[str, Any] | None
Row = dict[str, Any]


class Role(enum.StrEnum):
    """What a pool serves in a ``ReplicaSet``; it picks the default timeouts."""

    PRIMARY = "primary"
    REPLICA = "replica"


# connect, read (= one operation's deadline), write; seconds. None: no limit.
DEFAULT_TIMEOUTS: Mapping[Role, tuple[float, float | None, float | None]] = {
    Role.PRIMARY: (2.0, 60.0, 60.0),
    Role.REPLICA: (2.0, 10.0, 10.0),
}


def _deprecated_int(name: str) -> None:
    warnings.warn(
        f"Cursor.execute() now returns a Result, like Connection.execute(); {name} on it is "
        "deprecated and will be removed: use result.rowcount",
        DeprecationWarning,
        stacklevel=3,
    )


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Result:
    """What a write returns: affected rows, the generated id, a causal token, returned rows.

    ``token`` is the write's GTID when the ``ReplicaSet`` runs in causal mode
    (pass it back as ``query(..., after=token)``), else None. ``rows`` holds
    the rows of ``execute(..., returning=True)`` (``INSERT … RETURNING``).
    """

    rowcount: int
    lastrowid: int | None = None
    token: str | None = None
    rows: list[Row] = dataclasses.field(default_factory=list)

    # Cursor.execute returned an int before 0.1: keep that working for a release.
    def __int__(self) -> int:
        _deprecated_int("int()")
        return self.rowcount

    def __index__(self) -> int:
        _deprecated_int("using it as an int")
        return self.rowcount

    def __bool__(self) -> bool:
        _deprecated_int("truth testing")
        return bool(self.rowcount)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, int) and not isinstance(other, bool):
            _deprecated_int("comparing it with an int")
            return self.rowcount == other
        if isinstance(other, Result):
            return (self.rowcount, self.lastrowid, self.token, self.rows) == (
                other.rowcount, other.lastrowid, other.token, other.rows
            )  # fmt: skip
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.rowcount, self.lastrowid, self.token))


@dataclasses.dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of a pool's connections.

    ``open`` is in use + idle now (``connecting`` of them still being
    opened); ``opened`` and ``errors`` count since start.
    """

    in_use: int
    idle: int
    waiting: int
    open: int
    opened: int
    errors: int
    max_connections: int
    connecting: int = 0
