"""Prometheus metrics for scalekit's components, fed by :mod:`scalekit.events`.

The database, cache and rate limiter never import this module; they emit
events, and :func:`subscribe_component_metrics` turns those into series::

    scalekit_db_query_duration_seconds{pool,role}        histogram   DbQuery
    scalekit_db_queries_total{pool,role,outcome}         counter     DbQuery
    scalekit_db_routing_total{pool,decision,reason}      counter     DbRouting
    scalekit_db_pool_connections{pool,state}             gauge       DbPoolStats
    scalekit_cache_events_total{rule,event}              counter     CacheEvent
    scalekit_ratelimit_decisions_total{rule,decision}    counter     RateLimitDecision
    scalekit_backend_errors_total{component}             counter     BackendError
    scalekit_degraded_requests_total{component,mode}     counter     DegradedRequest

``state`` is ``in_use``, ``idle`` or ``waiting``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from scalekit import events
from scalekit.events import (
    BackendError,
    CacheEvent,
    DbPoolStats,
    DbQuery,
    DbRouting,
    DegradedRequest,
    EventBus,
    RateLimitDecision,
)

__all__ = ["DB_QUERY_BUCKETS", "ComponentMetrics", "subscribe_component_metrics"]

DB_QUERY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
"""Histogram buckets in seconds for one database statement, from 0.5 ms to 5 s."""


class ComponentMetrics:
    """The component series of one registry, and the event listeners that feed them.

    Args:
        registry: where the series are registered (default: the global ``REGISTRY``).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else REGISTRY
        self.registry = registry
        self.db_query_duration = Histogram(
            "scalekit_db_query_duration_seconds",
            "Time one database statement took, by pool and role (primary or replica).",
            ("pool", "role"),
            buckets=DB_QUERY_BUCKETS,
            registry=registry,
        )
        self.db_queries = Counter(
            "scalekit_db_queries",
            "Database statements run, by pool, role and outcome (ok or an error class).",
            ("pool", "role", "outcome"),
            registry=registry,
        )
        self.db_routing = Counter(
            "scalekit_db_routing",
            "Replica routing decisions (replica skipped, fallback to primary, retry).",
            ("pool", "decision", "reason"),
            registry=registry,
        )
        self.db_pool_connections = Gauge(
            "scalekit_db_pool_connections",
            "Connections of a pool by state: in_use, idle, waiting (callers queued).",
            ("pool", "state"),
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.cache_events = Counter(
            "scalekit_cache_events",
            "Response cache events by rule name (never a tag or path): hit, miss, stale, "
            "bypass, store, skip, error, invalidate.",
            ("rule", "event"),
            registry=registry,
        )
        self.ratelimit_decisions = Counter(
            "scalekit_ratelimit_decisions",
            "Rate-limit decisions by rule: allowed, limited, error.",
            ("rule", "decision"),
            registry=registry,
        )
        self.backend_errors = Counter(
            "scalekit_backend_errors",
            "Failed backend calls (one per Redis round trip that errored or timed out), "
            "by component; calls the circuit breaker refused are not calls.",
            ("component",),
            registry=registry,
        )
        self.degraded_requests = Counter(
            "scalekit_degraded_requests",
            "Requests served without their backend, by component and mode "
            "(bypass, fail_open, fail_closed).",
            ("component", "mode"),
            registry=registry,
        )
        # label children by metric and label values: per-request events skip labels()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, resolved once per label values (a dict lookup after)."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = metric.labels(*values)
            self._children[key] = child
        return child

    def on_db_query(self, event: DbQuery) -> None:
        """Record a :class:`~scalekit.events.DbQuery`."""
        self._child(self.db_query_duration, event.pool, event.role).observe(event.duration)
        self._child(self.db_queries, event.pool, event.role, event.outcome).inc()

    def on_db_routing(self, event: DbRouting) -> None:
        """Record a :class:`~scalekit.events.DbRouting`."""
        self._child(self.db_routing, event.pool, event.decision, event.reason).inc()

    def on_db_pool_stats(self, event: DbPoolStats) -> None:
        """Record a :class:`~scalekit.events.DbPoolStats`."""
        self.db_pool_connections.labels(event.pool, "in_use").set(event.in_use)
        self.db_pool_connections.labels(event.pool, "idle").set(event.idle)
        self.db_pool_connections.labels(event.pool, "waiting").set(event.waiting)

    def on_cache_event(self, event: CacheEvent) -> None:
        """Record a :class:`~scalekit.events.CacheEvent`."""
        self._child(self.cache_events, event.rule, event.event).inc()

    def on_ratelimit_decision(self, event: RateLimitDecision) -> None:
        """Record a :class:`~scalekit.events.RateLimitDecision`."""
        self._child(self.ratelimit_decisions, event.rule, event.decision).inc()

    def on_backend_error(self, event: BackendError) -> None:
        """Record a :class:`~scalekit.events.BackendError`."""
        self._child(self.backend_errors, event.component).inc()

    def on_degraded_request(self, event: DegradedRequest) -> None:
        """Record a :class:`~scalekit.events.DegradedRequest`."""
        self._child(self.degraded_requests, event.component, event.mode).inc()

    def subscribe(self, bus: EventBus | None = None) -> Callable[[], None]:
        """Subscribe every listener to ``bus`` (default: the process-wide bus).

        Returns:
            A function that removes all the subscriptions.
        """
        target = bus if bus is not None else events.bus
        listeners: list[tuple[Callable[[Any], None], type[events.Event]]] = [
            (self.on_db_query, DbQuery),
            (self.on_db_routing, DbRouting),
            (self.on_db_pool_stats, DbPoolStats),
            (self.on_cache_event, CacheEvent),
            (self.on_ratelimit_decision, RateLimitDecision),
            (self.on_backend_error, BackendError),
            (self.on_degraded_request, DegradedRequest),
        ]
        removers = [target.subscribe(listener, event_type) for listener, event_type in listeners]

        def unsubscribe() -> None:
            for remove in removers:
                remove()

        return unsubscribe


# Keyed by identity; the entry keeps the registry and bus alive so an id is never reused.
_subscriptions: dict[
    tuple[int, int], tuple[CollectorRegistry, EventBus, ComponentMetrics, Callable[[], None]]
] = {}
_subscriptions_lock = threading.Lock()


def subscribe_component_metrics(
    registry: CollectorRegistry | None = None, *, bus: EventBus | None = None
) -> Callable[[], None]:
    """Record scalekit's component events as Prometheus series in ``registry``.

    Idempotent: subscribing the same registry to the same bus again returns
    the first subscription's remover instead of counting every event twice.

    Args:
        registry: where the series are registered (default: the global ``REGISTRY``).
        bus: the event bus to listen to (default: :data:`scalekit.events.bus`).

    Returns:
        A function that unsubscribes (the series stay registered).
    """
    registry = registry if registry is not None else REGISTRY
    target = bus if bus is not None else events.bus
    key = (id(registry), id(target))
    with _subscriptions_lock:
        existing = _subscriptions.get(key)
        if existing is not None:
            return existing[3]
        metrics = _metrics_for(registry)
        remove = metrics.subscribe(target)

        def unsubscribe() -> None:
            with _subscriptions_lock:
                entry = _subscriptions.get(key)
                if entry is not None and entry[3] is unsubscribe:
                    del _subscriptions[key]
            remove()

        _subscriptions[key] = (registry, target, metrics, unsubscribe)
        return unsubscribe


_metrics_by_registry: dict[int, tuple[CollectorRegistry, ComponentMetrics]] = {}


def _metrics_for(registry: CollectorRegistry) -> ComponentMetrics:
    found = _metrics_by_registry.get(id(registry))
    if found is not None and found[0] is registry:
        return found[1]
    metrics = ComponentMetrics(registry)
    _metrics_by_registry[id(registry)] = (registry, metrics)
    return metrics
