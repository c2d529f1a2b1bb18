"""One deadline per operation: the liveness check, a reconnect and the statement share it."""

from __future__ import annotations

import time

__all__ = ["Deadline"]


class Deadline:
    """The monotonic instant an operation must be over by; ``Deadline(None)`` never passes.

    Socket timeouts are real time, so this reads ``time.monotonic()``, not
    the injectable clock.
    """

    __slots__ = ("at", "seconds")

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.at = None if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float | None:
        """Seconds left (never below 0), or None without a deadline."""
        if self.at is None:
            return None
        return max(self.at - time.monotonic(), 0.0)

    def cap(self, seconds: float | None) -> float | None:
        """``seconds`` shortened to what is left (None: no limit at all)."""
        left = self.remaining()
        if left is None:
            return seconds
        return left if seconds is None else min(seconds, left)

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def __repr__(self) -> str:
        return f"<Deadline {self.seconds}s, {self.remaining()}s left>"
