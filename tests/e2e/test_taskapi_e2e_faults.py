"""Faults under load, through nginx: Redis killed, the replica stopped, the primary restarted.

Each test runs the same mixed load in phases (before, during, after the
fault) and counts the answers of each phase; nothing is timed.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import pytest
from harness import wait_until
from taskapi_cluster import TaskApi
from taskapi_e2e import TASKS, client, gather_limited, signup

pytestmark = pytest.mark.anyio

PHASE = 90
_numbers = itertools.count()


@dataclass
class User:
    id: int
    auth: dict[str, str]
    task: int | None = None


async def users(api: httpx.AsyncClient, count: int, *, writer: bool) -> list[User]:
    made = []
    for _ in range(count):
        user_id, auth = await signup(api, "fault")
        user = User(user_id, auth)
        if writer:
            created = await api.post(TASKS, json={"title": "first"}, headers=auth)
            assert created.status_code == 201
            user.task = created.json()["id"]
        made.append(user)
    return made


def mixed(
    api: httpx.AsyncClient, people: list[User], *, writes: bool
) -> list[Callable[[], Awaitable[httpx.Response]]]:
    """One phase of load: creates and updates (if ``writes``), lists, single reads, /me."""
    calls: list[Callable[[], Awaitable[httpx.Response]]] = []
    for number in range(PHASE):
        user = people[number % len(people)]
        unique = next(_numbers)
        kind = number % (5 if writes else 3)
        if kind == 0:
            calls.append(
                lambda u=user, n=unique: api.get(TASKS, params={"offset": n % 7}, headers=u.auth)
            )
        elif kind == 1:
            calls.append(
                lambda u=user, n=unique: api.get(f"{TASKS}/{u.task or n % 5 + 1}", headers=u.auth)
            )
        elif kind == 2:
            calls.append(lambda u=user: api.get("/api/v1/auth/me", headers=u.auth))
        elif kind == 3:
            calls.append(
                lambda u=user, n=unique: api.post(TASKS, json={"title": f"l{n}"}, headers=u.auth)
            )
        else:
            calls.append(
                lambda u=user, n=unique: api.patch(
                    f"{TASKS}/{u.task}", json={"description": f"d{n}"}, headers=u.auth
                )
            )
    return calls


async def run(calls: list[Callable[[], Awaitable[httpx.Response]]]) -> list[httpx.Response]:
    return await gather_limited(calls, concurrency=10)


def summary(responses: list[httpx.Response]) -> Counter[int]:
    return Counter(response.status_code for response in responses)


def ok(responses: list[httpx.Response], *, not_found: bool = False) -> bool:
    allowed = {200, 201} | ({404} if not_found else set())
    return all(response.status_code in allowed for response in responses)


async def test_redis_killed_no_5xx(taskapi: TaskApi) -> None:
    async with client(taskapi.url, connections=10) as api:
        people = await users(api, 4, writer=True)
        before = await run(mixed(api, people, writes=True))
        assert ok(before), summary(before)
        taskapi.redis.kill()
        during = await run(mixed(api, people, writes=True))
        # Cache bypassed, limits open, marks unavailable (reads go to the primary).
        assert ok(during), summary(during)
        ready = await api.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json()["status"] == "warn"
        taskapi.redis.start()
        after = await run(mixed(api, people, writes=True))
        assert ok(after), summary(after)


async def test_replica_stopped_no_failed_reads(taskapi: TaskApi) -> None:
    async with client(taskapi.url, connections=10) as api:
        # Readers only: nothing pins their reads to the primary.
        people = await users(api, 6, writer=False)
        # The replica serves their reads (right after another fault the marks'
        # circuit breaker may still send reads to the primary for a moment).
        replica_reads = taskapi.metric("scalekit_db_queries_total", role="replica")
        for _ in range(50):
            before = await run(mixed(api, people, writes=False))
            assert ok(before, not_found=True), summary(before)
            if taskapi.metric("scalekit_db_queries_total", role="replica") > replica_reads:
                break
        else:
            pytest.fail("the replica never served a read before it was stopped")
        taskapi.mariadb.replica.stop()
        during = await run(mixed(api, people, writes=False))
        assert ok(during, not_found=True), summary(during)
        taskapi.mariadb.replica.start()
        after = await run(mixed(api, people, writes=False))
        assert ok(after, not_found=True), summary(after)


async def test_primary_restarted_503_only_while_down(taskapi: TaskApi) -> None:
    async with client(taskapi.url, connections=10) as api:
        people = await users(api, 4, writer=True)
        before = await run(mixed(api, people, writes=True))
        assert ok(before), summary(before)
        taskapi.mariadb.primary.stop()
        during = await run(mixed(api, people, writes=True))
        failed = [response for response in during if response.status_code >= 400]
        assert failed, "the outage was not seen"
        for response in failed:
            assert response.status_code == 503, (response.status_code, response.text)
            assert response.headers["content-type"] == "application/json"
            assert response.json()["error"] == "database_unavailable"
            assert response.headers["retry-after"] == "1"
        taskapi.mariadb.primary.start()
        # "Back" is when every instance sees it back: its readiness (a check
        # of each primary pool) passes. The pools' connect back-off (a refused
        # server is tried again every 50 ms) may answer "server down" for a
        # moment after the server is up.
        for instance in taskapi.instances:
            wait_until(
                lambda url=instance.url: (
                    httpx.get(f"{url}/health/ready", timeout=5).status_code == 200
                ),
                timeout=30,
                what=f"{instance.url} ready again",
            )
        after = await run(mixed(api, people, writes=True))
        assert ok(after), summary(after)
