"""A bucket move's records and value types.

The control table of moves (``MOVES_TABLE``, one row per bucket with its
source, target and recorded ``Step``, and the tables the move declared) and
its bookkeeping (``Records``); the values a move reports (``MoveProgress``,
``MovePlan``, ``MoveResult``) and the ``Checkpoint`` hook's type. The steps
themselves are in :mod:`.move_steps`, the entry points in :mod:`.mover`.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable, Mapping, Sequence

from ..errors import MoveError
from ..pool import Connection, Pool, Row
from .dialect import dialect_of, identifier
from .rows import ShardedTable

__all__ = [
    "MOVES_TABLE",
    "UNFLIPPED",
    "Checkpoint",
    "MovePlan",
    "MoveProgress",
    "MoveResult",
    "Records",
    "Step",
    "spec",
]

MOVES_TABLE = "scalekit_bucket_moves"
"""The control table that records each move's step."""


class Step(enum.StrEnum):
    """A move's steps, in order; the one recorded is where a rerun resumes."""

    COPY = "copy"
    SYNC = "sync"
    VERIFY = "verify"
    FLIP = "flip"
    OPEN = "open"
    DELETE = "delete"
    DONE = "done"


UNFLIPPED = frozenset({Step.COPY, Step.SYNC, Step.VERIFY, Step.FLIP})

Checkpoint = Callable[[Step, int], None]
"""Called with ``(step, 0)`` as a step starts and ``(step, n)`` after its n-th batch.

For progress beyond ``MoveProgress`` and for tests that stop a mover at a
chosen point (raise, or kill the process) to prove a rerun finishes the move.
"""


@dataclasses.dataclass(frozen=True)
class MoveProgress:
    """Reported to ``progress`` as a move runs: a step, a table, rows done of total."""

    step: str
    table: str
    done: int
    total: int


@dataclasses.dataclass(frozen=True)
class MovePlan:
    """What ``move_bucket`` would do (``--dry-run``)."""

    bucket: int
    source: int
    target: int
    step: Step
    rows: Mapping[str, int]
    map_version: int

    def summary(self) -> str:
        """A few lines for people."""
        if self.source == self.target and self.step is Step.DONE:
            return f"bucket {self.bucket} is already on shard {self.target}: nothing to do"
        verb = "resume" if self.step is not Step.COPY else "start"
        lines = [
            f"bucket {self.bucket}: shard {self.source} -> shard {self.target} "
            f"(map version {self.map_version} -> {self.map_version + 1}); {verb} at step "
            f"{self.step.value!r}",
        ]
        lines += [f"  {table}: {count} rows" for table, count in self.rows.items()]
        steps = list(Step)
        lines.append("steps: " + " -> ".join(steps[steps.index(self.step) :]))
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class MoveResult:
    """A finished move: where the bucket went, the map version, rows per table.

    ``synced`` counts the rows the sync step fixed on the target in this run:
    writes that landed on the source during the copy.
    """

    bucket: int
    source: int
    target: int
    version: int
    rows: Mapping[str, int]
    resumed_from: str | None = None
    already: bool = False
    synced: int = 0


class Records:
    """The control table of moves: one row per bucket with its source, target and step."""

    def __init__(self, control: Pool, table: str) -> None:
        self.control = control
        self.table = identifier(table)
        # The tables each move declared: a rerun must move the same ones.
        self.declared = identifier(f"{table}_tables")
        self.control.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} (bucket INT NOT NULL PRIMARY KEY, "
            "source INT NOT NULL, target INT NOT NULL, step VARCHAR(16) NOT NULL, "
            "map_version BIGINT NOT NULL, updated BIGINT NOT NULL)"
        )
        self.control.execute(
            f"CREATE TABLE IF NOT EXISTS {self.declared} (bucket INT NOT NULL PRIMARY KEY, "
            "tables TEXT NOT NULL)"
        )

    def tables(self, bucket: int) -> str | None:
        """The tables the unfinished move of ``bucket`` declared (None: not recorded)."""
        rows = self.control.query(f"SELECT tables FROM {self.declared} WHERE bucket = %s", [bucket])
        return str(rows[0]["tables"]) if rows else None

    def get(self, bucket: int) -> Row | None:
        rows = self.control.query(
            f"SELECT bucket, source, target, step, map_version FROM {self.table} WHERE bucket = %s",
            [bucket],
        )
        if not rows:
            return None
        row = rows[0]
        try:
            row["step"] = Step(row["step"])
        except ValueError:
            raise MoveError(
                f"unknown move step {row['step']!r} for bucket {bucket} in {self.table}"
            ) from None
        return row

    def start(self, bucket: int, source: int, target: int, map_version: int, tables: str) -> None:
        dialect = dialect_of(self.control)
        self.control.execute(
            dialect.upsert(self.declared, ["bucket", "tables"], ["bucket"], 1), [bucket, tables]
        )
        columns = ["bucket", "source", "target", "step", "map_version", "updated"]
        self.control.execute(
            dialect.upsert(self.table, columns, ["bucket"], 1),
            [bucket, source, target, Step.COPY.value, map_version, int(time.time())],
        )

    def set_step(self, bucket: int, step: Step, conn: Connection | None = None) -> None:
        sql = f"UPDATE {self.table} SET step = %s, updated = %s WHERE bucket = %s"
        params = [step.value, int(time.time()), bucket]
        if conn is not None:
            conn.execute(sql, params)
        else:
            self.control.execute(sql, params)

    def forget(self, bucket: int) -> None:
        self.control.execute(f"DELETE FROM {self.table} WHERE bucket = %s", [bucket])
        self.control.execute(f"DELETE FROM {self.declared} WHERE bucket = %s", [bucket])


def spec(tables: Sequence[ShardedTable]) -> str:
    """The declared tables as the command line writes them, sorted: ``a:k:id;b:k:id``."""
    return ";".join(sorted(f"{t.name}:{t.shard_key}:{','.join(t.primary_key)}" for t in tables))
