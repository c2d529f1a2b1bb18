"""Pool URLs: ``mysql://user:pw@host:3306/db?max_connections=20`` and ``sqlite:///path``."""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .errors import ConfigError

__all__ = ["ParsedURL", "parse_url", "redact"]

_INT_OPTIONS = frozenset({"max_connections", "min_idle", "max_idle"})
_FLOAT_OPTIONS = frozenset(
    {
        "acquire_timeout",
        "connect_timeout",
        "read_timeout",
        "write_timeout",
        "max_lifetime",
        "idle_timeout",
        "ping_after_idle",
    }
)
_STR_OPTIONS = frozenset({"charset", "name", "ssl_mode", "ssl_ca"})
OPTIONS = _INT_OPTIONS | _FLOAT_OPTIONS | _STR_OPTIONS
"""Every option a pool URL's query string may carry."""

_MYSQL_SCHEMES = frozenset({"mysql", "mysql+pymysql", "mariadb", "mariadb+pymysql"})


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedURL:
    """A pool URL split into the driver, its connect arguments and pool options."""

    driver: str  # "pymysql" or "sqlite3"
    connect_args: dict[str, Any]
    options: dict[str, Any]
    name: str


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        # No "@": a mistyped "mysql://user:password/db" reads as host:port,
        # and the "port" is a password that must not reach a message.
        head, colon, tail = parts.netloc.rpartition(":")
        if colon and head and not head.endswith("]") and not tail.isdigit():
            return parts._replace(netloc=f"{head}:***").geturl()
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{hostinfo}").geturl()


def _options(query: str, safe_url: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in OPTIONS:
            raise ConfigError(
                f"unknown option {key!r} in database URL {safe_url}; "
                f"known options: {', '.join(sorted(OPTIONS))}"
            )
        try:
            if key in _INT_OPTIONS:
                options[key] = int(value)
            elif key in _FLOAT_OPTIONS:
                options[key] = float(value)
            else:
                options[key] = value
        except ValueError:
            kind = "an integer" if key in _INT_OPTIONS else "a number of seconds"
            raise ConfigError(
                f"option {key}={value!r} in database URL {safe_url} must be {kind}"
            ) from None
    return options


def parse_url(url: str) -> ParsedURL:
    """Split a pool URL.

    Raises:
        ConfigError: unknown scheme or option, a bad port or value; the
            message shows the URL with its password hidden.
    """
    safe = redact(url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"bad database URL {safe}: {exc}") from None
    try:
        port = parts.port
    except ValueError:
        # Not urllib's message: it quotes the "port", which may be a password.
        raise ConfigError(
            f"bad database URL {safe}: the port is not a number from 0 to 65535 "
            "(write mysql://user:password@host:3306/database)"
        ) from None
    scheme = parts.scheme.lower()
    options = _options(parts.query, safe)
    if scheme == "sqlite":
        if parts.netloc:
            raise ConfigError(
                f"bad SQLite URL {safe}: write sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db (three or four slashes, no host)"
            )
        path = unquote(parts.path[1:]) if parts.path.startswith("/") else unquote(parts.path)
        if not path:
            raise ConfigError(f"SQLite URL {safe} names no file: sqlite:///path/to/app.db")
        options.pop("charset", None)
        if path == ":memory:":
            # Each connection would be a separate empty database.
            options.setdefault("max_connections", 1)
        return ParsedURL(
            driver="sqlite3",
            connect_args={"database": path},
            options=options,
            name=options.pop("name", path),
        )
    if scheme not in _MYSQL_SCHEMES:
        raise ConfigError(
            f"unsupported database URL scheme {parts.scheme!r} in {safe}: "
            "use mysql://user:password@host:3306/database or sqlite:///path.db"
        )
    host = parts.hostname or "127.0.0.1"
    database = unquote(parts.path.lstrip("/")) or None
    connect_args: dict[str, Any] = {
        "host": host,
        "port": port or 3306,
        "user": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else "",
        "database": database,
        "charset": options.pop("charset", "utf8mb4"),
    }
    for timeout in ("connect_timeout", "read_timeout", "write_timeout"):
        if timeout in options:
            connect_args[timeout] = options.pop(timeout)
    name = options.pop("name", f"{host}:{port or 3306}/{database or ''}")
    return ParsedURL(driver="pymysql", connect_args=connect_args, options=options, name=name)
