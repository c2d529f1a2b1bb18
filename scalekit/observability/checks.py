"""The readiness checks scalekit ships, duck-typed so this module imports no component.

:class:`PoolCheck`, :class:`ReplicaSetCheck`, :class:`RedisCheck` and
:class:`CallableCheck` take the objects they check by what they can do (the
protocols below), so ``scalekit.observability`` never imports ``scalekit.db``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, cast, runtime_checkable

from scalekit._replica_status import STATUS_STATEMENTS, parse_replica_status
from scalekit.observability.check_base import STATUS_ORDER, Check, CheckResult

__all__ = [
    "CallableCheck",
    "HasPrimary",
    "HasReplicas",
    "PoolCheck",
    "PoolLike",
    "RedisCheck",
    "ReplicaSetCheck",
    "SupportsAsyncPing",
    "SupportsAsyncQuery",
    "SupportsPing",
    "SupportsQuery",
    "SupportsReplicaLags",
]


# -- what the checks accept: protocols, so this module imports no component ---


class SupportsPing(Protocol):
    """Anything with ``ping()``, sync or async (a Redis client, a pool)."""

    def ping(self) -> object: ...


class SupportsAsyncPing(Protocol):
    """Anything with ``async aping()``."""

    def aping(self) -> Awaitable[object]: ...


@runtime_checkable
class SupportsQuery(Protocol):
    """Anything with a blocking ``query(sql)`` returning rows (a ``scalekit.db.Pool``)."""

    def query(self, sql: str, /) -> Iterable[Mapping[str, Any]]: ...


@runtime_checkable
class SupportsAsyncQuery(Protocol):
    """Anything with ``async aquery(sql)``."""

    def aquery(self, sql: str, /) -> Awaitable[object]: ...


PoolLike = SupportsPing | SupportsAsyncPing | SupportsQuery | SupportsAsyncQuery
"""What :class:`PoolCheck` checks: a pool with one of ``aping``, ``ping``, ``aquery``, ``query``."""


class HasPrimary(Protocol):
    """A replica set: :class:`PoolCheck` checks its primary."""

    @property
    def primary(self) -> PoolLike: ...


class HasReplicas(Protocol):
    """A replica set whose replicas answer ``SHOW REPLICA STATUS`` (a ``ReplicaSet``)."""

    @property
    def replicas(self) -> Sequence[SupportsQuery]: ...


class SupportsReplicaLags(Protocol):
    """A replica set that reports its lags itself: name -> seconds, None when stopped."""

    def replica_lags(
        self,
    ) -> Mapping[str, float | None] | Awaitable[Mapping[str, float | None]]: ...


async def _call(check: Check, function: Callable[..., Any], *args: Any) -> Any:
    """Await ``function(*args)`` if it is async, else run it in the check's thread."""
    if inspect.iscoroutinefunction(function):
        return await function(*args)
    result = await check.in_thread(lambda: function(*args))
    if inspect.isawaitable(result):
        return await result
    return result


def _elapsed_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


class PoolCheck(Check):
    """A database pool answers ``SELECT 1`` (duck-typed: no ``scalekit.db`` import).

    Uses the first of: ``pool.aping()`` / ``pool.ping()``, ``pool.aquery(sql)``,
    ``pool.query(sql)`` (blocking calls run in a thread). A ``ReplicaSet``
    (anything with a ``primary``) is checked on its primary.

    Args:
        name: the component name (``"db"``).
        pool: the pool to check.
        critical: a failure makes ready answer 503 (default True).
        timeout: seconds (default: the ``Health`` timeout).
        sql: the statement to run.
    """

    measurement = "responseTime"
    component_type = "datastore"

    def __init__(
        self,
        name: str,
        pool: PoolLike | HasPrimary,
        critical: bool = True,
        *,
        timeout: float | None = None,
        sql: str = "SELECT 1",
    ) -> None:
        super().__init__(name, critical=critical, timeout=timeout)
        target = cast(PoolLike, getattr(pool, "primary", None) or pool)
        if not any(hasattr(target, m) for m in ("aping", "ping", "aquery", "query")):
            raise TypeError(
                f"PoolCheck({name!r}) needs an object with ping(), aping(), query() or aquery(); "
                f"got {type(pool).__name__}"
            )
        self.pool = target
        self.sql = sql

    async def check(self) -> CheckResult:
        pool = self.pool
        start = time.perf_counter()
        for method in ("aping", "ping"):
            if hasattr(pool, method):
                await _call(self, getattr(pool, method))
                break
        else:
            if isinstance(pool, SupportsAsyncQuery):
                await pool.aquery(self.sql)
            else:
                await _call(self, cast(SupportsQuery, pool).query, self.sql)
        return CheckResult("pass", _elapsed_ms(start), "ms")


