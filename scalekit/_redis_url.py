"""Redis URLs: the forms scalekit takes, their query options, and the parser.

:func:`parse_url` turns a URL into a :class:`RedisURL`; :mod:`scalekit._redis`
builds the client from it (and re-exports this module's public names). The forms:

- ``redis://[[user]:password@]host[:port][/db]`` and ``rediss://…`` (TLS)
- ``unix:///path/to/redis.sock[?db=0]``
- ``redis+sentinel://[[user]:password@]host:port[,host:port…]/service_name[/db]``
- ``redis+cluster://[[user]:password@]host:port[,host:port…]``
  (``rediss+sentinel://`` and ``rediss+cluster://`` for TLS)

Query parameters are redis-py's own connection options — every one its
``from_url`` takes (``socket_timeout``, ``health_check_interval``,
``ssl_ca_certs``, ``ssl_cert_reqs`` …, see :data:`URL_OPTIONS`) — plus
``retries`` (how many times redis-py retries a failed command). They are
converted and checked when the URL is parsed: an unknown name, a value that
does not convert, or a TLS option on a non-TLS URL raises
:class:`RedisURLError` naming it (and the closest known name). Query
parameters override the keyword arguments.

The default timeouts are short, because a cache or a rate limiter must fail
fast rather than make requests wait, but not so short that a busy host
turns a healthy Redis into errors: ``socket_timeout=0.25`` (one command),
``socket_connect_timeout=0.5`` (it covers the TLS handshake) and no retries.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import math
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from scalekit._extras import require
from scalekit.errors import ConfigurationError

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_SOCKET_TIMEOUT",
    "URL_OPTIONS",
    "RedisURL",
    "RedisURLError",
    "parse_url",
]

_SCHEMES = {
    "redis": ("standalone", False),
    "rediss": ("standalone", True),
    "unix": ("standalone", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}

DEFAULT_SOCKET_TIMEOUT = 0.25
"""Seconds one command may take. Redis answers in well under a millisecond;
50 ms (the old default) was exceeded by a healthy server whenever the host was
busy for a moment, which opened breakers and let requests through unlimited."""
DEFAULT_CONNECT_TIMEOUT = 0.5
"""Seconds a connect (and TLS handshake) may take; refused connections fail at once anyway."""


class RedisURLError(ConfigurationError):
    """A Redis URL does not parse, or has an option that is unknown or does not convert."""


# -- URL options: name -> converter of the query string's text ------------------


def _seconds(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise RedisURLError(
            f"Redis URL option {name} must be a number of seconds >= 0, got {text!r}"
        )
    return value


def _count(name: str, text: str) -> int:
    if not text.isdigit():
        raise RedisURLError(f"Redis URL option {name} must be a whole number >= 0, got {text!r}")
    return int(text)


def _positive(name: str, text: str) -> int:
    value = _count(name, text)
    if value < 1:
        raise RedisURLError(f"Redis URL option {name} must be >= 1, got {text!r}")
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _flag(name: str, text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise RedisURLError(f"Redis URL option {name} must be true or false, got {text!r}")


def _text(name: str, text: str) -> str:
    if not text:
        raise RedisURLError(f"Redis URL option {name} is empty")
    return text


def _protocol(name: str, text: str) -> int:
    if text not in ("2", "3"):
        raise RedisURLError(f"Redis URL option {name} must be 2 or 3 (RESP version), got {text!r}")
    return int(text)


def _cert_reqs(name: str, text: str) -> str:
    if text.lower() not in ("none", "optional", "required"):
        raise RedisURLError(
            f"Redis URL option {name} must be none, optional or required, got {text!r}"
        )
    return text.lower()


def _tls_version(name: str, text: str) -> ssl.TLSVersion:
    wanted = text.replace(".", "_").upper().removeprefix("TLSV")
    for version in ssl.TLSVersion:
        if version.name.upper().removeprefix("TLSV") == wanted:
            return version
    choices = ", ".join(v.name for v in ssl.TLSVersion if v.name.startswith("TLSv"))
    raise RedisURLError(f"Redis URL option {name} must be one of {choices}, got {text!r}")


def _verify_flags(name: str, text: str) -> list[ssl.VerifyFlags]:
    flags = []
    for part in filter(None, (item.strip() for item in text.split(","))):
        if part not in ssl.VerifyFlags.__members__:
            raise RedisURLError(
                f"Redis URL option {name}: {part!r} is not an ssl.VerifyFlags name "
                f"(e.g. VERIFY_X509_STRICT)"
            )
        flags.append(ssl.VerifyFlags[part])
    return flags


_Converter = Callable[[str, str], Any]

_CONNECTION: dict[str, _Converter] = {
    "socket_timeout": _seconds,
    "socket_connect_timeout": _seconds,
    "socket_keepalive": _flag,
    "socket_read_size": _positive,
    "retry_on_timeout": _flag,
    "health_check_interval": _seconds,
    "max_connections": _positive,
    "client_name": _text,
    "lib_name": _text,
    "lib_version": _text,
    "protocol": _protocol,
}
_TLS: dict[str, _Converter] = {
    "ssl_cert_reqs": _cert_reqs,
    "ssl_ca_certs": _text,
    "ssl_ca_path": _text,
    "ssl_ca_data": _text,
    "ssl_certfile": _text,
    "ssl_keyfile": _text,
    "ssl_password": _text,
    "ssl_check_hostname": _flag,
    "ssl_min_version": _tls_version,
    "ssl_ciphers": _text,
    "ssl_include_verify_flags": _verify_flags,
    "ssl_exclude_verify_flags": _verify_flags,
}
_CLUSTER: dict[str, _Converter] = {
    "require_full_coverage": _flag,
    "reinitialize_steps": _positive,
    "dynamic_startup_nodes": _flag,
}
_REFUSED = {
    "decode_responses": "scalekit's components read raw bytes from Redis",
    "encoding": "scalekit's components read raw bytes from Redis",
    "encoding_errors": "scalekit's components read raw bytes from Redis",
    "retry_on_error": "it takes exception classes; use retries= or retry_on_timeout=",
    "host": "put the host in the URL's authority",
    "port": "put the port in the URL's authority",
    "password": "put credentials in the URL: redis://user:password@host",
    "username": "put credentials in the URL: redis://user:password@host",
    "ssl": "use a rediss:// scheme for TLS",
}


@functools.cache
def _accepted(kind: str) -> frozenset[str]:
    """The option names the installed redis-py's async client of ``kind`` takes."""
    connection = require("redis.asyncio.connection", "redis")
    names: set[str] = set()
    if kind == "cluster":
        cluster = require("redis.asyncio.cluster", "redis")
        names |= set(inspect.signature(cluster.RedisCluster.__init__).parameters)
    else:
        for cls in (connection.AbstractConnection, connection.Connection, connection.SSLConnection):
            names |= set(inspect.signature(cls.__init__).parameters)
        names |= set(inspect.signature(connection.ConnectionPool.__init__).parameters)
    return frozenset(names)


