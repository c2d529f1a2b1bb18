"""Circuit breaker transitions, driven by an advancing clock (scalekit._breaker)."""

from __future__ import annotations

import pytest

from scalekit._breaker import BreakerState, CircuitBreaker
from scalekit._clock import ManualClock


def make(threshold: int = 3, cooldown: float = 10.0) -> tuple[CircuitBreaker, ManualClock]:
    clock = ManualClock()
    return CircuitBreaker(failure_threshold=threshold, cooldown=cooldown, clock=clock), clock


def test_closed_allows_and_opens_after_threshold_consecutive_failures() -> None:
    breaker, _ = make()
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()


def test_success_resets_the_consecutive_count() -> None:
    breaker, _ = make()
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED


def test_open_refuses_until_cooldown_then_one_trial() -> None:
    breaker, clock = make(threshold=1, cooldown=10.0)
    breaker.record_failure()
    clock.advance(9.999)
    assert not breaker.allow()
    clock.advance(0.001)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()  # the trial
    assert not breaker.allow()  # everyone else waits for it
    assert not breaker.allow()


def test_trial_success_closes() -> None:
    breaker, clock = make(threshold=1)
    breaker.record_failure()
    clock.advance(10)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert all(breaker.allow() for _ in range(5))


def test_trial_failure_reopens_for_a_full_cooldown() -> None:
    breaker, clock = make(threshold=1, cooldown=10.0)
    breaker.record_failure()
    clock.advance(10)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.advance(9)
    assert not breaker.allow()
    clock.advance(1)
    assert breaker.allow()


def test_at_most_one_call_per_cooldown_during_an_outage() -> None:
    breaker, clock = make(threshold=2, cooldown=5.0)
    calls = 0
    for _step in range(800):  # 800 requests over 100 seconds of outage
        if breaker.allow():
            calls += 1
            breaker.record_failure()
        clock.advance(0.125)
    # 2 calls to open it (at 0 s and 0.125 s), then one trial per 5-second
    # cool-down: at 5.125 s, 10.125 s, ... 95.125 s.
    assert calls == 2 + 19


def test_reset_closes() -> None:
    breaker, _ = make(threshold=1)
    breaker.record_failure()
    breaker.reset()
    assert breaker.state is BreakerState.CLOSED


def test_uses_the_default_clock_when_none_given() -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown=3600)
    breaker.record_failure()
    assert not breaker.allow()
    assert "open" in repr(breaker)


@pytest.mark.parametrize(("threshold", "cooldown"), [(0, 1.0), (1, -1.0)])
def test_invalid_configuration(threshold: int, cooldown: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        CircuitBreaker(failure_threshold=threshold, cooldown=cooldown)
