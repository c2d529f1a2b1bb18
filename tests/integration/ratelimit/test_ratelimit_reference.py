"""The Lua script on real Redis against ``limits``' own strategies, on random timelines."""

from __future__ import annotations

import itertools
import types

import anyio
import limits
import limits.storage.memory
import pytest
from harness import RedisServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scalekit.ratelimit import LimitCheck, RedisRateLimitBackend

REFERENCE = {
    "fixed": limits.strategies.FixedWindowRateLimiter,
    "sliding": limits.strategies.SlidingWindowCounterRateLimiter,
    "moving": limits.strategies.MovingWindowRateLimiter,
}
_names = itertools.count()


def _reference(strategy: str, rate: str, times: list[float]) -> list[bool]:
    now = [0.0]
    original = limits.storage.memory.time
    limits.storage.memory.time = types.SimpleNamespace(time=lambda: now[0])  # type: ignore[assignment]
    storage = limits.storage.MemoryStorage()
    try:
        limiter = REFERENCE[strategy](storage)
        item = limits.parse(rate)
        decisions = []
        for moment in times:
            now[0] = moment
            decisions.append(limiter.hit(item, "client"))
        return decisions
    finally:
        storage.timer.cancel()
        limits.storage.memory.time = original


async def _ours(url: str, strategy: str, rate: str, times: list[float]) -> list[bool]:
    item = limits.parse(rate)
    backend = RedisRateLimitBackend(url + "?socket_timeout=2")
    check = LimitCheck(f"{{ref}}:{next(_names)}", strategy, item.amount, item.get_expiry())
    try:
        return [(await backend.check([check], at=moment)).allowed for moment in times]
    finally:
        await backend.aclose()


# Steps in odd milliseconds: limits computes in float seconds, the script in
# integer milliseconds; they agree except exactly on a window boundary.
steps = st.lists(st.integers(min_value=0, max_value=7_000).map(lambda ms: ms + 0.0007), max_size=40)


@pytest.mark.parametrize("strategy", ["fixed", "sliding", "moving"])
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(gaps=steps)
def test_redis_script_equals_limits(
    redis_server: RedisServer, strategy: str, gaps: list[float]
) -> None:
    times = list(itertools.accumulate([1_700_000_000.0131, *(gap / 1000 for gap in gaps)]))
    times = [round(moment, 3) for moment in times]
    expected = _reference(strategy, "4/5 seconds", times)
    assert anyio.run(_ours, redis_server.url, strategy, "4/5 seconds", times) == expected
