"""The component event bus (scalekit.events)."""

from __future__ import annotations

import pytest
import structlog.testing

from scalekit import events


@pytest.fixture
def bus() -> events.EventBus:
    return events.EventBus()


def test_listener_receives_only_its_types(bus: events.EventBus) -> None:
    cache: list[events.Event] = []
    everything: list[events.Event] = []
    bus.subscribe(cache.append, events.CacheEvent)
    bus.subscribe(everything.append)
    hit = events.CacheEvent(rule="r", event="hit")
    query = events.DbQuery(pool="primary", role="primary", duration=0.001)
    bus.emit(hit)
    bus.emit(query)
    assert cache == [hit]
    assert everything == [hit, query]


def test_unsubscribe_stops_delivery(bus: events.EventBus) -> None:
    seen: list[events.Event] = []
    unsubscribe = bus.subscribe(seen.append, events.RateLimitDecision)
    bus.emit(events.RateLimitDecision(rule="api", decision="allowed"))
    unsubscribe()
    unsubscribe()  # twice is harmless
    bus.emit(events.RateLimitDecision(rule="api", decision="limited"))
    assert len(seen) == 1
    assert not bus.has_listeners(events.RateLimitDecision)


def test_failing_listener_is_logged_and_others_still_run(bus: events.EventBus) -> None:
    seen: list[events.Event] = []

    def broken(event: events.Event) -> None:
        raise RuntimeError("listener bug")

    bus.subscribe(broken)
    bus.subscribe(seen.append)
    with structlog.testing.capture_logs() as logs:
        bus.emit(events.BackendError(component="cache", operation="get", error="timeout"))
    assert len(seen) == 1
    assert logs[0]["event"] == "event listener failed"


def test_subscribe_rejects_non_event_types(bus: events.EventBus) -> None:
    with pytest.raises(TypeError, match="Event subclasses"):
        bus.subscribe(print, int)  # type: ignore[arg-type]


def test_has_listeners_and_clear(bus: events.EventBus) -> None:
    bus.subscribe(lambda event: None, events.DbRouting)
    assert bus.has_listeners(events.DbRouting)
    assert not bus.has_listeners(events.DbQuery)
    bus.clear()
    assert not bus.has_listeners(events.DbRouting)


def test_events_are_immutable() -> None:
    event = events.DbPoolStats(pool="p", in_use=1, idle=2, waiting=0)
    with pytest.raises(AttributeError):
        event.in_use = 5  # type: ignore[misc]


def test_module_level_bus_functions() -> None:
    seen: list[events.Event] = []
    unsubscribe = events.subscribe(seen.append, events.DbRouting)
    try:
        events.emit(events.DbRouting(pool="r1", decision="replica_skipped", reason="lagging"))
    finally:
        unsubscribe()
    assert seen == [events.DbRouting(pool="r1", decision="replica_skipped", reason="lagging")]