class ReplicaSetCheck(Check):
    """Replication lag of each replica of a replica set, in seconds (duck-typed).

    Reads ``replica_set.replica_lags()`` (a mapping name -> seconds or None)
    when it exists, else asks each pool in ``replica_set.replicas`` for
    ``SHOW REPLICA STATUS``. A replica lagging more than ``max_lag`` is
    ``warn`` (reads go to the primary meanwhile); a stopped or unreachable
    one is ``fail``.

    Args:
        name: the component name (``"db-replicas"``).
        replica_set: the replica set.
        critical: a failure makes ready answer 503 (default False: reads
            fall back to the primary).
        max_lag: seconds (default: ``replica_set.max_lag``, else 2.0).
        timeout: seconds (default: the ``Health`` timeout).
    """

    measurement = "replicationLag"
    component_type = "datastore"

    def __init__(
        self,
        name: str,
        replica_set: HasReplicas | SupportsReplicaLags,
        critical: bool = False,
        *,
        max_lag: float | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(name, critical=critical, timeout=timeout)
        if not (hasattr(replica_set, "replica_lags") or hasattr(replica_set, "replicas")):
            raise TypeError(
                f"ReplicaSetCheck({name!r}) needs an object with replica_lags() or replicas; "
                f"got {type(replica_set).__name__}"
            )
        self.replica_set = replica_set
        self.max_lag = float(
            max_lag if max_lag is not None else getattr(replica_set, "max_lag", 2.0)
        )

    async def check(self) -> list[CheckResult]:
        lags: Mapping[str, float | None]
        if hasattr(self.replica_set, "replica_lags"):
            lags = await _call(self, self.replica_set.replica_lags)
        else:
            lags = await self.in_thread(self._query_lags)
        if not lags:
            return [CheckResult("warn", output="no replicas")]
        return [self._result(name, lag) for name, lag in lags.items()]

    def _result(self, name: str, lag: float | None) -> CheckResult:
        if lag is None:
            return CheckResult("fail", None, "s", "replication stopped", component_id=name)
        status = "pass" if lag <= self.max_lag else "warn"
        output = None if status == "pass" else f"lag above {self.max_lag:g}s"
        return CheckResult(status, lag, "s", output, component_id=name)

    def _query_lags(self) -> dict[str, float | None]:
        lags: dict[str, float | None] = {}
        replicas: Sequence[SupportsQuery] = getattr(self.replica_set, "replicas", ())
        for index, pool in enumerate(replicas):
            name = str(getattr(pool, "name", "") or f"replica{index}")
            if name in lags:
                name = f"{name}-{index}"
            try:
                rows = self._status(pool)
            except Exception:
                lags[name] = None
                continue
            lags[name] = _lag_of(rows)
        return lags

    @staticmethod
    def _status(pool: SupportsQuery) -> list[Mapping[str, Any]]:
        error: Exception | None = None
        for sql in STATUS_STATEMENTS:
            try:
                return list(pool.query(sql))
            except Exception as exc:  # older servers know only the SLAVE spelling
                error = exc
        assert error is not None
        raise error


def _lag_of(rows: list[Mapping[str, Any]]) -> float | None:
    status = parse_replica_status(rows)
    return status.lag if status.replicating else None


class RedisCheck(Check):
    """A Redis server answers ``PING``.

    Args:
        name: the component name (``"redis"``).
        url_or_client: a URL (any form :mod:`scalekit._redis_url` describes: standalone,
            Sentinel, Cluster) or a client with ``ping()`` (sync or async).
        critical: a failure makes ready answer 503 (default False: the cache
            and rate limiter degrade around a Redis outage).
        timeout: seconds (default: the ``Health`` timeout).
    """

    measurement = "responseTime"
    component_type = "datastore"

    def __init__(
        self,
        name: str,
        url_or_client: str | SupportsPing,
        critical: bool = False,
        *,
        timeout: float | None = None,
    ) -> None:
        super().__init__(name, critical=critical, timeout=timeout)
        if isinstance(url_or_client, str):
            from scalekit._redis import parse_url

            parse_url(url_or_client)  # a malformed URL fails now, not at the first probe
            self.url: str | None = url_or_client
            self.client: Any = None
        elif hasattr(url_or_client, "ping"):
            self.url = None
            self.client = url_or_client
        else:
            raise TypeError(
                f"RedisCheck({name!r}) takes a Redis URL or a client with ping(); "
                f"got {type(url_or_client).__name__}"
            )
        # A URL gets one asyncio client per event loop: redis-py's asyncio
        # connections belong to the loop that opened them.
        self._clients: dict[int, tuple[asyncio.AbstractEventLoop, Any]] = {}

    def _client_for_loop(self) -> Any:
        if self.client is not None:
            return self.client
        from scalekit._redis import from_url

        loop = asyncio.get_running_loop()
        found = self._clients.get(id(loop))
        if found is None or found[0] is not loop:
            timeout = self.timeout or 1.0
            client = from_url(str(self.url), socket_timeout=timeout, socket_connect_timeout=timeout)
            self._clients[id(loop)] = (loop, client)
            return client
        return found[1]

    async def check(self) -> CheckResult:
        client = self._client_for_loop()
        start = time.perf_counter()
        if self.client is None or _is_async_client(client):
            await client.ping()  # an asyncio client: no thread needed
        else:
            await _call(self, client.ping)
        return CheckResult("pass", _elapsed_ms(start), "ms")

    async def aclose(self) -> None:
        """Close the clients this check opened from its URL."""
        loop = asyncio.get_running_loop()
        for key, (owner, client) in list(self._clients.items()):
            if owner is loop:
                await client.aclose()
                del self._clients[key]


def _is_async_client(client: Any) -> bool:
    """redis-py's asyncio clients return coroutines from sync-looking methods."""
    execute = getattr(type(client), "execute_command", None)
    return inspect.iscoroutinefunction(execute) or inspect.iscoroutinefunction(client.ping)


class CallableCheck(Check):
    """A check from a function, sync or async.

    The function's return value decides: ``None`` or ``True`` is ``pass``,
    ``False`` is ``fail``, ``"pass"``/``"warn"``/``"fail"`` is that status,
    a number is ``pass`` with that observed value, a :class:`CheckResult`
    is taken as is. Raising is ``fail`` with the error class as output.

    Args:
        name: the component name.
        fn: the function (called with no arguments; sync ones run in a thread).
        critical: a failure makes ready answer 503 (default True).
        measurement: the second half of the ``checks`` key.
        component_type: ``componentType`` in the body.
        observed_unit: the unit of a numeric return value.
        timeout: seconds (default: the ``Health`` timeout).
    """

    def __init__(
        self,
        name: str,
        fn: Callable[[], Any] | Callable[[], Awaitable[Any]],
        critical: bool = True,
        *,
        measurement: str = "status",
        component_type: str = "component",
        observed_unit: str | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(name, critical=critical, timeout=timeout)
        if not callable(fn):
            raise TypeError(f"CallableCheck({name!r}) needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.measurement = measurement
        self.component_type = component_type
        self.observed_unit = observed_unit

    async def check(self) -> CheckResult | Sequence[CheckResult]:
        value = await _call(self, self.fn)
        if isinstance(value, CheckResult):
            return value
        if isinstance(value, list | tuple) and all(isinstance(v, CheckResult) for v in value):
            return list(value)
        if value is None or value is True:
            return CheckResult("pass")
        if value is False:
            return CheckResult("fail", output="check returned False")
        if isinstance(value, str) and value in STATUS_ORDER:
            return CheckResult(value)
        if isinstance(value, int | float):
            return CheckResult("pass", value, self.observed_unit)
        raise TypeError(f"check {self.name!r} returned {type(value).__name__}")
