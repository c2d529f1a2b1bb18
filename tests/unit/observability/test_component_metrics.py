"""Component metrics fed by scalekit.events (events emitted by hand)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from scalekit import events
from scalekit.observability import ComponentMetrics, subscribe_component_metrics


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def decisions(registry: CollectorRegistry, decision: str) -> float | None:
    return value(registry, "scalekit_ratelimit_decisions_total", rule="api", decision=decision)


def test_each_event_type_feeds_its_series() -> None:
    registry = CollectorRegistry()
    bus = events.EventBus()
    unsubscribe = subscribe_component_metrics(registry, bus=bus)
    bus.emit(events.DbQuery(pool="main", role="primary", duration=0.003))
    bus.emit(events.DbQuery(pool="main", role="replica", duration=0.2, outcome="connection_lost"))
    bus.emit(events.DbRouting(pool="main", decision="fallback_primary", reason="lagging"))
    bus.emit(events.DbPoolStats(pool="main", in_use=3, idle=5, waiting=1))
    bus.emit(events.CacheEvent(rule="/api/v1/tasks", event="hit"))
    bus.emit(events.CacheEvent(rule="/api/v1/tasks", event="hit"))
    bus.emit(events.CacheEvent(rule="/api/v1/tasks", event="miss"))
    bus.emit(events.RateLimitDecision(rule="api", decision="limited"))
    bus.emit(events.BackendError(component="redis", operation="get", error="timeout"))

    histogram = "scalekit_db_query_duration_seconds"
    assert value(registry, f"{histogram}_count", pool="main", role="primary") == 1
    assert value(registry, f"{histogram}_bucket", pool="main", role="primary", le="0.005") == 1
    assert value(registry, f"{histogram}_sum", pool="main", role="replica") == pytest.approx(0.2)
    assert (
        value(registry, "scalekit_db_queries_total", pool="main", role="replica",
              outcome="connection_lost") == 1
    )  # fmt: skip
    assert (
        value(registry, "scalekit_db_routing_total", pool="main", decision="fallback_primary",
              reason="lagging") == 1
    )  # fmt: skip
    for state, count in (("in_use", 3), ("idle", 5), ("waiting", 1)):
        assert value(registry, "scalekit_db_pool_connections", pool="main", state=state) == count
    assert value(registry, "scalekit_cache_events_total", rule="/api/v1/tasks", event="hit") == 2
    assert value(registry, "scalekit_cache_events_total", rule="/api/v1/tasks", event="miss") == 1
    assert decisions(registry, "limited") == 1
    assert value(registry, "scalekit_backend_errors_total", component="redis") == 1

    unsubscribe()
    bus.emit(events.BackendError(component="redis"))
    assert value(registry, "scalekit_backend_errors_total", component="redis") == 1
    assert not bus.has_listeners(events.BackendError)


def test_subscribing_twice_counts_once() -> None:
    registry = CollectorRegistry()
    bus = events.EventBus()
    first = subscribe_component_metrics(registry, bus=bus)
    second = subscribe_component_metrics(registry, bus=bus)
    assert first is second
    bus.emit(events.RateLimitDecision(rule="api", decision="allowed"))
    assert decisions(registry, "allowed") == 1
    first()
    # After unsubscribing, a new subscription works again on the same registry.
    again = subscribe_component_metrics(registry, bus=bus)
    bus.emit(events.RateLimitDecision(rule="api", decision="allowed"))
    assert decisions(registry, "allowed") == 2
    again()


def test_the_process_wide_bus_is_the_default() -> None:
    registry = CollectorRegistry()
    unsubscribe = subscribe_component_metrics(registry)
    try:
        events.emit(events.CacheEvent(rule="r", event="store"))
        assert value(registry, "scalekit_cache_events_total", rule="r", event="store") == 1
    finally:
        unsubscribe()


def test_the_class_can_be_used_directly() -> None:
    registry = CollectorRegistry()
    metrics = ComponentMetrics(registry)
    metrics.on_backend_error(events.BackendError(component="db"))
    assert value(registry, "scalekit_backend_errors_total", component="db") == 1