URL_OPTIONS: dict[str, tuple[str, ...]] = {
    "connection": (*_CONNECTION, "retries"),
    "tls (rediss:// only)": tuple(_TLS),
    "cluster (redis+cluster:// only)": tuple(_CLUSTER),
}
"""The query parameters a Redis URL may carry, by where they apply.

Options the installed redis-py does not implement for the URL's kind (say
``ssl_ca_path`` on Cluster) are refused with a message saying so.
"""


def _client_options(kind: str, tls: bool, raw: dict[str, str]) -> dict[str, Any]:
    """Convert and check a URL's query options (``db`` already taken out)."""
    converted: dict[str, Any] = {}
    known = {**_CONNECTION, **_TLS, **(_CLUSTER if kind == "cluster" else {})}
    for name, text in raw.items():
        if name == "retries":
            converted[name] = _count(name, text)
            continue
        if name in _REFUSED:
            raise RedisURLError(f"Redis URL option {name} is not supported: {_REFUSED[name]}")
        converter = known.get(name)
        if converter is None:
            candidates = [*known, "retries", "db"]
            close = difflib.get_close_matches(name, candidates, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            where = " (a Cluster option)" if name in _CLUSTER else ""
            raise RedisURLError(
                f"Redis URL option {name!r} is not known{where}{hint} "
                f"Known options: {', '.join(sorted(candidates))}"
            )
        if name in _TLS and not tls:
            raise RedisURLError(
                f"Redis URL option {name} needs TLS: use a rediss:// scheme "
                "(rediss+sentinel://, rediss+cluster://)"
            )
        if name not in _accepted(kind):
            redis = require("redis", "redis")
            raise RedisURLError(
                f"Redis URL option {name} is not supported by redis-py {redis.__version__} "
                f"for {kind} clients"
            )
        converted[name] = converter(name, text)
    return converted


@dataclasses.dataclass(frozen=True)
class RedisURL:
    """A parsed Redis URL (see the module docstring for the forms)."""

    kind: str  # "standalone", "sentinel" or "cluster"
    ssl: bool
    hosts: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    db: int = 0
    service_name: str | None = None
    path: str | None = None
    options: dict[str, str] = dataclasses.field(default_factory=dict)
    """The query options as written (``db`` taken out)."""
    client_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The same options converted to what redis-py expects (checked by :func:`parse_url`)."""

    @property
    def redacted(self) -> str:
        """The URL's shape for messages and logs, never with the password."""
        where = self.path or ",".join(f"{host}:{port}" for host, port in self.hosts)
        service = f"/{self.service_name}" if self.service_name else ""
        return f"{self.kind}:{where}{service}/{self.db}"


def parse_url(url: str) -> RedisURL:
    """Parse a Redis URL.

    Raises:
        RedisURLError: (a ``ValueError``) the scheme is unknown, a port or db is
            not a number, a sentinel URL names no service, or a query option is
            unknown, does not convert or does not apply to this kind of URL.
            The message never includes the password.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise RedisURLError("Redis URL does not parse; expected redis://host:port/db") from exc
    # A password with an unencoded "/", "?" or "#" ends the host part early: the
    # rest of it lands in the port, the db, the options or the fragment, whose
    # error messages would quote it. Such errors say what to do, quoting nothing.
    misplaced = "@" in url and "@" not in parts.netloc
    if "#" in url:  # a fragment means nothing to Redis: a "#" is in the password
        raise RedisURLError(_UNENCODED_PASSWORD)
    try:
        return _parse_parts(parts)
    except RedisURLError:
        if misplaced:
            raise RedisURLError(_UNENCODED_PASSWORD) from None
        raise


_UNENCODED_PASSWORD = (
    "Redis URL does not parse: a '/', '?' or '#' in the password (or a '#' anywhere) "
    "ends the part it belongs to; percent-encode the password "
    "(urllib.parse.quote(password, safe=''))"
)


def _parse_parts(parts: SplitResult) -> RedisURL:
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise RedisURLError(
            f"Redis URL scheme {parts.scheme!r} is not supported; use one of "
            + ", ".join(f"{name}://" for name in _SCHEMES)
        )
    kind, tls = _SCHEMES[scheme]
    options = {
        key: values[-1] for key, values in parse_qs(parts.query, keep_blank_values=True).items()
    }
    netloc = parts.netloc
    username = password = None
    if "@" in netloc:
        credentials, netloc = netloc.rsplit("@", 1)
        user_part, _, password_part = credentials.partition(":")
        username = unquote(user_part) or None
        password = unquote(password_part) or None
    if scheme == "unix":
        db = _int_option(options.pop("db", "0"), "db")
        return RedisURL(
            kind,
            tls,
            (),
            username,
            password,
            db,
            path=unquote(parts.path),
            options=options,
            client_options=_client_options(kind, tls, options),
        )
    hosts = tuple(_host_port(item) for item in netloc.split(",") if item)
    if not hosts:
        hosts = (("127.0.0.1", 26379 if kind == "sentinel" else 6379),)
    segments = [segment for segment in parts.path.split("/") if segment]
    service_name = None
    if kind == "sentinel":
        if not segments:
            raise RedisURLError(
                "a redis+sentinel:// URL must name the service: "
                "redis+sentinel://host:26379/mymaster[/db]"
            )
        service_name = unquote(segments.pop(0))
    query_db = options.pop("db", None)
    if segments and query_db is not None and query_db != segments[0]:
        raise RedisURLError(
            f"Redis URL names two databases (/{segments[0]} and ?db={query_db}); keep one"
        )
    db = _int_option(segments[0] if segments else query_db or "0", "db")
    if kind == "cluster" and db != 0:
        raise RedisURLError(f"Redis Cluster has only database 0, the URL asks for {db}")
    return RedisURL(
        kind,
        tls,
        hosts,
        username,
        password,
        db,
        service_name,
        options=options,
        client_options=_client_options(kind, tls, options),
    )


def _int_option(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise RedisURLError(f"Redis URL: {name} must be a whole number, got {value!r}") from None


def _host_port(item: str) -> tuple[str, int]:
    if item.startswith("["):  # [v6]:port
        host, _, rest = item[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, _, port = item.partition(":")
    if not port:
        return host, 6379
    try:
        return host, int(port)
    except ValueError:
        raise RedisURLError(f"Redis URL: port must be a number, got {port!r}") from None
