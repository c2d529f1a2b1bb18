"""scalekit.testing: what users need to test their own apps, without private imports."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from scalekit import Settings, events, install
from scalekit._clock import get_clock
from scalekit.testing import (
    ManualClock,
    MemoryCache,
    MemoryRateLimitBackend,
    capture_events,
    current_clock,
    use_clock,
)

pytestmark = pytest.mark.anyio


async def home(request: object) -> PlainTextResponse:
    return PlainTextResponse("hi")


async def test_a_manual_clock_and_captured_decisions_test_a_limit_without_sleeping() -> None:
    clock = ManualClock()
    app = Starlette(routes=[Route("/", home)])
    install(app, Settings(rate_limit="2/minute"), registry=CollectorRegistry(), clock=clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with capture_events(events.RateLimitDecision) as decisions:
            codes = [(await client.get("/")).status_code for _ in range(3)]
            clock.advance(120)
            codes.append((await client.get("/")).status_code)
    assert codes == [200, 200, 429, 200]
    assert [decision.decision for decision in decisions] == [
        "allowed",
        "allowed",
        "limited",
        "allowed",
    ]


def test_use_clock_sets_and_restores_the_process_clock() -> None:
    before = get_clock()
    clock = ManualClock()
    with use_clock(clock):
        assert current_clock() is clock
    assert get_clock() is before


def test_the_memory_backends_are_the_in_process_defaults() -> None:
    app = Starlette(routes=[Route("/", home)])
    stack = install(app, Settings(rate_limit="2/minute"), registry=CollectorRegistry())
    assert isinstance(stack.cache, MemoryCache)
    assert isinstance(stack.ratelimit, MemoryRateLimitBackend)


def test_health_statuses_are_a_str_enum_that_accepts_strings() -> None:
    from scalekit.observability import CheckResult, HealthStatus

    result = CheckResult("warn")
    assert result.status is HealthStatus.WARN
    assert result.status == "warn"
    with pytest.raises(ValueError, match="'pass', 'warn' or 'fail'"):
        CheckResult("ok")
