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
import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from scalekit._clock import Clock, get_clock
from scalekit.errors import ConfigurationError
from scalekit.observability.check_base import (
    STATUS_ORDER,
    Check,
    CheckResult,
    CheckTimeout,
    HealthStatus,
)
from scalekit.observability.checks import CallableCheck, PoolCheck, RedisCheck, ReplicaSetCheck
from scalekit.observability.checks import HasPrimary as HasPrimary
from scalekit.observability.checks import HasReplicas as HasReplicas
from scalekit.observability.checks import PoolLike as PoolLike
from scalekit.observability.checks import SupportsAsyncPing as SupportsAsyncPing
from scalekit.observability.checks import SupportsAsyncQuery as SupportsAsyncQuery
from scalekit.observability.checks import SupportsPing as SupportsPing
from scalekit.observability.checks import SupportsQuery as SupportsQuery
from scalekit.observability.checks import SupportsReplicaLags as SupportsReplicaLags

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
        worst = max((result.status for result in results), key=STATUS_ORDER.__getitem__)
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
            if STATUS_ORDER[effective] > STATUS_ORDER[overall]:
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
