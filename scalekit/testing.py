"""Helpers for testing apps built on scalekit: a clock you move, in-memory backends, events.

::

    from scalekit.testing import ManualClock, capture_events, use_clock
    from scalekit import events

    clock = ManualClock()
    install(app, settings, clock=clock)          # or: with use_clock(clock): ...
    with capture_events(events.RateLimitDecision) as decisions:
        ...                                      # requests
    clock.advance(60)                            # a minute later, without sleeping
    assert [d.decision for d in decisions] == ["allowed", "limited"]

The in-memory backends are the ones ``install()`` uses without a
``redis_url``: :class:`MemoryCache` for the cache and
:class:`MemoryRateLimitBackend` for rate-limit counters, both reading the
clock they are given.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TypeVar

from scalekit import events
from scalekit._clock import Clock, ManualClock, SystemClock, get_clock, set_clock
from scalekit.cache import MemoryCache
from scalekit.ratelimit import MemoryRateLimitBackend

__all__ = [
    "Clock",
    "ManualClock",
    "MemoryCache",
    "MemoryRateLimitBackend",
    "SystemClock",
    "capture_events",
    "current_clock",
    "use_clock",
]

E = TypeVar("E", bound=events.Event)


@contextlib.contextmanager
def use_clock(clock: Clock) -> Iterator[Clock]:
    """Make ``clock`` the process-wide default clock inside the block (restored after)."""
    previous = set_clock(clock)
    try:
        yield clock
    finally:
        set_clock(previous)


@contextlib.contextmanager
def capture_events(*event_types: type[E], bus: events.EventBus | None = None) -> Iterator[list[E]]:
    """Record the events of ``event_types`` (all, if none) emitted inside the block.

    Yields:
        The list the events are appended to, in the order they were emitted.
    """
    seen: list[E] = []
    target = bus if bus is not None else events.bus
    unsubscribe = target.subscribe(seen.append, *event_types)
    try:
        yield seen
    finally:
        unsubscribe()


def current_clock() -> Clock:
    """The process-wide default clock (what components read without a ``clock=``)."""
    return get_clock()
