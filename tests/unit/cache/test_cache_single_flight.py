"""Single flight: only misses are collapsed, followers are released as soon as the entry is
known, and nobody is served an entry older than an invalidation finished before it arrived.

Each test would hang on a wrong implementation (a follower waiting on a client that never
reads); ``fail_after`` turns that hang into a failure. Nothing here sleeps.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from cache_helpers import Message, RecordingApp, Response, call

from scalekit._clock import ManualClock
from scalekit.cache import CacheMiddleware, CacheRule, MemoryCache

pytestmark = pytest.mark.anyio
DEADLINE = 10


class GatedApp(RecordingApp):
    """Blocks each run (after the first ``free`` runs) until ``release`` is set."""

    def __init__(self, free: int = 0) -> None:
        super().__init__()
        self.free = free
        self.started = anyio.Event()
        self.release = anyio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.runs >= self.free:
            self.started.set()
            await self.release.wait()
        await super().__call__(scope, receive, send)


def slow_client(gate: anyio.Event, sending: anyio.Event) -> Any:
    """A client that reads nothing of the body until ``gate`` is set."""

    async def hook(message: Message) -> None:
        if message["type"] == "http.response.body":
            sending.set()
            await gate.wait()

    return hook


def middleware_for(app: Any, clock: ManualClock, **rule: Any) -> tuple[CacheMiddleware, Any]:
    backend = MemoryCache(clock=clock)
    rule.setdefault("ttl", 60)
    return CacheMiddleware(app, backend, [CacheRule("/items", **rule)], clock=clock), backend


async def test_followers_are_released_before_the_leaders_client_has_read_anything() -> None:
    clock = ManualClock()
    app = GatedApp()
    middleware, _ = middleware_for(app, clock)
    reading, sending = anyio.Event(), anyio.Event()
    followers: list[Response] = []
    served = anyio.Event()

    async def follower() -> None:
        followers.append(await call(middleware))
        if len(followers) == 5:
            served.set()

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: call(middleware, send_hook=slow_client(reading, sending)))
            await app.started.wait()
            for _ in range(5):
                group.start_soon(follower)
            await anyio.wait_all_tasks_blocked()
            app.release.set()
            await served.wait()  # while the leader's client has not read a byte
            reading.set()
    assert app.runs == 1
    assert {r.header("cache-status") for r in followers} == {"scalekit; hit; collapsed"}


async def test_a_hit_to_a_slow_client_holds_nobody_up() -> None:
    clock = ManualClock()
    middleware, _ = middleware_for(RecordingApp(), clock)
    first = await call(middleware)
    reading, sending = anyio.Event(), anyio.Event()
    others: list[Response] = []
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: call(middleware, send_hook=slow_client(reading, sending)))
            await sending.wait()
            for _ in range(3):
                others.append(await call(middleware))
            reading.set()
    assert [r.header("cache-status") for r in others] == ["scalekit; hit"] * 3
    assert {r.body for r in others} == {first.body}


async def test_a_stale_refresh_holds_nobody_up() -> None:
    clock = ManualClock()
    app = GatedApp(free=1)
    middleware, _ = middleware_for(app, clock, ttl=10, stale_ttl=60)
    first = await call(middleware)
    clock.advance(15)
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as group:
            group.start_soon(call, middleware)  # serves stale, then refreshes (blocked)
            await app.started.wait()
            other = await call(middleware)
            app.release.set()
    assert other.header("cache-status") == "scalekit; hit; ttl=-5"
    assert other.body == first.body


async def test_no_follower_gets_an_entry_older_than_an_invalidation_before_it_arrived() -> None:
    clock = ManualClock()
    app = RecordingApp()
    middleware, backend = middleware_for(app, clock, tags=["t"])
    old = await call(middleware)
    reading, sending = anyio.Event(), anyio.Event()
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as group:
            # A hit still being sent to a slow client while the data changes.
            group.start_soon(lambda: call(middleware, send_hook=slow_client(reading, sending)))
            await sending.wait()
            await backend.invalidate("t")
            after = await call(middleware)
            reading.set()
    assert after.body != old.body
    assert after.header("cache-status") == "scalekit; fwd=miss; stored"


async def test_a_fill_started_before_an_invalidation_is_not_shared_after_it() -> None:
    clock = ManualClock()
    app = GatedApp()
    middleware, backend = middleware_for(app, clock, tags=["t"])
    leader: list[Response] = []
    follower: list[Response] = []
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as group:

            async def run(into: list[Response]) -> None:
                into.append(await call(middleware))

            group.start_soon(run, leader)
            await app.started.wait()  # the leader read the versions; its app is running
            await backend.invalidate("t")
            group.start_soon(run, follower)
            await anyio.wait_all_tasks_blocked()
            app.release.set()
    assert app.runs == 2
    assert leader[0].header("cache-status") == "scalekit; fwd=miss"
    assert follower[0].header("cache-status") == "scalekit; fwd=miss; stored"
    assert follower[0].body != leader[0].body
