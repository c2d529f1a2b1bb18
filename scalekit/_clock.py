"""The injectable clock every time-based rule in scalekit reads.

Back-offs, pins, cool-downs, TTLs and windows call :func:`get_clock` (or take
a ``clock=`` argument) instead of :mod:`time`, so tests move time forward with
:class:`ManualClock` rather than sleeping.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Protocol, runtime_checkable

__all__ = [
    "Clock",
    "ManualClock",
    "SleepingClock",
    "SystemClock",
    "get_clock",
    "set_clock",
    "sleep",
]


@runtime_checkable
class Clock(Protocol):
    """A source of time: ``monotonic()`` for durations, ``time()`` for wall time."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes backwards."""
        ...

    def time(self) -> float:
        """Seconds since the Unix epoch (wall clock)."""
        ...


@runtime_checkable
class SleepingClock(Clock, Protocol):
    """A clock that background tasks can also wait on (``await clock.sleep(s)``)."""

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` have passed on this clock."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic` and :func:`time.time`."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """A clock that only moves when told to; for tests.

    Args:
        start: the initial monotonic reading.
        wall: the initial wall-clock reading (epoch seconds).
    """

    def __init__(self, start: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self._lock = threading.Lock()
        self._monotonic = float(start)
        self._wall = float(wall)
        self._sleepers: list[tuple[float, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self._monotonic

    def time(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        """Move both readings forward by ``seconds`` (must not be negative)."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go backwards: advance({seconds!r})")
        with self._lock:
            self._monotonic += seconds
            self._wall += seconds
            due = [sleeper for sleeper in self._sleepers if sleeper[0] <= self._monotonic]
            self._sleepers = [sleeper for sleeper in self._sleepers if sleeper[0] > self._monotonic]
        for _, loop, future in due:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_wake, future)

    async def sleep(self, seconds: float) -> None:
        """Return once :meth:`advance` has moved this clock ``seconds`` forward.

        What background tasks (the circuit breaker's probe) wait on, so a test
        runs them by advancing the clock instead of sleeping.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            deadline = self._monotonic + seconds
            if seconds <= 0:
                future.set_result(None)
            else:
                self._sleepers.append((deadline, loop, future))
        try:
            await future
        finally:
            with self._lock:
                self._sleepers = [entry for entry in self._sleepers if entry[2] is not future]

    def __repr__(self) -> str:
        return f"ManualClock(monotonic={self._monotonic!r}, wall={self._wall!r})"


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_default: Clock = SystemClock()


def get_clock() -> Clock:
    """The process-wide default clock (the system clock unless replaced)."""
    return _default


def set_clock(clock: Clock) -> Clock:
    """Replace the process-wide default clock; returns the previous one."""
    global _default
    previous, _default = _default, clock
    return previous


async def sleep(seconds: float, clock: Clock | None = None) -> None:
    """Wait ``seconds`` on ``clock`` (default: the process clock).

    A clock without a ``sleep`` method (a user's own :class:`Clock`) is
    waited on with :func:`asyncio.sleep`.
    """
    clock = clock or get_clock()
    if isinstance(clock, SleepingClock):
        await clock.sleep(seconds)
    else:
        await asyncio.sleep(seconds)
