"""The memory backend against ``limits``' own strategies on the same timeline."""

from __future__ import annotations

import types
from collections.abc import Iterator

import anyio
import limits
import limits.storage.memory
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scalekit.ratelimit import LimitCheck, MemoryRateLimitBackend

REFERENCE = {
    "fixed": limits.strategies.FixedWindowRateLimiter,
    "sliding": limits.strategies.SlidingWindowCounterRateLimiter,
    "moving": limits.strategies.MovingWindowRateLimiter,
}


class _FakeTime:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def fake_time() -> Iterator[_FakeTime]:
    fake = _FakeTime()
    original = limits.storage.memory.time
    limits.storage.memory.time = types.SimpleNamespace(time=fake.time)  # type: ignore[assignment]
    try:
        yield fake
    finally:
        limits.storage.memory.time = original


def _reference(strategy: str, rate: str, steps: list[float], fake: _FakeTime) -> list[bool]:
    fake.now = 1_700_000_000.0
    storage = limits.storage.MemoryStorage()
    try:
        limiter = REFERENCE[strategy](storage)
        item = limits.parse(rate)
        decisions = []
        for step in steps:
            fake.now += step
            decisions.append(limiter.hit(item, "client"))
        return decisions
    finally:
        storage.timer.cancel()


async def _ours(strategy: str, rate: str, steps: list[float]) -> list[bool]:
    item = limits.parse(rate)
    backend = MemoryRateLimitBackend()
    now = 1_700_000_000.0
    check = LimitCheck("k", strategy, item.amount, item.get_expiry())
    decisions = []
    for step in steps:
        now += step
        decisions.append((await backend.check([check], at=now)).allowed)
    return decisions


steps_strategy = st.lists(
    st.sampled_from([0.0, 0.05, 0.25, 0.5, 1.0, 1.5, 2.75, 4.0, 7.5]), min_size=1, max_size=60
)


@pytest.mark.parametrize("strategy", ["fixed", "sliding", "moving"])
@pytest.mark.parametrize("rate", ["5/10 seconds", "3/second", "10/minute"])
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=steps_strategy)
def test_allow_deny_sequence_equals_limits(
    strategy: str, rate: str, steps: list[float], fake_time: _FakeTime
) -> None:
    import anyio

    expected = _reference(strategy, rate, steps, fake_time)
    assert anyio.run(_ours, strategy, rate, steps) == expected


@pytest.mark.anyio
@pytest.mark.parametrize("strategy", ["fixed", "sliding", "moving"])
async def test_a_rejected_check_consumes_nothing(strategy: str) -> None:
    backend = MemoryRateLimitBackend()
    tight = LimitCheck("tight", strategy, 1, 60)
    loose = LimitCheck("loose", strategy, 100, 60)
    assert (await backend.check([tight, loose], at=1000.0)).allowed
    for _ in range(5):
        verdict = await backend.check([loose, tight], at=1001.0)
        assert not verdict.allowed
        assert verdict.results[0].ok
        assert not verdict.results[1].ok
    assert (await backend.check([loose], at=1001.0)).results[0].remaining == 98


@pytest.mark.anyio
@pytest.mark.parametrize("strategy", ["fixed", "sliding", "moving"])
async def test_refund_gives_a_hit_back(strategy: str) -> None:
    backend = MemoryRateLimitBackend()
    check = LimitCheck("k", strategy, 2, 60)
    first = await backend.check([check], at=1000.0)
    await backend.check([LimitCheck("k", strategy, 2, 60, mode="refund")], at=first.at)
    assert (await backend.check([check], at=1000.5)).results[0].remaining == 1


@pytest.mark.anyio
@pytest.mark.parametrize("strategy", ["fixed", "sliding", "moving"])
async def test_retry_after_is_when_the_request_would_pass(strategy: str) -> None:
    backend = MemoryRateLimitBackend()
    check = LimitCheck("k", strategy, 3, 10)
    now = 1_700_000_003.0
    while (await backend.check([check], at=now)).allowed:
        now += 0.5
    wait = (await backend.check([check], at=now)).results[0].reset
    assert wait > 0
    assert not (await backend.check([check], at=now + wait - 0.01)).allowed or strategy == "sliding"
    assert (await backend.check([check], at=now + wait)).allowed


@pytest.mark.anyio
@pytest.mark.parametrize("strategy", ["fixed", "sliding", "moving"])
async def test_remaining_is_never_negative_after_failures_pass_the_limit(strategy: str) -> None:
    # count="failures" admits while there is room and adds each failure after
    # the response, so a burst can push a counter past its limit: r=-3 was sent
    backend = MemoryRateLimitBackend()
    for _ in range(8):
        await backend.check([LimitCheck("k", strategy, 5, 60, mode="add")], at=1000.0)
    verdict = await backend.check([LimitCheck("k", strategy, 5, 60, mode="peek")], at=1000.0)
    assert not verdict.allowed
    assert verdict.results[0].remaining == 0


@pytest.mark.parametrize("strategy", ["fixed", "sliding", "moving"])
@settings(deadline=None)  # one event loop per example: slow under CPU load, not wrong
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["hit", "peek", "add", "refund"]),
            st.integers(min_value=1, max_value=3),
            st.integers(min_value=0, max_value=20_000),
        ),
        max_size=40,
    )
)
def test_remaining_stays_between_zero_and_the_limit(
    strategy: str, steps: list[tuple[str, int, int]]
) -> None:
    async def run() -> None:
        backend = MemoryRateLimitBackend()
        now = 1_700_000_000.0
        for mode, cost, gap_ms in steps:
            now += gap_ms / 1000
            verdict = await backend.check([LimitCheck("k", strategy, 5, 10, cost, mode)], at=now)
            assert 0 <= verdict.results[0].remaining <= 5

    anyio.run(run)


@pytest.mark.anyio
@pytest.mark.parametrize("strategy", ["fixed", "sliding", "moving"])
async def test_a_refund_after_its_window_is_over_gives_nothing_back(strategy: str) -> None:
    # A count="failures" success is refunded when its response ends, at the
    # timestamp it was admitted at. If a new window started meanwhile (a long
    # request), the refund took a hit off the new window, or (sliding) reset it.
    backend = MemoryRateLimitBackend()
    start = 1_700_000_040.0 + 59  # the last second of an epoch-aligned minute
    admitted = await backend.check([LimitCheck("k", strategy, 5, 60)], at=start)
    for moment in (start + 71, start + 72, start + 73):  # two windows later: 3 hits
        assert (await backend.check([LimitCheck("k", strategy, 5, 60)], at=moment)).allowed
    peek = LimitCheck("k", strategy, 5, 60, mode="peek")
    before = (await backend.check([peek], at=start + 74)).results[0].remaining
    await backend.check([LimitCheck("k", strategy, 5, 60, mode="refund")], at=admitted.at)
    assert (await backend.check([peek], at=start + 74)).results[0].remaining == before == 2
