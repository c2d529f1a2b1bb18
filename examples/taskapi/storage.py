"""Users in one database, tasks on the user's shard; every statement parameterised.

The same ``%s`` SQL runs on SQLite (the embedded default) and on MariaDB:
``scalekit.db`` translates placeholders for SQLite. Reads go through
``ReplicaSet``/``ShardSet`` with a read-your-writes key, so a user who just
wrote reads from where the write is visible, on any instance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scalekit.db import Cursor, ReplicaSet, ShardSet

from .models import Task, TaskStatus, User

__all__ = ["Conflict", "Storage", "apply_schema", "schema_statements"]

SCHEMA_DIR = Path(__file__).resolve().parent
_TASK_COLUMNS = "id, title, description, status, created_at, updated_at"
_UPDATABLE = frozenset({"title", "description", "status"})


class Conflict(Exception):
    """The email or username is already registered."""


def schema_statements(dialect: str) -> list[str]:
    """The statements of ``schema.sql`` (``mysql``) or ``schema_sqlite.sql`` (``sqlite``)."""
    name = "schema_sqlite.sql" if dialect == "sqlite" else "schema.sql"
    text = (SCHEMA_DIR / name).read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return [statement.strip() for statement in "\n".join(lines).split(";") if statement.strip()]


def apply_schema(db: ReplicaSet) -> None:
    """Create the tables and indexes if missing (idempotent)."""
    for statement in schema_statements(db.primary.dialect):
        db.execute(statement)


def _now() -> str:
    # Text both databases take for DATETIME(6) / TEXT, in UTC.
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _timestamp(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _task(row: Mapping[str, Any]) -> Task:
    return Task(
        id=int(row["id"]),
        title=row["title"],
        description=row["description"],
        status=TaskStatus(row["status"]),
        created_at=_timestamp(row["created_at"]),
        updated_at=_timestamp(row["updated_at"]),
    )


def _user(row: Mapping[str, Any]) -> User:
    return User(
        id=int(row["id"]),
        email=row["email"],
        username=row["username"],
        created_at=_timestamp(row["created_at"]),
    )


def _is_integrity_error(exc: BaseException) -> bool:
    # pymysql.err.IntegrityError and sqlite3.IntegrityError share only the DB-API name.
    return any(cls.__name__ == "IntegrityError" for cls in type(exc).__mro__)


@dataclasses.dataclass
class Storage:
    """The task API's data access.

    Args:
        users: the users database.
        shards: the task shards; a user's tasks live on ``shards.for_key(user_id)``.
    """

    users: ReplicaSet
    shards: ShardSet

    # -- users -------------------------------------------------------------
    async def create_user(self, email: str, username: str, password_hash: str) -> User:
        """Insert a user.

        Raises:
            Conflict: the email or username is taken.
        """
        created = _now()
        try:
            result = await self.users.aexecute(
                "INSERT INTO users (email, username, password_hash, created_at) "
                "VALUES (%s, %s, %s, %s)",
                (email, username, password_hash, created),
                key=f"email:{email}",
            )
        except Exception as exc:
            if _is_integrity_error(exc):
                raise Conflict("email or username already registered") from None
            raise
        if result.lastrowid is None:  # pragma: no cover - both drivers report it
            raise RuntimeError("the database did not report the new user's id")
        return User(
            id=result.lastrowid,
            email=email,
            username=username,
            created_at=_timestamp(created),
        )

    async def credentials(self, email: str) -> tuple[int, str] | None:
        """``(user id, password hash)`` for ``email``, or None.

        Keyed on the email, so a login right after registering reads where
        the new row is visible.
        """
        rows = await self.users.aquery(
            "SELECT id, password_hash FROM users WHERE email = %s", (email,), key=f"email:{email}"
        )
        return (int(rows[0]["id"]), str(rows[0]["password_hash"])) if rows else None

    async def user(self, user_id: int) -> User | None:
        """A user by id; a miss on a replica (lag after registering) asks the primary."""
        sql = "SELECT id, email, username, created_at FROM users WHERE id = %s"
        rows = await self.users.aquery(sql, (user_id,), key=user_id)
        if not rows:
            rows = await self.users.aquery(sql, (user_id,), primary=True)
        return _user(rows[0]) if rows else None

    # -- tasks -------------------------------------------------------------
    async def list_tasks(
        self, user_id: int, *, status: TaskStatus | None, limit: int, offset: int
    ) -> tuple[list[Task], bool]:
        """A page of the user's tasks, newest first, and whether more follow."""
        where = "user_id = %s"
        params: list[Any] = [user_id]
        if status is not None:
            where += " AND status = %s"
            params.append(status.value)
        rows = await self.shards.aquery(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE {where} ORDER BY id DESC LIMIT %s OFFSET %s",
            (*params, limit + 1, offset),
            key=user_id,
        )
        return [_task(row) for row in rows[:limit]], len(rows) > limit

    async def task(self, user_id: int, task_id: int) -> Task | None:
        """One of the user's tasks; another user's id is None, like a missing one."""
        rows = await self.shards.aquery(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = %s AND user_id = %s",
            (task_id, user_id),
            key=user_id,
        )
        return _task(rows[0]) if rows else None

    async def create_task(
        self, user_id: int, title: str, description: str, status: TaskStatus
    ) -> Task:
        """Insert a task on the user's shard."""
        now = _now()
        result = await self.shards.aexecute(
            "INSERT INTO tasks (user_id, title, description, status, created_at, updated_at) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (user_id, title, description, status.value, now, now),
            key=user_id,
        )
        if result.lastrowid is None:  # pragma: no cover - both drivers report it
            raise RuntimeError("the database did not report the new task's id")
        moment = _timestamp(now)
        return Task(
            id=result.lastrowid,
            title=title,
            description=description,
            status=status,
            created_at=moment,
            updated_at=moment,
        )

    async def update_task(
        self, user_id: int, task_id: int, changes: Mapping[str, str]
    ) -> Task | None:
        """Change some fields of one of the user's tasks; None if it has no such task."""
        unknown = set(changes) - _UPDATABLE
        if unknown or not changes:
            raise ValueError(f"cannot update {sorted(unknown) or 'nothing'}")
        # Column names come from the fixed set above, values are parameters.
        assignments = ", ".join(f"{column} = %s" for column in sorted(changes))
        values = [changes[column] for column in sorted(changes)]

        def update(cursor: Cursor) -> Task | None:
            cursor.execute(
                f"UPDATE tasks SET {assignments}, updated_at = %s WHERE id = %s AND user_id = %s",
                (*values, _now(), task_id, user_id),
            )
            # Read back on the same connection: no replica, no rowcount semantics.
            rows = cursor.query(
                f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = %s AND user_id = %s",
                (task_id, user_id),
            )
            return _task(rows[0]) if rows else None

        return await self.shards.atransaction(update, key=user_id)

    async def delete_task(self, user_id: int, task_id: int) -> bool:
        """Delete one of the user's tasks; False if it has no such task."""
        result = await self.shards.aexecute(
            "DELETE FROM tasks WHERE id = %s AND user_id = %s", (task_id, user_id), key=user_id
        )
        return result.rowcount > 0
