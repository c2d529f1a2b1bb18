"""Request and response bodies (pydantic): what the API accepts and what it answers."""

from __future__ import annotations

import enum
import unicodedata
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

__all__ = [
    "ErrorBody",
    "FieldError",
    "Login",
    "Registration",
    "Task",
    "TaskCreate",
    "TaskPage",
    "TaskPatch",
    "TaskReplace",
    "TaskStatus",
    "Token",
    "User",
]


class TaskStatus(enum.StrEnum):
    """Where a task stands."""

    TODO = "todo"
    IN_PROGRESS = "in_progress"
    DONE = "done"


def _storable(value: str) -> str:
    # Both databases store any Unicode text, but not lone surrogates (which
    # JSON's \ud800 escapes can produce) and not NUL in MariaDB's VARCHAR.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


# Patterns use explicit classes, never \s or \S: Python, pydantic's Rust
# engine and JSON Schema's ECMA-262 disagree on what whitespace is (U+0085).
# No NUL anywhere (MariaDB and C clients mishandle it), and in a title at
# least one character that is not ASCII whitespace.
_NO_NUL = r"^[^\x00]*$"
_NOT_BLANK = r"^[^\x00]*[^\t\n\x0b\x0c\r \x00][^\x00]*$"
# Printable ASCII but "@" (after NFKC, so a fullwidth address still fits):
# the schema can then say exactly what is accepted, which a rule over Unicode
# categories (invisible, private-use, surrogate characters) could not.
_ADDRESS_PART = r"[\x21-\x3f\x41-\x7e]+"
Title = Annotated[
    str, Field(min_length=1, max_length=200, pattern=_NOT_BLANK), AfterValidator(_storable)
]
# Every valid body fits the 64 KB limit even fully escaped: a character may
# take 12 bytes of JSON (an astral one as two \uXXXX escapes), and
# 5,000 + 200 characters of 12 bytes is 62,400.
Description = Annotated[str, Field(max_length=5_000, pattern=_NO_NUL), AfterValidator(_storable)]


def _nfkc(value: Any) -> Any:
    # Compatibility forms (fullwidth letters, ligatures) are one
    # address with their plain form: MariaDB's utf8mb4_unicode_ci compares
    # them equal, SQLite's NOCASE does not. Normalised before the pattern,
    # so a fullwidth at sign (U+FF20) cannot become a second "@" after it is checked.
    return unicodedata.normalize("NFKC", value) if isinstance(value, str) else value


def _address(value: str) -> str:
    # Invisible characters (soft hyphen, zero-width space and joiners, BOM,
    # bidi marks) made "ada@example.com" twice over: a second account that
    # reads the same on SQLite, and on MariaDB, whose collation ignores
    # them, the same account under another spelling.
    for char in value:
        if unicodedata.category(char) in ("Cc", "Cf", "Co", "Cs", "Zl", "Zp", "Zs"):
            raise ValueError(
                f"must not contain invisible or control characters (U+{ord(char):04X})"
            )
    return value.lower()


_EMAIL_PATTERN = rf"^{_ADDRESS_PART}@{_ADDRESS_PART}\.{_ADDRESS_PART}$"
Email = Annotated[
    str,
    BeforeValidator(_nfkc),
    # pydantic leaves a constraint behind a BeforeValidator out of the JSON
    # schema: restate the pattern so /openapi.json says what is accepted.
    Field(
        min_length=3,
        max_length=254,
        pattern=_EMAIL_PATTERN,
        json_schema_extra={"pattern": _EMAIL_PATTERN},
    ),
    AfterValidator(lambda value: _address(_storable(value))),
]
Username = Annotated[str, Field(min_length=3, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")]
Password = Annotated[SecretStr, Field(min_length=8, max_length=256)]

_strict = ConfigDict(extra="forbid")


class Registration(BaseModel):
    """``POST /api/v1/auth/register``."""

    model_config = _strict
    email: Email
    username: Username
    password: Password


class Login(BaseModel):
    """``POST /api/v1/auth/login``: the email and password given at registration."""

    model_config = _strict
    email: Email
    password: Annotated[SecretStr, Field(min_length=1, max_length=256)]


class Token(BaseModel):
    """An access token for ``Authorization: Bearer …``."""

    access_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="seconds until the token expires")


class User(BaseModel):
    """A registered user (never the password hash)."""

    id: int
    email: str
    username: str
    created_at: datetime


class TaskCreate(BaseModel):
    """``POST /api/v1/tasks``."""

    model_config = _strict
    title: Title
    description: Description = ""
    status: TaskStatus = TaskStatus.TODO


class TaskReplace(BaseModel):
    """``PUT /api/v1/tasks/{id}``: every field."""

    model_config = _strict
    title: Title
    description: Description
    status: TaskStatus


def _non_null(schema: dict[str, Any]) -> None:
    # The field is optional, never null: document only its non-null branch.
    options = schema.pop("anyOf", [])
    schema.update(next((option for option in options if option.get("type") != "null"), {}))
    schema.pop("default", None)


class TaskPatch(BaseModel):
    """``PATCH /api/v1/tasks/{id}``: the fields to change (at least one; none may be null)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})
    title: Title | None = Field(default=None, json_schema_extra=_non_null)
    description: Description | None = Field(default=None, json_schema_extra=_non_null)
    status: TaskStatus | None = Field(default=None, json_schema_extra=_non_null)

    @field_validator("title", "description", "status", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("cannot be null; leave the field out to keep it")
        return value

    @model_validator(mode="before")
    @classmethod
    def _not_empty(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data:
            raise ValueError("give at least one of title, description, status")
        return data

    def changes(self) -> dict[str, str]:
        """The fields given, as column → value."""
        return {name: str(getattr(self, name)) for name in sorted(self.model_fields_set)}


class Task(BaseModel):
    """A task, as stored on its owner's shard."""

    id: int
    title: str
    description: str
    status: TaskStatus
    created_at: datetime
    updated_at: datetime


class TaskPage(BaseModel):
    """One page of a user's tasks, newest first."""

    items: list[Task]
    limit: int
    offset: int
    next_offset: int | None = Field(description="offset of the next page; null on the last")


class FieldError(BaseModel):
    """One invalid field of a 422."""

    loc: list[str | int]
    message: str
    type: str


class ErrorBody(BaseModel):
    """Every error answer: a stable code, a sentence, and for 422 the fields."""

    error: str = Field(description="a stable machine-readable code, e.g. not_found")
    detail: str = Field(description="what went wrong, for a human")
    fields: list[FieldError] | None = None
    retry_after: int | None = None
