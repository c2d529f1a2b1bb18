"""Three instances behave as one: fresh reads everywhere, no lost writes.

The replica is delayed (``MASTER_DELAY``) and stays eligible for reads (the
cluster's ``max_lag`` is above the delay), so a read that sees a write just
made can only owe it to read-your-writes marks in Redis and to the cache
invalidation every write does, on whichever instance it lands.
"""

from __future__ import annotations

import httpx
import pytest
from taskapi_cluster import TaskApi
from taskapi_e2e import TASKS, client, gather_limited, signup, statuses

pytestmark = pytest.mark.anyio

PAIRS = 300
CREATES = 500


async def test_a_write_on_one_instance_is_read_at_once_on_every_instance(taskapi: TaskApi) -> None:
    taskapi.mariadb.set_delay(2)
    pinned_before = taskapi.metric("scalekit_db_routing_total", decision="fallback_primary",
                                   reason="pinned")  # fmt: skip
    replica_reads_before = taskapi.metric("scalekit_db_queries_total", role="replica")
    instances = [client(instance.url) for instance in taskapi.instances]
    try:
        writer, writer_auth = await signup(instances[0], "writer")
        _, reader_auth = await signup(instances[0], "reader")
        stale = []
        for number in range(PAIRS):
            created = await instances[number % 3].post(
                TASKS, json={"title": f"task {number}"}, headers=writer_auth
            )
            assert created.status_code == 201, created.text
            task_id = created.json()["id"]
            for instance in instances:
                listed = await instance.get(TASKS, params={"limit": 1}, headers=writer_auth)
                assert listed.status_code == 200, listed.text
                if [item["id"] for item in listed.json()["items"]] != [task_id]:
                    stale.append((number, str(instance.base_url), listed.json()))
            if number % 10 == 0:
                # Someone who does not write reads from the (delayed) replica.
                other = await instances[number % 3].get(f"{TASKS}/1", headers=reader_auth)
                assert other.status_code == 404
        assert stale == []
        # The replica really was behind at the end, and really served reads.
        assert taskapi.shard_rows(writer, server="replica") < taskapi.shard_rows(writer) == PAIRS
        assert taskapi.metric("scalekit_db_queries_total", role="replica") > replica_reads_before
        pinned = taskapi.metric("scalekit_db_routing_total", decision="fallback_primary",
                                reason="pinned")  # fmt: skip
        assert pinned > pinned_before
    finally:
        for instance in instances:
            await instance.aclose()


async def test_concurrent_creates_across_instances_are_all_stored_once(taskapi: TaskApi) -> None:
    async with client(taskapi.url, connections=50) as api:
        user_id, auth = await signup(api, "creator")

        def create(number: int) -> object:
            return lambda: api.post(TASKS, json={"title": f"c{number}"}, headers=auth)

        responses: list[httpx.Response] = await gather_limited(
            [create(number) for number in range(CREATES)], concurrency=50
        )
    assert statuses(responses) == {201: CREATES}
    ids = {response.json()["id"] for response in responses}
    assert len(ids) == CREATES
    assert taskapi.shard_rows(user_id) == CREATES
    assert len(taskapi.upstreams_used()) == 3  # nginx spread them over every instance
