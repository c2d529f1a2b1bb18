"""Liveness and readiness endpoints with bounded, cached, concurrent checks.

``/health/live`` answers 200 whenever the process serves and checks nothing
external (a database outage must not make an orchestrator restart every
instance). ``/health/ready`` runs the checks concurrently, each bounded by
its timeout, and shares one run between every probe that arrives within
``cache_ttl`` (single flight), so probes cannot hammer the database. Bodies
are ``application/health+json`` after draft-inadarei-api-health-check::

    {"status": "warn",
     "checks": {"db:responseTime": [{"componentType": "datastore", "observedValue": 0.4,
                                     "observedUnit": "ms", "status": "pass",
                                     "time": "2026-11-29T03:15:09Z"}],
                "redis:responseTime": [{"componentType": "datastore", "status": "fail",
                                        "output": "ConnectionError", "time": "..."}]}}

A failing critical check makes the answer ``fail`` with 503; a failing
non-critical one makes it ``warn`` with 200. ``output`` names only the error
class (or ``"timeout"``): never a DSN, a password or a stack trace.

Checks take the objects they check duck-typed (anything with ``query`` or
``ping``), so this module never imports ``scalekit.db``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import enum
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar, cast, runtime_checkable

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from scalekit._clock import Clock, get_clock
from scalekit._replica_status import STATUS_STATEMENTS, parse_replica_status
from scalekit.errors import ConfigurationError

__all__ = [
    "HEALTH_MEDIA_TYPE",
    "CallableCheck",
    "Check",
    "CheckResult",
    "Health",
    "HealthReport",
    "HealthStatus",
    "PoolCheck",
    "RedisCheck",
    "ReplicaSetCheck",
]

HEALTH_MEDIA_TYPE = "application/health+json"

_logger = structlog.get_logger("scalekit.health")


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


class HealthStatus(enum.StrEnum):
    """A check's or the whole answer's status (strings ``"pass"``, ``"warn"``, ``"fail"`` too)."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


_STATUS_ORDER: dict[str, int] = {HealthStatus.PASS: 0, HealthStatus.WARN: 1, HealthStatus.FAIL: 2}
T = TypeVar("T")


class CheckTimeout(Exception):
    """A check did not answer within its timeout."""


@dataclasses.dataclass(frozen=True, slots=True)
class CheckResult:
    """One measurement of a check: an entry of ``checks["name:measurement"]``.

    Args:
        status: ``"pass"``, ``"warn"`` or ``"fail"``.
        observed_value: what was measured (a response time, a lag).
        observed_unit: its unit (``"ms"``, ``"s"``).
        output: why it is not ``pass``; never secrets or stack traces.
        component_id: which instance, when a check reports several (replicas).
    """

    status: HealthStatus | str
    observed_value: float | int | str | None = None
    observed_unit: str | None = None
    output: str | None = None
    component_id: str | None = None

    def __post_init__(self) -> None:
        if self.status not in _STATUS_ORDER:
            raise ConfigurationError(
                f"status must be 'pass', 'warn' or 'fail', got {self.status!r}"
            )
        object.__setattr__(self, "status", HealthStatus(self.status))


