"""The injectable clock every time-based rule in scalekit reads.

Back-offs, pins, cool-downs, TTLs and windows call :func:`get_clock` (or take
a ``clock=`` argument) instead of :mod:`time`, so tests move time forward with
:class:`ManualClock` rather than sleeping.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "ManualClock", "SystemClock", "get_clock", "set_clock"]


@runtime_checkable
class Clock(Protocol):
    """A source of time: ``monotonic()`` for durations, ``time()`` for wall time."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes backwards."""
        ...

    def time(self) -> float:
        """Seconds since the Unix epoch (wall clock)."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic` and :func:`time.time`."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

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

    def __repr__(self) -> str:
        return f"ManualClock(monotonic={self._monotonic!r}, wall={self._wall!r})"


_default: Clock = SystemClock()


def get_clock() -> Clock:
    """The process-wide default clock (the system clock unless replaced)."""
    return _default


def set_clock(clock: Clock) -> Clock:
    """Replace the process-wide default clock; returns the previous one."""
    global _default
    previous, _default = _default, clock
    return previous
