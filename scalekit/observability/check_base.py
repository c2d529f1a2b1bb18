"""What a readiness check is: the :class:`Check` base class and the result it reports.

:class:`~scalekit.observability.health.Health` runs checks; the ones scalekit
ships are in :mod:`scalekit.observability.checks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import enum
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from scalekit.errors import ConfigurationError

__all__ = ["STATUS_ORDER", "Check", "CheckResult", "CheckTimeout", "HealthStatus"]


class HealthStatus(enum.StrEnum):
    """A check's or the whole answer's status (strings ``"pass"``, ``"warn"``, ``"fail"`` too)."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


STATUS_ORDER: dict[str, int] = {HealthStatus.PASS: 0, HealthStatus.WARN: 1, HealthStatus.FAIL: 2}
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
        if self.status not in STATUS_ORDER:
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