class Check:
    """Base class of a readiness check; subclasses implement :meth:`check`.

    Args:
        name: the component name, the first half of the ``checks`` key.
        critical: whether its failure makes ready answer 503 (else ``warn``).
        timeout: seconds this check may take (default: the ``Health`` timeout).
    """

    measurement = "status"
    component_type = "component"

    def __init__(self, name: str, *, critical: bool = True, timeout: float | None = None) -> None:
        if not name or ":" in name:
            raise ConfigurationError(
                f"check name must be non-empty and contain no ':', got {name!r}"
            )
        if timeout is not None and timeout <= 0:
            raise ConfigurationError(f"timeout must be positive seconds, got {timeout!r}")
        self.name = name
        self.critical = critical
        self.timeout = timeout
        self._thread_busy = threading.Event()

    @property
    def key(self) -> str:
        """The key of this check in the body's ``checks``: ``name:measurement``."""
        return f"{self.name}:{self.measurement}"

    async def check(self) -> CheckResult | Sequence[CheckResult]:
        """Measure once; raise to report ``fail`` with the error class as output."""
        raise NotImplementedError

    async def in_thread(self, call: Callable[[], T]) -> T:
        """Run a blocking ``call`` in a daemon thread that a timeout may abandon.

        At most one such thread runs per check: while an abandoned one is
        still stuck (a hung socket), the check fails at once instead of
        piling up threads.
        """
        if self._thread_busy.is_set():
            raise CheckTimeout("previous run still blocked")
        self._thread_busy.set()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        context = contextvars.copy_context()

        def deliver(result: T | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]

        def target() -> None:
            try:
                value = context.run(call)
            except BaseException as exc:
                self._thread_busy.clear()
                _call_soon(loop, deliver, None, exc)
            else:
                self._thread_busy.clear()
                _call_soon(loop, deliver, value, None)

        threading.Thread(target=target, name=f"scalekit-health-{self.name}", daemon=True).start()
        return await future


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed while the thread was stuck
        loop.call_soon_threadsafe(callback, *args)


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
        url_or_client: a URL (any form :mod:`scalekit._redis` takes: standalone,
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
        if isinstance(value, str) and value in _STATUS_ORDER:
            return CheckResult(value)
        if isinstance(value, int | float):
            return CheckResult("pass", value, self.observed_unit)
        raise TypeError(f"check {self.name!r} returned {type(value).__name__}")


@dataclasses.dataclass(frozen=True, slots=True)
class HealthReport:
    """The outcome of one readiness run: overall status, HTTP status and body."""

    status: str
    http_status: int
    body: dict[str, Any]


class Health:
    """Readiness checks plus the ``live`` and ``ready`` Starlette endpoints.

    Mount as ``Route("/health/live", health.live)`` and
    ``Route("/health/ready", health.ready)``.

    Args:
        checks: the checks ready runs (``PoolCheck``, ``RedisCheck``, ...).
        timeout: seconds each check may take before it fails with output
            ``"timeout"`` (a check's own ``timeout`` wins).
        cache_ttl: seconds a run's result is reused; concurrent probes within
            a run wait for it rather than starting their own.
        clock: the clock ``cache_ttl`` and the ``time`` fields read.
        service_id: ``serviceId`` in the body (optional).
        version: ``version`` in the body (optional).
        description: ``description`` in the body (optional).

    Raises:
        ValueError: a non-positive timeout, a negative ``cache_ttl``, or two
            checks with the same ``name:measurement`` key.
    """

    def __init__(
        self,
        checks: Sequence[Check] = (),
        timeout: float = 1.0,
        cache_ttl: float = 1.0,
        clock: Clock | None = None,
        *,
        service_id: str | None = None,
        version: str | None = None,
        description: str | None = None,
    ) -> None:
        if timeout <= 0:
            raise ConfigurationError(f"timeout must be positive seconds, got {timeout!r}")
        if cache_ttl < 0:
            raise ConfigurationError(f"cache_ttl must not be negative, got {cache_ttl!r}")
        for check in checks:
            if not isinstance(check, Check):
                raise TypeError(f"Health takes Check objects, got {type(check).__name__}")
        keys = [check.key for check in checks]
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        if duplicates:
            raise ConfigurationError(
                f"two checks share the key {duplicates[0]!r}: give them other names"
            )
        self.checks = tuple(checks)
        self.timeout = timeout
        self.cache_ttl = cache_ttl
        self.clock = clock or get_clock()
        self.service_id = service_id
        self.version = version
        self.description = description
        self._draining = False
        self._cached: tuple[float, HealthReport] | None = None
        self._inflight: tuple[asyncio.AbstractEventLoop, asyncio.Task[HealthReport]] | None = None
        self._last_status: dict[str, str] = {}

    # -- draining ----------------------------------------------------------
    @property
    def draining(self) -> bool:
        """Whether ready answers 503 because the instance is shutting down."""
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self._draining = bool(value)

    def start_draining(self) -> None:
        """Make ready answer 503 so the load balancer stops sending traffic."""
        self._draining = True

    def stop_draining(self) -> None:
        """Undo :meth:`start_draining`."""
        self._draining = False

    @property
    def last_report(self) -> HealthReport | None:
        """The latest readiness answer without running a check (None before the first run)."""
        if self._draining:
            return self._draining_report()
        cached = self._cached
        return None if cached is None else cached[1]

    # -- running -----------------------------------------------------------
    async def report(self) -> HealthReport:
        """The readiness report: cached, or one shared run of every check."""
        if self._draining:
            return self._draining_report()
        cached = self._cached
        if cached is not None and self.clock.monotonic() < cached[0]:
            return cached[1]
        loop = asyncio.get_running_loop()
        inflight = self._inflight
        if inflight is None or inflight[0] is not loop or inflight[1].done():
            task = loop.create_task(self._run())
            inflight = (loop, task)
            self._inflight = inflight
        return await asyncio.shield(inflight[1])

    async def _run(self) -> HealthReport:
        try:
            results = await asyncio.gather(*(self._run_check(check) for check in self.checks))
            report = self._assemble(results)
            self._cached = (self.clock.monotonic() + self.cache_ttl, report)
            return report
        finally:
            current = self._inflight
            if current is not None and current[1] is asyncio.current_task():
                self._inflight = None

    async def _run_check(self, check: Check) -> tuple[Check, list[CheckResult], str]:
        timeout = check.timeout if check.timeout is not None else self.timeout
        try:
            outcome = await asyncio.wait_for(check.check(), timeout)
        except (TimeoutError, CheckTimeout):
            results = [CheckResult("fail", output="timeout")]
        except Exception as exc:
            results = [CheckResult("fail", output=type(exc).__name__)]
            self._log_change(check, "fail", error=f"{type(exc).__name__}: {exc}")
        else:
            results = [outcome] if isinstance(outcome, CheckResult) else list(outcome)
            if not results:
                results = [CheckResult("pass")]
        worst = max((result.status for result in results), key=_STATUS_ORDER.__getitem__)
        self._log_change(check, worst)
        return check, results, worst

    def _log_change(self, check: Check, status: str, error: str | None = None) -> None:
        previous = self._last_status.get(check.key)
        self._last_status[check.key] = status
        if previous == status or (previous is None and status == "pass"):
            return
        log = _logger.info if status == "pass" else _logger.warning
        log("health check changed", check=check.key, status=status, error=error)

    def _assemble(self, results: Sequence[tuple[Check, list[CheckResult], str]]) -> HealthReport:
        now = _iso(self.clock.time())
        overall = "pass"
        checks: dict[str, list[dict[str, Any]]] = {}
        for check, entries, worst in results:
            effective = worst if check.critical or worst != "fail" else "warn"
            if _STATUS_ORDER[effective] > _STATUS_ORDER[overall]:
                overall = effective
            checks[check.key] = [self._entry(check, entry, now) for entry in entries]
        body = self._envelope(overall)
        body["checks"] = checks
        return HealthReport(overall, 503 if overall == "fail" else 200, body)

    @staticmethod
    def _entry(check: Check, result: CheckResult, now: str) -> dict[str, Any]:
        entry: dict[str, Any] = {}
        if result.component_id is not None:
            entry["componentId"] = result.component_id
        entry["componentType"] = check.component_type
        if result.observed_value is not None:
            entry["observedValue"] = result.observed_value
            if result.observed_unit is not None:
                entry["observedUnit"] = result.observed_unit
        entry["status"] = result.status
        entry["time"] = now
        if result.status != "pass" and result.output:
            entry["output"] = result.output
        return entry

    def _envelope(self, status: str) -> dict[str, Any]:
        body: dict[str, Any] = {"status": status}
        for field, value in (
            ("version", self.version),
            ("serviceId", self.service_id),
            ("description", self.description),
        ):
            if value is not None:
                body[field] = value
        return body

    def _draining_report(self) -> HealthReport:
        body = self._envelope("fail")
        body["output"] = "draining"
        return HealthReport("fail", 503, body)

    # -- endpoints ---------------------------------------------------------
    async def live(self, request: Request) -> Response:
        """``/health/live``: 200 whenever the process can serve; checks nothing external."""
        return JSONResponse(
            self._envelope("pass"),
            media_type=HEALTH_MEDIA_TYPE,
            headers={"Cache-Control": "no-store"},
        )

    async def ready(self, request: Request) -> Response:
        """``/health/ready``: 200 on pass or warn, 503 on a critical failure or when draining."""
        report = await self.report()
        return JSONResponse(
            report.body,
            status_code=report.http_status,
            media_type=HEALTH_MEDIA_TYPE,
            headers={"Cache-Control": "no-store"},
        )


def _iso(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
