"""A circuit breaker shared by the cache and the rate limiter.

States: **closed** (calls pass) → **open** after ``failure_threshold``
consecutive failures (calls are refused without touching the backend) →
**half-open** once ``cooldown`` seconds have passed on the injected clock,
when exactly one trial call is let through: its success closes the breaker,
its failure opens it for another cool-down.

The breaker never performs the call itself; callers ask :meth:`allow` first
and report :meth:`record_success` / :meth:`record_failure`, which keeps it
usable from sync and async code alike.
"""

from __future__ import annotations

import enum
import threading

from scalekit._clock import Clock, get_clock

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(enum.Enum):
    """Where a :class:`CircuitBreaker` is."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Stops calls to a failing backend for a cool-down.

    Args:
        failure_threshold: consecutive failures that open the breaker.
        cooldown: seconds the breaker stays open before one trial call.
        clock: the clock to read; defaults to :func:`scalekit._clock.get_clock`.

    Raises:
        ValueError: ``failure_threshold`` < 1 or ``cooldown`` < 0.
    """

    def __init__(
        self, *, failure_threshold: int = 5, cooldown: float = 5.0, clock: Clock | None = None
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold!r}")
        if cooldown < 0:
            raise ValueError(f"cooldown must be >= 0 seconds, got {cooldown!r}")
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False

    def _now(self) -> float:
        return (self._clock or get_clock()).monotonic()

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker past its cool-down reads half-open."""
        with self._lock:
            if self._state is BreakerState.OPEN and self._now() - self._opened_at >= self.cooldown:
                return BreakerState.HALF_OPEN
            return self._state

    def allow(self) -> bool:
        """Whether a call may go to the backend now.

        In half-open state only the first caller gets ``True`` (the trial);
        the others are refused until that trial is recorded.
        """
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return True
            if self._state is BreakerState.OPEN:
                if self._now() - self._opened_at < self.cooldown:
                    return False
                self._state = BreakerState.HALF_OPEN
                self._trial_in_flight = False
            if self._trial_in_flight:
                return False
            self._trial_in_flight = True
            return True

    def record_success(self) -> None:
        """Report a call that succeeded: closes the breaker."""
        with self._lock:
            self._state = BreakerState.CLOSED
            self._failures = 0
            self._trial_in_flight = False

    def record_failure(self) -> None:
        """Report a call that failed: may open (or re-open) the breaker."""
        with self._lock:
            self._trial_in_flight = False
            if self._state is BreakerState.HALF_OPEN:
                self._open()
                return
            self._failures += 1
            if self._state is BreakerState.CLOSED and self._failures >= self.failure_threshold:
                self._open()

    def reset(self) -> None:
        """Close the breaker and forget past failures."""
        self.record_success()

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._now()
        self._failures = 0

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(state={self.state.value!r}, "
            f"failure_threshold={self.failure_threshold}, cooldown={self.cooldown})"
        )
