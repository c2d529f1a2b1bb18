"""A circuit breaker shared by the cache, the rate limiter and the database marks.

States: **closed** (calls pass) → **open** after ``failure_threshold``
consecutive failed calls (calls are refused without touching the backend) →
**half-open** once ``cooldown`` seconds have passed on the injected clock,
when exactly one trial call is let through: its success closes the breaker,
its failure opens it for another cool-down.

Callers never report outcomes by hand; they wrap one backend round trip in
:meth:`CircuitBreaker.guard`, a context manager usable from sync and async
code::

    try:
        with breaker.guard(failures=redis_errors()):
            reply = await client.ping()      # one round trip
    except CircuitOpen:
        ...  # refused: the backend was not called

How the guard decides, so no caller can get it wrong:

- leaving without an exception records a success, leaving with one of
  ``failures`` records one failure, whatever number of requests the round
  trip carried (a pipeline of 50 checks that times out is one failure);
- leaving with anything else — asyncio cancellation (a client that went
  away), an unrelated bug — records nothing but releases the half-open
  trial, so the breaker can never stay half-open forever;
- a trial not settled within ``trial_timeout`` seconds counts as failed;
- outcomes are tagged with the breaker's *generation* (bumped whenever it
  opens): a late success of a call that started before the breaker opened
  cannot close it, only the trial's success (or the probe's) does.

While open, an optional background **probe** (``set_probe``: one cheap
call such as ``PING`` every ``probe_interval`` seconds on the injected
clock) closes the breaker as soon as the backend answers, so recovery does
not wait for the cool-down nor for traffic. It runs only while the breaker
is open and in an event loop, and :meth:`CircuitBreaker.aclose` stops it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType

import structlog

from scalekit._clock import Clock, get_clock, sleep
from scalekit.errors import ConfigurationError, ScalekitError

__all__ = ["BreakerState", "CircuitBreaker", "CircuitOpen", "Guard"]

_logger = structlog.get_logger("scalekit.breaker")

Probe = Callable[[], Awaitable[object]]


class BreakerState(enum.StrEnum):
    """Where a :class:`CircuitBreaker` is."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpen(ScalekitError):
    """The breaker refused the call: the backend was not contacted."""


@dataclasses.dataclass(eq=False, slots=True)
class _Ticket:
    """One admitted call: the generation it started in, whether it is the trial."""

    generation: int
    trial: bool
    started: float


