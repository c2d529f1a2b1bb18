"""Gauges of state that outages are graphed and alerted on: breakers and readiness.

::

    scalekit_circuit_breaker_state{backend,state}   gauge   1 for the current state, else 0
    scalekit_ready                                  gauge   1 ready, 0 not (failing or draining)

Both are read when the registry is collected (a scrape), from the objects
they describe, so they cost nothing per request and are never stale. The
breakers and the ``Health`` are duck-typed (anything with ``state`` and
``last_report``): this module imports no component. In multiprocess mode
they describe the worker that answered the scrape (``install()`` adds them
to the workers' sum).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

__all__ = ["BREAKER_STATES", "StateMetrics"]

BREAKER_STATES = ("closed", "open", "half_open")
"""The values of the ``state`` label, one series each."""


class _Breaker(Protocol):
    @property
    def state(self) -> Any: ...


class StateMetrics:
    """A collector of breaker states and readiness; one per registry (:meth:`for_registry`).

    Sources are added and removed as apps start and stop (:meth:`watch_breaker`,
    :meth:`watch_health`), so two apps on one registry share its series.
    """

    _by_registry: weakref.WeakKeyDictionary[CollectorRegistry, StateMetrics] = (
        weakref.WeakKeyDictionary()
    )
    _registry_lock = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._breakers: dict[str, list[_Breaker]] = {}
        self._healths: list[Any] = []

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> StateMetrics:
        """The collector registered in ``registry``, registered on first use."""
        with cls._registry_lock:
            found = cls._by_registry.get(registry)
            if found is None:
                found = cls()
                registry.register(found)
                cls._by_registry[registry] = found
            return found

    def watch_breaker(self, backend: str, breaker: _Breaker) -> None:
        """Report ``breaker`` under ``backend`` (``"cache"``, ``"ratelimit"``)."""
        with self._lock:
            self._breakers.setdefault(backend, []).append(breaker)

    def watch_health(self, health: Any) -> None:
        """Report the readiness of ``health`` (anything with ``last_report``)."""
        with self._lock:
            self._healths.append(health)

    def forget(self, source: object) -> None:
        """Stop reporting a breaker or health given before."""
        with self._lock:
            for breakers in self._breakers.values():
                breakers[:] = [b for b in breakers if b is not source]
            self._healths[:] = [h for h in self._healths if h is not source]

    def describe(self) -> list[Metric]:
        """The families, without values (prometheus_client checks names with it)."""
        return [self._breaker_family(), self._ready_family()]

    def collect(self) -> Iterator[Metric]:
        """The families with their current values."""
        with self._lock:
            breakers = {name: list(found) for name, found in self._breakers.items() if found}
            healths = list(self._healths)
        family = self._breaker_family()
        for backend, found in sorted(breakers.items()):
            # Several instances of one backend (two apps): the worst state wins.
            states = {str(getattr(b.state, "value", b.state)) for b in found}
            current = next((state for state in ("open", "half_open") if state in states), "closed")
            for state in BREAKER_STATES:
                family.add_metric([backend, state], 1.0 if state == current else 0.0)
        yield family
        ready = self._ready_family()
        reports = [health.last_report for health in healths]
        known = [report for report in reports if report is not None]
        if known:
            ready.add_metric([], 1.0 if all(r.http_status < 500 for r in known) else 0.0)
        yield ready

    @staticmethod
    def _breaker_family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "scalekit_circuit_breaker_state",
            "Circuit breaker state per backend: 1 for the current state (closed, open, "
            "half_open), else 0.",
            labels=("backend", "state"),
        )

    @staticmethod
    def _ready_family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "scalekit_ready",
            "1 when the last readiness check passed (pass or warn), 0 when it failed or the "
            "instance is draining; absent before the first check.",
        )
