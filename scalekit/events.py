"""The listener interface scalekit's components report through.

Components (``scalekit.db``, ``scalekit.cache``, ``scalekit.ratelimit``)
never import the metrics module; they :func:`emit` small typed events, and
whoever cares (``scalekit.observability`` for Prometheus, your own code for
alerts or tests) :func:`subscribe` to them::

    from scalekit import events

    def on_cache(event: events.CacheEvent) -> None:
        print(event.rule, event.event)

    unsubscribe = events.subscribe(on_cache, events.CacheEvent)

Emitting with no listener costs one dictionary lookup. A listener that
raises is logged and skipped: it never breaks the request that emitted.

Event types::

    Event
    ├── DbQuery            one statement ran (pool, role, duration, outcome, rows)
    ├── DbRouting          a routing decision (replica skipped, fallback, retry)
    ├── DbPoolStats        a pool's connection counts changed
    ├── CacheEvent         hit, miss, stale, bypass, store, skip, error, invalidate
    ├── RateLimitDecision  allowed, limited, error
    ├── BackendError       one call to a backend (a Redis round trip, …) failed
    └── DegradedRequest    a request was served without its backend (bypass, fail open/closed)
"""

from __future__ import annotations

import contextvars
import dataclasses
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

__all__ = [
    "BackendError",
    "CacheEvent",
    "DbPoolStats",
    "DbQuery",
    "DbRouting",
    "DegradedRequest",
    "Event",
    "EventBus",
    "RateLimitDecision",
    "bus",
    "current_shard",
    "emit",
    "subscribe",
]

_logger = structlog.get_logger("scalekit.events")


current_shard: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "scalekit_current_shard", default=None
)
"""The shard index ``ShardSet`` is working on in this context (None outside one).

``DbQuery.shard`` and ``DbRouting.shard`` default to it, so the pools and
replica sets below a ``ShardSet`` report their shard without knowing about it.
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """Base class of every scalekit event."""


@dataclasses.dataclass(frozen=True, slots=True)
class DbQuery(Event):
    """One statement ran on a pool.

    ``role`` is ``"primary"`` or ``"replica"``; ``outcome`` is ``"ok"`` or an
    error class such as ``"connection_lost"``; ``shard`` is set by ``ShardSet``.
    """

    pool: str
    role: str
    duration: float
    outcome: str = "ok"
    rows: int = 0
    shard: int | None = dataclasses.field(default_factory=current_shard.get)


@dataclasses.dataclass(frozen=True, slots=True)
class DbRouting(Event):
    """A routing decision of a ``ReplicaSet``.

    ``decision`` is e.g. ``"replica_skipped"``, ``"fallback_primary"`` or
    ``"retry"``; ``reason`` e.g. ``"down"``, ``"lagging"``, ``"pinned"``.
    """

    pool: str
    decision: str
    reason: str = ""
    shard: int | None = dataclasses.field(default_factory=current_shard.get)


@dataclasses.dataclass(frozen=True, slots=True)
class DbPoolStats(Event):
    """A pool's connection counts: in use, idle, callers waiting."""

    pool: str
    in_use: int
    idle: int
    waiting: int


@dataclasses.dataclass(frozen=True, slots=True)
class CacheEvent(Event):
    """A response-cache decision for one request (or an invalidation).

    ``event`` is one of ``hit``, ``miss``, ``stale``, ``bypass``, ``store``,
    ``skip``, ``error``, ``invalidate``; ``reason`` says why for skip and bypass
    (``"set-cookie"``, ``"no-store"``, ``"credentials"``, ``"backend"`` …).
    """

    rule: str
    event: str
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class RateLimitDecision(Event):
    """A rate-limit rule's decision for one request: ``allowed``, ``limited`` or ``error``."""

    rule: str
    decision: str


@dataclasses.dataclass(frozen=True, slots=True)
class BackendError(Event):
    """One call to a backend failed: a Redis round trip errored or timed out.

    Emitted once per failed call by the code that made it, whatever number
    of requests the call served (a pipeline of 50 rate-limit checks that
    times out is one event). Calls the circuit breaker refused were never
    made and are not counted here; the requests they leave without a backend
    are :class:`DegradedRequest` events.
    """

    component: str
    operation: str = ""
    error: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class DegradedRequest(Event):
    """A request was served without its backend (failed call or open breaker).

    Once per request and component. ``mode`` says how it was served:
    ``"bypass"`` (the cache passed it to the app), ``"fail_open"`` (the rate
    limiter let it through unchecked) or ``"fail_closed"`` (it answered 503).
    """

    component: str
    mode: str


E = TypeVar("E", bound=Event)
Listener = Callable[[Any], None]


class EventBus:
    """Delivers events to the listeners subscribed to their type (or a base type)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: list[tuple[type[Event], Listener]] = []
        # Per concrete event type, the listeners to call; rebuilt on (un)subscribe.
        self._dispatch: dict[type[Event], tuple[Listener, ...]] = {}

    def subscribe(self, listener: Callable[[E], None], *event_types: type[E]) -> Callable[[], None]:
        """Call ``listener(event)`` for every event of the given types (all, if none).

        Returns:
            A function that removes this subscription.
        """
        types: tuple[type[Event], ...] = event_types or (Event,)
        for event_type in types:
            if not (isinstance(event_type, type) and issubclass(event_type, Event)):
                raise TypeError(f"subscribe() takes Event subclasses, got {event_type!r}")
        entries = [(event_type, listener) for event_type in types]
        with self._lock:
            self._subscriptions.extend(entries)
            self._dispatch = {}

        def unsubscribe() -> None:
            with self._lock:
                for entry in entries:
                    if entry in self._subscriptions:
                        self._subscriptions.remove(entry)
                self._dispatch = {}

        return unsubscribe

    def has_listeners(self, event_type: type[Event]) -> bool:
        """Whether emitting an event of this type would reach anyone."""
        return bool(self._listeners_for(event_type))

    def _listeners_for(self, event_type: type[Event]) -> tuple[Listener, ...]:
        dispatch = self._dispatch
        found = dispatch.get(event_type)
        if found is None:
            with self._lock:
                found = tuple(
                    listener
                    for subscribed, listener in self._subscriptions
                    if issubclass(event_type, subscribed)
                )
                self._dispatch[event_type] = found
        return found

    def emit(self, event: Event) -> None:
        """Deliver ``event``; a listener that raises is logged and skipped."""
        for listener in self._listeners_for(type(event)):
            try:
                listener(event)
            except Exception:
                _logger.exception("event listener failed", listener=repr(listener))

    def clear(self) -> None:
        """Remove every subscription (for tests)."""
        with self._lock:
            self._subscriptions.clear()
            self._dispatch = {}


bus = EventBus()
"""The process-wide bus the components emit to."""

subscribe = bus.subscribe
emit = bus.emit
