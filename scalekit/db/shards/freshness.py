"""Keeping an instance's map fresh: poll the stored version on an interval, reload on a fence hit.

The bound: a ``ShardSet`` routes a statement started at time *t* by a map at
least as new as the stored map was at *t - refresh_interval*. It records the
time it *sent* each poll, and polls again (one one-row query) before the
first statement after that time plus ``refresh_interval``.

The mover relies on it: after flipping the map it waits at least
``refresh_interval`` before it opens the bucket on its new shard (so no
instance can still read the old shard once a write on the new one is
acknowledged) and again before it deletes the old rows. Its wait is measured
on its own clock, instances' intervals on theirs: only the rates of the two
clocks matter, not their offsets.

While the control database does not answer a poll, the set keeps its map,
emits ``BackendError("db.shards", "map_poll", ...)`` and polls again an
interval after the failed poll ended; guarded writes stay safe (the fences
turn them away), reads may be stale for as long as the outage lasts. A poll
gives up after ``POLL_TIMEOUT`` (statements waiting for it wait that long at
most), so a frozen control database cannot stall every statement for the
control pool's whole read timeout.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

from ... import events
from ..._clock import Clock
from ..errors import ConfigError, DatabaseError
from .strategies import ShardStrategy

__all__ = ["DEFAULT_REFRESH_INTERVAL", "MapFollower"]

DEFAULT_REFRESH_INTERVAL = 1.0
"""Seconds between an instance's polls of the stored map version (and the mover's wait)."""

POLL_TIMEOUT = 1.0
"""Seconds one poll of the stored version may take (checkout and query) before it fails."""


def _version(strategy: ShardStrategy) -> object:
    return getattr(strategy, "version", None)


class MapFollower:
    """The current strategy of one ``ShardSet``, polled and reloaded from its source.

    Args:
        strategy: the strategy to start with.
        load: returns the stored strategy; None follows nothing.
        version: returns the stored version cheaply, within the seconds it is
            given; None polls with ``load``.
        interval: seconds between polls; None polls never (fence hits still reload).
        clock: where the interval is read.
        check: raises if a loaded strategy does not fit the set.
    """

    def __init__(
        self,
        strategy: ShardStrategy,
        *,
        load: Callable[[], ShardStrategy] | None,
        version: Callable[[float], int] | None,
        interval: float | None,
        clock: Clock,
        check: Callable[[ShardStrategy], None],
    ) -> None:
        if interval is not None and not 0 <= interval < math.inf:  # NaN too: it never came due
            raise ConfigError(
                f"refresh_interval={interval!r} must be a finite number of seconds, at least 0 "
                "(None polls never)"
            )
        self.strategy = strategy
        self._load = load
        self._version = version
        self.interval = interval
        self._clock = clock
        self._check = check
        self._lock = threading.Lock()
        self._checked = clock.monotonic()
        self.polls = 0
        """Polls sent so far (version reads or loads)."""
        self.reloads = 0
        """Times a newer strategy was installed."""

    def after_fork(self) -> None:
        """In a forked child: a parent thread may have held the lock at fork time."""
        self._lock = threading.Lock()

    @property
    def follows(self) -> bool:
        """Whether there is a source to reload from."""
        return self._load is not None

    def due(self) -> bool:
        """Whether the next statement must poll first (no I/O)."""
        return (
            self._load is not None
            and self.interval is not None
            and self._clock.monotonic() >= self._checked + self.interval
        )

    def current(self) -> ShardStrategy:
        """The strategy to route by now: polled first when the interval has passed."""
        if self.due():
            self._poll()
        return self.strategy

    def _poll(self) -> None:
        if self._load is None or self.interval is None:
            return
        with self._lock:
            if self._clock.monotonic() < self._checked + self.interval:
                return  # another thread polled while this one waited for the lock
            sent = self._clock.monotonic()
            self.polls += 1
            try:
                if self._version is not None:
                    if self._version(POLL_TIMEOUT) != _version(self.strategy):
                        self._install(self._load())
                else:
                    self._install(self._load())
            except DatabaseError as exc:
                events.emit(events.BackendError("db.shards", "map_poll", str(exc)))
                # Not due again at once: from when it failed (a poll sent at
                # ``sent`` may have taken a whole timeout), or every statement
                # would wait for one failing poll after another.
                sent = self._clock.monotonic()
            self._checked = sent

    def reload(self) -> ShardStrategy:
        """Load the stored strategy now (a fence said the map is old).

        Raises:
            ConfigError: there is no source, or the loaded strategy does not fit.
        """
        if self._load is None:
            raise ConfigError(
                "this ShardSet has no reload= or map_store=: pass one to follow bucket moves"
            )
        with self._lock:
            sent = self._clock.monotonic()
            self._install(self._load())
            self._checked = sent
            return self.strategy

    def _install(self, strategy: ShardStrategy) -> None:
        self._check(strategy)
        old = self.strategy
        if strategy == old and _version(strategy) == _version(old):
            return
        self.strategy = strategy
        self.reloads += 1
        if events.bus.has_listeners(events.DbRouting):
            reason = f"version {_version(old)} -> {_version(strategy)}"
            events.emit(events.DbRouting("shards", "map_reload", reason))
