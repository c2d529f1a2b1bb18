"""Redis clients from a URL: standalone, Sentinel or Cluster.

Every scalekit component that talks to Redis gets its client here, so one
URL scheme works everywhere. The URL forms, their query options and the
default timeouts are in :mod:`scalekit._redis_url` (its public names are
re-exported here); this module builds the redis-py client for a parsed URL
(:func:`from_url`, :func:`sync_from_url`), names the errors that mean Redis is
unavailable, and types the clients scalekit accepts.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from scalekit._extras import require
from scalekit._redis_url import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_SOCKET_TIMEOUT,
    URL_OPTIONS,
    RedisURL,
    RedisURLError,
    parse_url,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_SOCKET_TIMEOUT",
    "URL_OPTIONS",
    "AsyncPipeline",
    "AsyncRedisClient",
    "RedisURL",
    "RedisURLError",
    "SyncPipeline",
    "SyncRedisClient",
    "from_url",
    "hash_tag",
    "parse_url",
    "redis_errors",
    "sync_from_url",
]


def _client_kwargs(
    parsed: RedisURL,
    socket_timeout: float | None,
    socket_connect_timeout: float | None,
    retries: int,
    extra: dict[str, Any],
) -> tuple[dict[str, Any], int]:
    options = dict(parsed.client_options)
    retries = options.pop("retries", retries)
    kwargs: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_connect_timeout,
        "username": parsed.username,
        "password": parsed.password,
    }
    if parsed.ssl:
        kwargs["ssl"] = True
    kwargs.update(extra)
    kwargs.update(options)  # the URL's options win over the keyword arguments
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
        if not asynchronous:
            _check_sync_cluster(cluster, kwargs)
        return cluster.RedisCluster(startup_nodes=nodes, **kwargs)
    if parsed.kind == "sentinel":
        sentinel_module = require(f"{prefix}.sentinel", "redis")
        # The sentinels are reached like the servers they watch: same
        # timeouts, credentials and (for rediss+sentinel://) TLS options.
        shared = ("socket_timeout", "socket_connect_timeout", "username", "password", "ssl")
        sentinel_kwargs = {
            name: value
            for name, value in kwargs.items()
            if name in shared or name.startswith("ssl_")
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


def _check_sync_cluster(cluster: Any, kwargs: dict[str, Any]) -> None:
    # redis-py's blocking RedisCluster drops connection options it does not
    # list (health_check_interval, ssl_min_version …) without a word.
    allowed = set(getattr(cluster, "REDIS_ALLOWED_KEYS", ())) | set(
        inspect.signature(cluster.RedisCluster.__init__).parameters
    )
    dropped = sorted(name for name in kwargs if name not in allowed and name != "retry")
    if allowed and dropped:
        raise RedisURLError(
            f"Redis URL options {', '.join(dropped)} are not supported by redis-py's "
            "blocking Cluster client (used for invalidate_sync and read-your-writes marks)"
        )


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
        url: a Redis URL, in a form :mod:`scalekit._redis_url` describes.
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


# -- what scalekit calls on a client you pass in -----------------------------
# Protocols, so that typing a parameter does not import redis-py (an extra):
# redis-py's asyncio ``Redis``, ``RedisCluster`` and Sentinel's master client
# satisfy the async ones, ``redis.Redis`` and ``redis.cluster.RedisCluster``
# the blocking ones.


class AsyncPipeline(Protocol):
    """A redis-py asyncio pipeline, as the cache's invalidation uses it."""

    def incr(self, name: str, amount: int = ...) -> object: ...

    def execute(self, raise_on_error: bool = ...) -> Awaitable[list[Any]]: ...


class AsyncRedisClient(Protocol):
    """A redis-py asyncio client (``redis.asyncio.Redis``, ``RedisCluster``)."""

    def ping(self) -> Awaitable[bool]: ...

    def register_script(self, script: str) -> Callable[..., Awaitable[Any]]: ...

    def pipeline(self, transaction: bool = ...) -> AsyncPipeline: ...

    def execute_command(self, *args: Any) -> Awaitable[Any]: ...

    async def aclose(self) -> None: ...


class SyncPipeline(Protocol):
    """A blocking redis-py pipeline."""

    def incr(self, name: str, amount: int = ...) -> object: ...

    def execute(self, raise_on_error: bool = ...) -> list[Any]: ...


class SyncRedisClient(Protocol):
    """A blocking redis-py client (``redis.Redis``, ``redis.cluster.RedisCluster``)."""

    def pipeline(self, transaction: bool = ...) -> SyncPipeline: ...

    def close(self) -> None: ...
