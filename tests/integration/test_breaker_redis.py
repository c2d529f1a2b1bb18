"""The circuit breaker in front of a real redis-server, for the cache and the limiter alike.

Outages are real (the server is killed or frozen with SIGSTOP); time on the
breaker's side is a ManualClock the tests advance.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from harness import RedisServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from scalekit import events
from scalekit._breaker import BreakerState, CircuitBreaker
from scalekit._clock import ManualClock
from scalekit.cache import CacheMiddleware, CacheRule, RedisCache
from scalekit.ratelimit import RateLimitMiddleware, RedisRateLimitBackend, Rule

pytestmark = pytest.mark.anyio


class Counter:
    """A Starlette app that counts the requests it served."""

    def __init__(self) -> None:
        self.runs = 0

        async def home(request: Request) -> PlainTextResponse:
            self.runs += 1
            return PlainTextResponse("ok")

        self.app = Starlette(routes=[Route("/", home), Route("/items", home)])


def http(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture
def seen() -> Iterator[list[events.Event]]:
    found: list[events.Event] = []
    unsubscribe = events.subscribe(found.append, events.BackendError, events.DegradedRequest)
    yield found
    unsubscribe()


def count(seen: list[events.Event], kind: type[events.Event], component: str) -> int:
    return sum(isinstance(e, kind) and getattr(e, "component", "") == component for e in seen)


async def wait_for(predicate: Callable[[], bool], rounds: int = 500) -> bool:
    """Let the loop run (the probe talks to a real server) until ``predicate``; bounded."""
    for _ in range(rounds):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


# Generous timeouts: the outages here are a killed server (refused at once)
# or a frozen one the test controls; a busy machine must not add its own.
PATIENT = "socket_timeout=2&socket_connect_timeout=2"


async def disconnect(request: asyncio.Future[Any]) -> None:
    """Cancel a request in flight, as a client disconnect does, and see it end cancelled.

    Cancelled again until it ends: Python 3.11's ``asyncio.wait_for`` (which
    redis-py wraps around a socket write) drops a cancellation that arrives
    just as the write completes, and the request then waits for its read.
    """
    while not request.done():
        request.cancel()
        await asyncio.sleep(0.01)
    with pytest.raises(asyncio.CancelledError):
        await request


def limiter(url: str, clock: ManualClock, **backend_options: Any) -> RateLimitMiddleware:
    breaker = CircuitBreaker(failure_threshold=5, cooldown=5.0, name="ratelimit", clock=clock)
    backend = RedisRateLimitBackend(url, breaker=breaker, **backend_options)
    return RateLimitMiddleware(
        Counter().app, backend, [Rule("1000/minute", name="api")], clock=clock
    )


async def test_a_timed_out_pipeline_of_50_checks_is_one_failure(
    redis_server: RedisServer, seen: list[events.Event]
) -> None:
    # Regression: the limiter recorded one breaker failure per request in a
    # timed-out pipeline, so one stall opened the breaker (5 of 50) while
    # Redis was healthy, and every request after it went unlimited.
    redis_server.flushall()
    clock = ManualClock()
    app = limiter(f"{redis_server.url}?socket_timeout=1&socket_connect_timeout=2", clock)
    breaker = app.breaker
    assert breaker is not None
    try:
        async with http(app) as client:
            assert (await client.get("/")).headers["ratelimit"]
            redis_server.freeze()
            try:
                responses = await asyncio.gather(*(client.get("/") for _ in range(50)))
            finally:
                redis_server.thaw()
            assert [r.status_code for r in responses] == [200] * 50
            round_trips = count(seen, events.BackendError, "ratelimit")
            assert 1 <= round_trips < breaker.failure_threshold
            assert breaker.state is BreakerState.CLOSED
            assert count(seen, events.DegradedRequest, "ratelimit") == 50
            assert "ratelimit" in (await client.get("/")).headers  # limited again at once
    finally:
        await app.aclose()


async def test_a_cancelled_trial_does_not_leave_the_limiter_off(
    redis_server: RedisServer,
) -> None:
    # Regression: a client that disconnected during the half-open trial left
    # the breaker half-open forever: rate limiting stayed off until restart.
    redis_server.flushall()
    clock = ManualClock()
    # one round trip per request, in the request's own task (as on Cluster)
    # a trial that hangs on the frozen server until the test cancels it
    hang = "socket_timeout=30&socket_connect_timeout=30"
    app = limiter(f"{redis_server.url}?{hang}", clock, batching=False)
    breaker = app.breaker
    assert breaker is not None
    breaker.set_probe(None)  # only the trial may close it here
    try:
        async with http(app) as client:
            assert "ratelimit" in (await client.get("/")).headers
            redis_server.kill()
            for _ in range(5):
                assert (await client.get("/")).status_code == 200
            assert breaker.state is BreakerState.OPEN
            redis_server.start()
            redis_server.freeze()
            clock.advance(breaker.cooldown)
            trial = asyncio.ensure_future(client.get("/"))
            assert await wait_for(lambda: breaker.trial_in_flight)
            await disconnect(trial)  # the client goes away mid-trial
            redis_server.thaw()
            assert not breaker.trial_in_flight
            response = await client.get("/")  # the next request is the trial
            assert "ratelimit" in response.headers
            assert breaker.state is BreakerState.CLOSED
    finally:
        redis_server.thaw()
        await app.aclose()


async def test_a_cancelled_trial_does_not_leave_the_cache_off(
    redis_server: RedisServer,
) -> None:
    clock = ManualClock()
    backend = RedisCache.from_url(
        redis_server.url,
        prefix="breaker-cancel:",
        socket_timeout=30,
        socket_connect_timeout=30,
        clock=clock,
    )
    backend.breaker.set_probe(None)
    counter = Counter()
    app = CacheMiddleware(counter.app, backend, [CacheRule("/items", ttl=600)], clock=clock)
    try:
        async with http(app) as client:
            await client.get("/items")
            assert (await client.get("/items")).headers["cache-status"] == "scalekit; hit"
            redis_server.kill()
            for _ in range(5):
                assert (await client.get("/items")).status_code == 200
            assert backend.breaker.state is BreakerState.OPEN
            redis_server.start()
            redis_server.freeze()
            clock.advance(backend.breaker.cooldown)
            trial = asyncio.ensure_future(client.get("/items"))
            assert await wait_for(lambda: backend.breaker.trial_in_flight)
            await disconnect(trial)
            redis_server.thaw()
            await client.get("/items")  # the trial: a miss on the restarted Redis
            assert backend.breaker.state is BreakerState.CLOSED
            assert (await client.get("/items")).headers["cache-status"] == "scalekit; hit"
    finally:
        redis_server.thaw()
        await backend.aclose()


async def test_the_probe_closes_the_limiter_within_one_interval_without_traffic(
    redis_server: RedisServer,
) -> None:
    # Regression: limits came back only after the 5 s cool-down and a request's trial.
    redis_server.flushall()
    clock = ManualClock()
    app = limiter(f"{redis_server.url}?{PATIENT}", clock)
    breaker = app.breaker
    assert breaker is not None
    try:
        async with http(app) as client:
            assert "ratelimit" in (await client.get("/")).headers
            redis_server.kill()
            for _ in range(5):
                assert (await client.get("/")).status_code == 200
            assert breaker.state is BreakerState.OPEN
            redis_server.start()
            clock.advance(breaker.probe_interval)  # one interval, far short of the cool-down
            assert await wait_for(lambda: breaker.state is BreakerState.CLOSED)
            assert breaker.probes == 1
            assert "ratelimit" in (await client.get("/")).headers
    finally:
        await app.aclose()


async def test_the_probe_closes_the_cache_within_one_interval_and_stops_on_aclose(
    redis_server: RedisServer,
) -> None:
    clock = ManualClock()
    backend = RedisCache.from_url(
        f"{redis_server.url}?{PATIENT}", prefix="breaker-probe:", clock=clock
    )
    counter = Counter()
    app = CacheMiddleware(counter.app, backend, [CacheRule("/items", ttl=600)], clock=clock)
    try:
        async with http(app) as client:
            await client.get("/items")
            redis_server.kill()
            for _ in range(5):
                await client.get("/items")
            assert backend.breaker.state is BreakerState.OPEN
            clock.advance(backend.breaker.probe_interval)
            assert await wait_for(lambda: backend.breaker.probes == 1)
            assert backend.breaker.state is BreakerState.OPEN  # still down: still open
            redis_server.start()
            clock.advance(backend.breaker.probe_interval)
            assert await wait_for(lambda: backend.breaker.state is BreakerState.CLOSED)
            assert backend.breaker.probes == 2
            await client.get("/items")
            assert (await client.get("/items")).headers["cache-status"] == "scalekit; hit"
            redis_server.kill()
            for _ in range(5):
                await client.get("/items")
            assert backend.breaker.state is BreakerState.OPEN
    finally:
        await backend.aclose()
    redis_server.start()
    clock.advance(10 * backend.breaker.probe_interval)
    await asyncio.sleep(0.05)
    assert backend.breaker.probes == 2  # closed backends do not probe


async def test_backend_errors_count_calls_and_degraded_requests_count_requests(
    redis_server: RedisServer, seen: list[events.Event]
) -> None:
    # Regression: the limiter counted every short-circuited request as a
    # backend error, the cache only its failed calls. Now both count failed
    # calls there, and every request served without Redis as degraded.
    redis_server.flushall()
    clock = ManualClock()
    cache_backend = RedisCache.from_url(
        f"{redis_server.url}?{PATIENT}", prefix="breaker-count:", clock=clock
    )
    cache = CacheMiddleware(
        Counter().app, cache_backend, [CacheRule("/items", ttl=600)], clock=clock
    )
    limited = limiter(f"{redis_server.url}?{PATIENT}", clock)
    try:
        async with http(cache) as cache_client, http(limited) as limit_client:
            await cache_client.get("/items")
            await limit_client.get("/")
            redis_server.kill()
            for _ in range(30):
                assert (await cache_client.get("/items")).status_code == 200
                assert (await limit_client.get("/")).status_code == 200
    finally:
        await cache_backend.aclose()
        await limited.aclose()
        redis_server.start()
    assert count(seen, events.BackendError, "cache") == 5  # until the breaker opened
    assert count(seen, events.BackendError, "ratelimit") == 5
    assert seen.count(events.DegradedRequest("cache", "bypass")) == 30
    assert seen.count(events.DegradedRequest("ratelimit", "fail_open")) == 30
