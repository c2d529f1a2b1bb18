"""Redis clients from a URL: standalone, Sentinel or Cluster.

Every scalekit component that talks to Redis gets its client here, so one
URL scheme works everywhere:

- ``redis://[[user]:password@]host[:port][/db]`` and ``rediss://…`` (TLS)
- ``unix:///path/to/redis.sock[?db=0]``
- ``redis+sentinel://[[user]:password@]host:port[,host:port…]/service_name[/db]``
- ``redis+cluster://[[user]:password@]host:port[,host:port…]``
  (``rediss+sentinel://`` and ``rediss+cluster://`` for TLS)

Query parameters ``socket_timeout``, ``socket_connect_timeout`` (seconds) and
``retries`` override the keyword arguments. The defaults are short because a
cache or a rate limiter must fail fast rather than make requests wait:
``socket_timeout=0.05``, ``socket_connect_timeout=0.1`` and no retries.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from scalekit._extras import require

__all__ = [
    "RedisURL",
    "from_url",
    "hash_tag",
    "parse_url",
    "redis_errors",
    "sync_from_url",
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

DEFAULT_SOCKET_TIMEOUT = 0.05
DEFAULT_CONNECT_TIMEOUT = 0.1


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

    @property
    def redacted(self) -> str:
        """The URL's shape for messages and logs, never with the password."""
        where = self.path or ",".join(f"{host}:{port}" for host, port in self.hosts)
        service = f"/{self.service_name}" if self.service_name else ""
        return f"{self.kind}:{where}{service}/{self.db}"


