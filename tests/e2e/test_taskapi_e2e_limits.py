"""The API-wide limit holds across instances: the counters live in Redis, not in a process."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
from taskapi_cluster import TaskApi
from taskapi_e2e import client, gather_limited, signup, statuses

pytestmark = pytest.mark.anyio

LIMIT = 50
REQUESTS = 200


async def test_200_requests_over_three_instances_against_a_limit_of_50(taskapi: TaskApi) -> None:
    taskapi.restart_instances(SCALEKIT_RATE_LIMIT=f"{LIMIT}/15 minutes")
    async with client(taskapi.url, connections=20) as api:
        _, auth = await signup(api, "limited")  # two requests counted against the IP, not the user
        responses: list[httpx.Response] = await gather_limited(
            [lambda: api.get("/api/v1/auth/me", headers=auth)] * REQUESTS, concurrency=20
        )
    assert statuses(responses) == Counter({200: LIMIT, 429: REQUESTS - LIMIT})
    for response in responses:
        if response.status_code == 429:
            assert response.json()["error"] == "rate_limited"
            assert int(response.headers["retry-after"]) > 0
    # Every instance admitted some of the 50 and refused some of the rest:
    # one counter in Redis, not one per process.
    for status in (200, 429):
        served_by = taskapi.upstreams_used(request="GET /api/v1/auth/me", status=status)
        assert len(served_by) == 3, (status, served_by)