class CircuitBreaker:
    """Stops calls to a failing backend for a cool-down.

    Args:
        failure_threshold: consecutive failed calls that open the breaker.
        cooldown: seconds the breaker stays open before one trial call.
        trial_timeout: seconds a half-open trial may take before it counts as
            failed (so a trial that never reports cannot block recovery).
        probe_interval: seconds between two probes while open (see
            :meth:`set_probe`); at most 1 s keeps recovery within a second.
        name: names the breaker in log lines (``"cache"``, ``"ratelimit"``).
        clock: the clock to read; defaults to :func:`scalekit._clock.get_clock`.

    Raises:
        ValueError: ``failure_threshold`` < 1, or a negative ``cooldown``, or
            a ``trial_timeout`` / ``probe_interval`` that is not positive.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        cooldown: float = 5.0,
        trial_timeout: float = 2.0,
        probe_interval: float = 1.0,
        name: str = "",
        clock: Clock | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ConfigurationError(f"failure_threshold must be >= 1, got {failure_threshold!r}")
        if cooldown < 0:
            raise ConfigurationError(f"cooldown must be >= 0 seconds, got {cooldown!r}")
        if not trial_timeout > 0:
            raise ConfigurationError(f"trial_timeout must be > 0 seconds, got {trial_timeout!r}")
        if not probe_interval > 0:
            raise ConfigurationError(f"probe_interval must be > 0 seconds, got {probe_interval!r}")
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self.trial_timeout = trial_timeout
        self.probe_interval = probe_interval
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._generation = 0
        self._trial: _Ticket | None = None
        self._probe: Probe | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self.probes = 0
        """Probe calls made so far (for tests and curiosity)."""

    def _now(self) -> float:
        return (self._clock or get_clock()).monotonic()

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker past its cool-down reads half-open."""
        with self._lock:
            if self._state is BreakerState.OPEN and self._now() - self._opened_at >= self.cooldown:
                return BreakerState.HALF_OPEN
            return self._state

    @property
    def trial_in_flight(self) -> bool:
        """Whether a half-open trial call has been let through and not settled yet."""
        return self._trial is not None

    @property
    def generation(self) -> int:
        """How many times the breaker has opened."""
        return self._generation

    def guard(
        self, *, failures: tuple[type[BaseException], ...] = (Exception,), force: bool = False
    ) -> Guard:
        """A context manager around one backend round trip.

        Args:
            failures: the exceptions that mean the backend failed; anything
                else (cancellation included) releases the call without a verdict.
            force: make the call even while open (an invalidation must try);
                its outcome then counts only if the breaker is closed.

        Raises:
            CircuitOpen: on entering, when the breaker refuses the call.
        """
        return Guard(self, failures, force)

    # -- the state machine; the guard is its only user -------------------
    def _admit(self, force: bool) -> _Ticket | None:
        now = self._now()
        with self._lock:
            state = self._state
            if state is BreakerState.CLOSED or force:
                return _Ticket(self._generation, False, now)
            if state is BreakerState.OPEN:
                if now - self._opened_at < self.cooldown:
                    self._start_probe()
                    return None
                self._state = BreakerState.HALF_OPEN
                self._trial = None
            if self._trial is not None:
                if now - self._trial.started < self.trial_timeout:
                    return None
                self._open(now, "trial timed out")
                return None
            self._trial = _Ticket(self._generation, True, now)
            return self._trial

    def _succeeded(self, ticket: _Ticket) -> None:
        with self._lock:
            if ticket is self._trial:
                self._close("trial succeeded")
            elif self._state is BreakerState.CLOSED and ticket.generation == self._generation:
                self._failures = 0

    def _failed(self, ticket: _Ticket) -> None:
        with self._lock:
            if ticket is self._trial:
                self._open(self._now(), "trial failed")
            elif self._state is BreakerState.CLOSED and ticket.generation == self._generation:
                self._failures += 1
                if self._failures >= self.failure_threshold:
                    self._open(self._now(), f"{self._failures} consecutive failures")

    def _abandoned(self, ticket: _Ticket) -> None:
        with self._lock:
            if ticket is self._trial:
                self._trial = None

    def _open(self, now: float, why: str) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = now
        self._failures = 0
        self._generation += 1
        self._trial = None
        _logger.warning("circuit breaker opened", breaker=self.name, reason=why)
        self._start_probe()

    def _close(self, why: str) -> None:
        if self._state is not BreakerState.CLOSED:
            _logger.info("circuit breaker closed", breaker=self.name, reason=why)
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._trial = None

    def reset(self) -> None:
        """Close the breaker and forget past failures."""
        with self._lock:
            self._close("reset")

    # -- the background probe ---------------------------------------------
    def set_probe(self, probe: Probe | None) -> None:
        """Ping the backend with ``probe()`` every ``probe_interval`` seconds while open.

        The probe's first answer closes the breaker (it is not a request's
        trial, so recovery does not wait for traffic). A breaker shared by
        two backends keeps the last probe set.
        """
        self._probe = probe

    def _start_probe(self) -> None:
        # Called under the lock, from whichever thread saw the breaker open.
        if self._probe is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a worker thread: the next async caller starts it
            return
        task = self._probe_task
        if task is not None and not task.done() and task.get_loop() is loop:
            return
        self._probe_task = loop.create_task(
            self._probe_loop(self._now() + self.probe_interval), name=f"breaker-probe-{self.name}"
        )

    async def _probe_loop(self, next_at: float) -> None:
        # Probes are due at fixed points from the moment the probe was started,
        # however late this task first runs.
        while True:
            await sleep(max(0.0, next_at - self._now()), self._clock)
            now = self._now()
            next_at += self.probe_interval
            if next_at <= now:  # fell behind (a long probe, a clock jump): no burst
                next_at = now + self.probe_interval
            with self._lock:
                if self._state is BreakerState.CLOSED or self._probe is None:
                    return
                generation, probe = self._generation, self._probe
            self.probes += 1
            try:
                # asyncio.timeout, not wait_for: wait_for can swallow this
                # task's cancellation when the probe fails at the same moment.
                async with asyncio.timeout(self.probe_interval):
                    await probe()
            except Exception:  # still down: try again next interval
                continue
            with self._lock:
                if self._generation == generation:
                    self._close("probe answered")
                    return

    async def aclose(self) -> None:
        """Stop the background probe (the state is kept)."""
        task, self._probe_task = self._probe_task, None
        if task is None or task.done() or task.get_loop().is_closed():
            return
        task.cancel()
        if task.get_loop() is asyncio.get_running_loop():
            await asyncio.wait([task])  # never raises the task's cancellation here

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(state={self.state.value!r}, "
            f"failure_threshold={self.failure_threshold}, cooldown={self.cooldown})"
        )


class Guard:
    """One guarded call; made by :meth:`CircuitBreaker.guard`, entered once."""

    __slots__ = ("_breaker", "_failures", "_force", "_ticket")

    def __init__(
        self, breaker: CircuitBreaker, failures: tuple[type[BaseException], ...], force: bool
    ) -> None:
        self._breaker = breaker
        self._failures = failures
        self._force = force
        self._ticket: _Ticket | None = None

    @property
    def trial(self) -> bool:
        """Whether this call is the half-open trial."""
        return self._ticket is not None and self._ticket.trial

    def __enter__(self) -> Guard:
        if self._ticket is not None:
            raise RuntimeError("a breaker guard is entered once; call breaker.guard() again")
        ticket = self._breaker._admit(self._force)
        if ticket is None:
            name = f"{self._breaker.name} " if self._breaker.name else ""
            raise CircuitOpen(f"{name}circuit breaker is open: backend not called")
        self._ticket = ticket
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        ticket = self._ticket
        if ticket is None:
            return
        if exc is None:
            self._breaker._succeeded(ticket)
        elif isinstance(exc, self._failures):
            self._breaker._failed(ticket)
        else:
            self._breaker._abandoned(ticket)