def parse_url(url: str) -> RedisURL:
    """Parse a Redis URL.

    Raises:
        ValueError: the scheme is unknown, a port or db is not a number, or a
            sentinel URL names no service. The message never includes the password.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError("Redis URL does not parse; expected redis://host:port/db") from exc
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError(
            f"Redis URL scheme {parts.scheme!r} is not supported; use one of "
            + ", ".join(f"{name}://" for name in _SCHEMES)
        )
    kind, ssl = _SCHEMES[scheme]
    options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
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
            kind, ssl, (), username, password, db, path=unquote(parts.path), options=options
        )
    hosts = tuple(_host_port(item) for item in netloc.split(",") if item)
    if not hosts:
        hosts = (("127.0.0.1", 26379 if kind == "sentinel" else 6379),)
    segments = [segment for segment in parts.path.split("/") if segment]
    service_name = None
    if kind == "sentinel":
        if not segments:
            raise ValueError(
                "a redis+sentinel:// URL must name the service: "
                "redis+sentinel://host:26379/mymaster[/db]"
            )
        service_name = unquote(segments.pop(0))
    db = _int_option(segments[0] if segments else options.pop("db", "0"), "db")
    if kind == "cluster" and db != 0:
        raise ValueError(f"Redis Cluster has only database 0, the URL asks for {db}")
    return RedisURL(kind, ssl, hosts, username, password, db, service_name, options=options)


def _int_option(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"Redis URL: {name} must be a whole number, got {value!r}") from None


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
        raise ValueError(f"Redis URL: port must be a number, got {port!r}") from None


def _client_kwargs(
    parsed: RedisURL,
    socket_timeout: float | None,
    socket_connect_timeout: float | None,
    retries: int,
    extra: dict[str, Any],
) -> tuple[dict[str, Any], int]:
    options = dict(parsed.options)
    if "socket_timeout" in options:
        socket_timeout = float(options.pop("socket_timeout"))
    if "socket_connect_timeout" in options:
        socket_connect_timeout = float(options.pop("socket_connect_timeout"))
    if "retries" in options:
        retries = int(options.pop("retries"))
    kwargs: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_connect_timeout,
        "username": parsed.username,
        "password": parsed.password,
    }
    if parsed.ssl:
        kwargs["ssl"] = True
    kwargs.update(extra)
    return kwargs, retries


def _make_client(
    url: str,
    *,
    asynchronous: bool,
    socket_timeout: float | None,
    socket_connect_timeout: float | None,
    retries: int,
    extra: dict[str, Any],
) -> Any:
    parsed = parse_url(url)
    prefix = "redis.asyncio" if asynchronous else "redis"
    client_module = require(prefix, "redis", feature="scalekit's Redis support")
    retry_module = require(f"{prefix}.retry", "redis")
    backoff = require("redis.backoff", "redis")
    kwargs, retries = _client_kwargs(parsed, socket_timeout, socket_connect_timeout, retries, extra)
    kwargs["retry"] = retry_module.Retry(backoff.NoBackoff(), retries)
    if parsed.kind == "cluster":
        cluster = require(f"{prefix}.cluster", "redis")
        nodes = [cluster.ClusterNode(host, port) for host, port in parsed.hosts]
        return cluster.RedisCluster(startup_nodes=nodes, **kwargs)
    if parsed.kind == "sentinel":
        sentinel_module = require(f"{prefix}.sentinel", "redis")
        sentinel_kwargs = {
            "socket_timeout": kwargs["socket_timeout"],
            "socket_connect_timeout": kwargs["socket_connect_timeout"],
            "username": kwargs["username"],
            "password": kwargs["password"],
        }
        sentinel = sentinel_module.Sentinel(
            list(parsed.hosts), sentinel_kwargs=sentinel_kwargs, **kwargs
        )
        redis_class = _sentinel_owning_class(client_module.Redis, asynchronous)
        return sentinel.master_for(parsed.service_name, db=parsed.db, redis_class=redis_class)
    if parsed.path:
        return client_module.Redis(unix_socket_path=parsed.path, db=parsed.db, **kwargs)
    host, port = parsed.hosts[0]
    return client_module.Redis(host=host, port=port, db=parsed.db, **kwargs)


_owning_classes: dict[tuple[Any, bool], type] = {}


def _sentinel_owning_class(base: Any, asynchronous: bool) -> type:
    """A client class whose close also closes its connections to the sentinels.

    redis-py's ``master_for`` client leaves those open, which leaks sockets
    (and a ResourceWarning) every time a Sentinel-backed client is closed.
    """
    key = (base, asynchronous)
    if key not in _owning_classes:
        if asynchronous:

            async def aclose(self: Any, close_connection_pool: bool | None = None) -> None:
                await base.aclose(self, close_connection_pool)
                for sentinel in self.connection_pool.sentinel_manager.sentinels:
                    await sentinel.aclose()

            _owning_classes[key] = type("SentinelRedis", (base,), {"aclose": aclose})
        else:

            def close(self: Any) -> None:
                base.close(self)
                for sentinel in self.connection_pool.sentinel_manager.sentinels:
                    sentinel.close()

            _owning_classes[key] = type("SentinelRedis", (base,), {"close": close})
    return _owning_classes[key]


def from_url(
    url: str,
    *,
    socket_timeout: float | None = DEFAULT_SOCKET_TIMEOUT,
    socket_connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    retries: int = 0,
    **extra: Any,
) -> Any:
    """An asyncio client (``redis.asyncio.Redis`` or ``RedisCluster``) for ``url``.

    Args:
        url: see the module docstring.
        socket_timeout: seconds a command may take before it fails.
        socket_connect_timeout: seconds a connect may take.
        retries: how many times redis-py retries a failed command itself.
        **extra: passed on to the redis-py client.

    Raises:
        MissingExtraError: redis-py is not installed (``pip install "scalekit[redis]"``).
        ValueError: the URL is malformed.
    """
    return _make_client(
        url,
        asynchronous=True,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_connect_timeout,
        retries=retries,
        extra=extra,
    )


def sync_from_url(
    url: str,
    *,
    socket_timeout: float | None = DEFAULT_SOCKET_TIMEOUT,
    socket_connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    retries: int = 0,
    **extra: Any,
) -> Any:
    """The blocking twin of :func:`from_url` (``redis.Redis`` or ``redis.cluster.RedisCluster``).

    For code that runs in worker threads, such as the database's
    read-your-writes marks or a thread-safe cache invalidation.
    """
    return _make_client(
        url,
        asynchronous=False,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_connect_timeout,
        retries=retries,
        extra=extra,
    )


def redis_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "Redis is unavailable" (connection, timeout, cluster moves).

    Components catch these to bypass the cache or fail open.
    """
    exceptions = require("redis.exceptions", "redis")
    return (exceptions.RedisError, OSError, TimeoutError)


def hash_tag(value: str) -> str:
    """``{value}`` with braces removed from ``value``, so keys sharing it share a Cluster slot."""
    cleaned = value.replace("{", "").replace("}", "")
    return "{" + (cleaned or "_") + "}"
