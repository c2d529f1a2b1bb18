"""Single flight: a missing entry is computed once, in this process and across instances.

Only misses are collapsed; a hit or a stale hit never waits for anyone. A
request that found no usable entry asks :meth:`SingleFlight.turn` what to do,
and gets one of three answers:

- :class:`Lead`: compute the entry (holding the backend's fill lock when its
  lookup took it); requests of this process that find the same tag versions
  follow this flight.
- :class:`Follow`: serve an entry another request computed: the leader of
  this process, as soon as its response is complete (before it is stored or
  sent to its own client), or another instance's, once it is stored.
- :class:`Alone`: compute without sharing, because the leader's response
  could not be stored or the leader failed.

A request follows only a flight whose leader read the same tag versions as
its own lookup, made after it arrived: so no request is served an entry
older than an invalidation that completed before it arrived.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import anyio

from scalekit.cache.entry import Entry
from scalekit.cache.errors import CacheBackendError
from scalekit.cache.keys import EntryKeys
from scalekit.cache.protocol import Lookup

__all__ = [
    "Alone",
    "Flight",
    "FlightResult",
    "Follow",
    "Lead",
    "Poll",
    "Shared",
    "SingleFlight",
    "Turn",
    "Unshared",
]


@dataclass(frozen=True, slots=True)
class Shared:
    """The leader's response may be stored: its entry, under the leader's final keys."""

    entry: Entry
    keys: EntryKeys


@dataclass(frozen=True, slots=True)
class Unshared:
    """The leader has nothing to share (response not storable, app failed), and why."""

    reason: str


FlightResult = Shared | Unshared


class Flight:
    """One computation in progress in this process, for one key and tag versions."""

    def __init__(self, key: str, versions: str, registry: dict[str, Flight]) -> None:
        self.key = key
        self.versions = versions
        self._registry = registry
        self._done = anyio.Event()
        self._result: FlightResult = Unshared("pending")

    def finish(self, result: FlightResult) -> None:
        """Release the followers with ``result``; later calls change nothing."""
        if self._done.is_set():
            return
        self._result = result
        self._done.set()
        if self._registry.get(self.key) is self:
            del self._registry[self.key]

    async def result(self) -> FlightResult:
        """Wait for the leader's result."""
        await self._done.wait()
        return self._result


@dataclass(frozen=True, slots=True)
class Lead:
    """Compute the entry and :meth:`Flight.finish` ``flight`` as soon as it is known."""

    found: Lookup
    flight: Flight


@dataclass(frozen=True, slots=True)
class Follow:
    """Serve ``entry``; ``keys`` are the leader's when it came from this process.

    ``found`` is this request's last lookup: release the fill lock if it took one.
    """

    entry: Entry
    keys: EntryKeys | None
    found: Lookup


@dataclass(frozen=True, slots=True)
class Alone:
    """Compute without sharing, with what ``found`` says about the key."""

    found: Lookup
    reason: str


Turn = Lead | Follow | Alone


class Poll(Protocol):
    """How :meth:`SingleFlight.turn` looks at the backend again for one request."""

    async def lookup(self) -> Lookup:
        """Look the key up again, taking the fill lock if it is free."""
        ...

    def fresh_entry(self, found: Lookup) -> Entry | None:
        """The fresh, readable entry ``found`` holds, if any."""
        ...


class SingleFlight:
    """Who computes a missing entry, for every request of one middleware.

    Args:
        locking: whether lookups take the backend's fill lock (several instances).
        lock_wait: seconds to wait for another instance's fill before computing.
        poll_interval: seconds between looks while waiting for another instance.
    """

    def __init__(self, *, locking: bool, lock_wait: float, poll_interval: float) -> None:
        self.locking = locking
        self.polls = int(lock_wait / poll_interval)
        self.poll_interval = poll_interval
        self._flights: dict[str, Flight] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def lead(self, key: str, versions: str) -> Flight:
        """Start a flight for ``key`` that requests with the same ``versions`` follow."""
        flight = Flight(key, versions, self._flights)
        self._flights[key] = flight
        return flight

    async def turn(self, key: str, found: Lookup, poll: Poll | None) -> Turn:
        """What a request that found no usable entry at ``key`` does (see the module doc).

        ``poll`` is None when no other instance can be filling the key (the
        entry is there but unreadable): lead at once instead of waiting.
        """
        polls = 0
        while True:
            flight = self._flights.get(key)
            if flight is not None and flight.versions == found.versions:
                result = await flight.result()
                if isinstance(result, Shared):
                    return Follow(result.entry, result.keys, found)
                return Alone(found, result.reason)
            # Lead when the lock is ours, there is no lock, the lock is held by a flight of
            # this process under other versions, or the other instance took too long.
            if (
                found.lock_token is not None
                or not self.locking
                or poll is None
                or flight is not None
                or polls >= self.polls
            ):
                return Lead(found, self.lead(key, found.versions))
            polls += 1
            await anyio.sleep(self.poll_interval)
            try:
                found = await poll.lookup()
            except CacheBackendError:
                return Alone(found, "backend")
            entry = poll.fresh_entry(found)
            if entry is not None:
                return Follow(entry, None, found)
