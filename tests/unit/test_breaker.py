"""Circuit breaker transitions, driven by an advancing clock (scalekit._breaker)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from scalekit._breaker import BreakerState, CircuitBreaker, CircuitOpen, Guard
from scalekit._clock import ManualClock

pytestmark = pytest.mark.anyio


class Down(Exception):
    """What a backend raises in these tests."""


def make(
    threshold: int = 3, cooldown: float = 10.0, **options: float
) -> tuple[CircuitBreaker, ManualClock]:
    clock = ManualClock()
    breaker = CircuitBreaker(
        failure_threshold=threshold,
        cooldown=cooldown,
        clock=clock,
        **options,  # type: ignore[arg-type]
    )
    return breaker, clock


def succeed(breaker: CircuitBreaker) -> bool:
    """One call that works; whether the breaker let it through."""
    try:
        with breaker.guard():
            pass
    except CircuitOpen:
        return False
    return True


def fail(breaker: CircuitBreaker) -> bool:
    """One call that fails; whether the breaker let it through."""
    try:
        with breaker.guard():
            raise Down
    except CircuitOpen:
        return False
    except Down:
        return True


def hold(breaker: CircuitBreaker) -> Guard:
    """A call that has started and not finished yet (exit it to finish)."""
    guard = breaker.guard(failures=(Down,))
    guard.__enter__()
    return guard


def test_closed_allows_and_opens_after_threshold_consecutive_failures() -> None:
    breaker, _ = make()
    assert fail(breaker)
    assert fail(breaker)
    assert breaker.state is BreakerState.CLOSED
    assert fail(breaker)
    assert breaker.state is BreakerState.OPEN
    assert not succeed(breaker)


def test_success_resets_the_consecutive_count() -> None:
    breaker, _ = make()
    fail(breaker)
    fail(breaker)
    succeed(breaker)
    fail(breaker)
    fail(breaker)
    assert breaker.state is BreakerState.CLOSED


def test_open_refuses_until_cooldown_then_one_trial() -> None:
    breaker, clock = make(threshold=1, cooldown=10.0)
    fail(breaker)
    clock.advance(9.999)
    assert not succeed(breaker)
    clock.advance(0.001)
    assert breaker.state is BreakerState.HALF_OPEN
    trial = hold(breaker)
    assert trial.trial
    assert not succeed(breaker)  # everyone else waits for it
    assert not succeed(breaker)
    trial.__exit__(None, None, None)
    assert breaker.state is BreakerState.CLOSED


def test_trial_success_closes() -> None:
    breaker, clock = make(threshold=1)
    fail(breaker)
    clock.advance(10)
    assert succeed(breaker)
    assert breaker.state is BreakerState.CLOSED
    assert all(succeed(breaker) for _ in range(5))


def test_trial_failure_reopens_for_a_full_cooldown() -> None:
    breaker, clock = make(threshold=1, cooldown=10.0)
    fail(breaker)
    clock.advance(10)
    assert fail(breaker)
    assert breaker.state is BreakerState.OPEN
    clock.advance(9)
    assert not succeed(breaker)
    clock.advance(1)
    assert succeed(breaker)


def test_at_most_one_call_per_cooldown_during_an_outage() -> None:
    breaker, clock = make(threshold=2, cooldown=5.0)
    calls = 0
    for _step in range(800):  # 800 requests over 100 seconds of outage
        if fail(breaker):
            calls += 1
        clock.advance(0.125)
    # 2 calls to open it (at 0 s and 0.125 s), then one trial per 5-second
    # cool-down: at 5.125 s, 10.125 s, ... 95.125 s.
    assert calls == 2 + 19


def test_a_cancelled_trial_is_released() -> None:
    # Regression: a trial cancelled by a client disconnect left the breaker
    # half-open with its trial "in flight" forever (the old allow() /
    # record_*() API never heard back), so the backend stayed off until restart.
    breaker, clock = make(threshold=1)
    fail(breaker)
    clock.advance(10)
    trial = hold(breaker)
    assert trial.trial
    trial.__exit__(asyncio.CancelledError, asyncio.CancelledError(), None)
    assert breaker.state is BreakerState.HALF_OPEN
    assert succeed(breaker)  # the next caller is the trial, without waiting
    assert breaker.state is BreakerState.CLOSED


def test_an_unexpected_error_releases_the_trial_without_a_verdict() -> None:
    breaker, clock = make(threshold=1)
    fail(breaker)
    clock.advance(10)
    with pytest.raises(KeyError), breaker.guard(failures=(Down,)):
        raise KeyError("a bug, not an outage")
    assert breaker.state is BreakerState.HALF_OPEN
    assert succeed(breaker)


def test_errors_that_are_not_failures_do_not_count_while_closed() -> None:
    breaker, _ = make(threshold=1)
    for _ in range(3):
        with pytest.raises(asyncio.CancelledError), breaker.guard():
            raise asyncio.CancelledError
    assert breaker.state is BreakerState.CLOSED


def test_a_trial_that_never_reports_times_out_as_a_failure() -> None:
    breaker, clock = make(threshold=1, cooldown=10.0, trial_timeout=2.0)
    fail(breaker)
    clock.advance(10)
    stuck = hold(breaker)  # the trial hangs and is never settled
    clock.advance(1.999)
    assert not succeed(breaker)
    clock.advance(0.001)
    assert not succeed(breaker)  # the deadline passed: counted as failed, open again
    assert breaker.state is BreakerState.OPEN
    clock.advance(9.999)
    assert not succeed(breaker)
    clock.advance(0.001)
    assert succeed(breaker)  # a new trial a full cool-down later
    assert breaker.state is BreakerState.CLOSED
    stuck.__exit__(Down, Down(), None)  # its late failure changes nothing
    assert breaker.state is BreakerState.CLOSED


def test_a_late_success_does_not_close_an_open_breaker() -> None:
    # Regression: a call that started while closed and answered after the
    # breaker had opened closed it again (record_success() from anyone).
    breaker, clock = make(threshold=2)
    slow = hold(breaker)
    fail(breaker)
    fail(breaker)
    assert breaker.state is BreakerState.OPEN
    slow.__exit__(None, None, None)
    assert breaker.state is BreakerState.OPEN
    clock.advance(10)
    trial = hold(breaker)
    late = [hold(CircuitBreaker())]  # unrelated breakers do not interfere
    late[0].__exit__(None, None, None)
    assert breaker.state is BreakerState.HALF_OPEN
    trial.__exit__(None, None, None)
    assert breaker.state is BreakerState.CLOSED


def test_a_late_success_during_half_open_does_not_close_either() -> None:
    breaker, clock = make(threshold=1)
    slow = hold(breaker)
    fail(breaker)
    clock.advance(10)
    trial = hold(breaker)
    slow.__exit__(None, None, None)
    assert breaker.state is BreakerState.HALF_OPEN
    trial.__exit__(Down, Down(), None)
    assert breaker.state is BreakerState.OPEN


def test_late_failures_do_not_reopen_or_extend() -> None:
    breaker, clock = make(threshold=1)
    slow = [hold(breaker) for _ in range(5)]
    fail(breaker)
    clock.advance(10)
    assert succeed(breaker)  # the trial closes it
    for guard in slow:
        guard.__exit__(Down, Down(), None)
    assert breaker.state is BreakerState.CLOSED


def test_one_failure_per_guarded_round_trip() -> None:
    # The guard wraps one round trip: a pipeline of 50 checks that times out
    # is one failure, not 50.
    breaker, _ = make(threshold=2)
    with pytest.raises(Down), breaker.guard(failures=(Down,)):
        raise Down("a pipeline of 50 checks timed out")
    assert breaker.state is BreakerState.CLOSED


def test_forced_calls_go_through_when_open_and_do_not_close_it() -> None:
    breaker, _ = make(threshold=1)
    fail(breaker)
    with breaker.guard(force=True) as guard:  # an invalidation must try
        assert not guard.trial
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(Down), breaker.guard(force=True):
        raise Down
    assert breaker.state is BreakerState.OPEN


def test_a_guard_is_entered_once() -> None:
    breaker, _ = make()
    guard = breaker.guard()
    with guard:
        pass
    with pytest.raises(RuntimeError, match="entered once"), guard:
        pass


def test_thread_safe_counting() -> None:
    breaker, _ = make(threshold=1000)

    def work() -> None:
        for _ in range(100):
            fail(breaker)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert breaker.state is BreakerState.CLOSED
    for _ in range(200):
        fail(breaker)
    assert breaker.state is BreakerState.OPEN


def test_reset_closes() -> None:
    breaker, _ = make(threshold=1)
    fail(breaker)
    breaker.reset()
    assert breaker.state is BreakerState.CLOSED


def test_uses_the_default_clock_when_none_given() -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown=3600)
    fail(breaker)
    assert not succeed(breaker)
    assert "open" in repr(breaker)


def test_state_is_a_str_enum() -> None:
    assert BreakerState("half_open") is BreakerState.HALF_OPEN
    assert BreakerState.OPEN == "open"


@pytest.mark.parametrize(
    "options",
    [
        {"failure_threshold": 0},
        {"cooldown": -1.0},
        {"trial_timeout": 0.0},
        {"probe_interval": 0.0},
    ],
)
def test_invalid_configuration(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        CircuitBreaker(**options)  # type: ignore[arg-type]


# -- the background probe ----------------------------------------------------


async def turns(count: int = 20) -> None:
    """Let background tasks run (event-loop turns, not time)."""
    for _ in range(count):
        await asyncio.sleep(0)


class FakePing:
    """A probe target that is down until told otherwise; counts its calls."""

    def __init__(self) -> None:
        self.up = False
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if not self.up:
            raise Down("still down")


async def test_probe_closes_an_open_breaker_within_one_interval() -> None:
    # Regression: recovery waited for the cool-down and for a request's
    # trial (limits and caching came back up to 5 s after Redis did).
    breaker, clock = make(threshold=1, cooldown=30.0, probe_interval=1.0)
    ping = FakePing()
    breaker.set_probe(ping)
    try:
        fail(breaker)
        assert breaker.state is BreakerState.OPEN
        await turns()
        assert ping.calls == 0  # one interval first
        clock.advance(1.0)
        await turns()
        assert ping.calls == 1
        assert breaker.state is BreakerState.OPEN
        ping.up = True
        clock.advance(0.5)
        await turns()
        assert ping.calls == 1  # one ping per interval, not more
        clock.advance(0.5)
        await turns()
        assert ping.calls == 2
        assert breaker.state is BreakerState.CLOSED  # 2 s after opening, no traffic
        clock.advance(10.0)
        await turns()
        assert ping.calls == 2  # closed: the probe has stopped
    finally:
        await breaker.aclose()


async def test_probe_stops_on_aclose() -> None:
    breaker, clock = make(threshold=1)
    ping = FakePing()
    breaker.set_probe(ping)
    fail(breaker)
    clock.advance(1.0)
    await turns()
    assert ping.calls == 1
    await breaker.aclose()
    clock.advance(5.0)
    await turns()
    assert ping.calls == 1
    assert breaker.state is BreakerState.OPEN


async def test_probe_answer_from_before_a_reopen_does_not_close() -> None:
    breaker, clock = make(threshold=1, cooldown=0.5, probe_interval=1.0)
    gate = asyncio.Event()

    async def slow_ping() -> None:
        await gate.wait()

    breaker.set_probe(slow_ping)
    try:
        fail(breaker)  # generation 1
        clock.advance(1.0)
        await turns()  # the probe is waiting for its answer
        assert fail(breaker)  # the trial fails: opened again, generation 2
        gate.set()
        await turns()
        assert breaker.state is BreakerState.OPEN
        clock.advance(1.0)
        await turns()  # the next probe, of this opening, closes it
        assert breaker.state is BreakerState.CLOSED
    finally:
        await breaker.aclose()


async def test_probe_starts_when_the_breaker_opened_in_a_worker_thread() -> None:
    breaker, clock = make(threshold=1, cooldown=30.0)
    ping = FakePing()
    ping.up = True
    breaker.set_probe(ping)
    try:
        await asyncio.to_thread(fail, breaker)  # no event loop there: no probe yet
        clock.advance(1.0)
        await turns()
        assert ping.calls == 0
        assert not succeed(breaker)  # an async caller is refused and starts it
        clock.advance(1.0)
        await turns()
        assert ping.calls == 1
        assert breaker.state is BreakerState.CLOSED
    finally:
        await breaker.aclose()


async def test_without_a_probe_only_the_trial_closes() -> None:
    breaker, clock = make(threshold=1, cooldown=5.0)
    fail(breaker)
    clock.advance(4.0)
    await turns()
    assert breaker.state is BreakerState.OPEN
    await breaker.aclose()  # nothing to stop


async def test_manual_clock_sleep_wakes_on_advance_only() -> None:
    clock = ManualClock()
    woke: list[float] = []

    async def sleeper(seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(seconds)

    async with asyncio.TaskGroup() as group:
        group.create_task(sleeper(2.0))
        group.create_task(sleeper(1.0))
        group.create_task(sleeper(0.0))
        await turns()
        assert woke == [0.0]
        clock.advance(1.0)
        await turns()
        assert woke == [0.0, 1.0]
        clock.advance(1.0)
    assert woke == [0.0, 1.0, 2.0]
