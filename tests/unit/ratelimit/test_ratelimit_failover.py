"""SentinelFollower: which events hold checks, which release them, where the master went."""

from __future__ import annotations

import types
from typing import Any

import anyio
import pytest

from scalekit._clock import ManualClock
from scalekit.ratelimit.failover import SentinelFollower

pytestmark = pytest.mark.anyio

SENTINELS = [("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26379)]


def _sentinel(host: str, port: int) -> Any:
    pool = types.SimpleNamespace(connection_kwargs={"host": host, "port": port})
    return types.SimpleNamespace(connection_pool=pool)


def follower(clock: ManualClock | None = None, hold_limit: float = 5.0) -> SentinelFollower:
    return SentinelFollower(
        [_sentinel(host, port) for host, port in SENTINELS],
        "mymaster",
        hold_limit=hold_limit,
        clock=clock or ManualClock(),
    )


async def test_a_failover_holds_until_the_switch_and_names_the_new_master() -> None:
    watch = follower()
    assert not watch.holding
    watch.on_event(0, "+try-failover", "master mymaster 10.0.1.1 6379")
    assert watch.holding
    watch.on_event(0, "+switch-master", "mymaster 10.0.1.1 6379 10.0.1.2 6379")
    assert not watch.holding
    assert (watch.master, watch.switches, watch.announced_by) == (
        ("10.0.1.2", 6379),
        1,
        SENTINELS[0],
    )
    # the other sentinels announce the same switch as they learn it: one move
    watch.on_event(1, "+switch-master", "mymaster 10.0.1.1 6379 10.0.1.2 6379")
    watch.on_event(2, "+switch-master", "mymaster 10.0.1.1 6379 10.0.1.2 6379")
    assert watch.switches == 1
    assert watch.announced_by == SENTINELS[0]


async def test_other_services_and_other_instances_are_ignored() -> None:
    watch = follower()
    watch.on_event(0, "+try-failover", "master othermaster 10.0.9.1 6379")
    watch.on_event(0, "+switch-master", "othermaster 10.0.9.1 6379 10.0.9.2 6379")
    watch.on_event(0, "+try-failover", "slave 10.0.1.2:6379 10.0.1.2 6379 @ mymaster 10.0.1.1 6379")
    watch.on_event(0, "+switch-master", "garbage")
    assert not watch.holding
    assert (watch.master, watch.switches) == (None, 0)


async def test_a_lost_election_does_not_release_the_leaders_failover() -> None:
    # automatic failover: two sentinels try, one loses the election
    watch = follower()
    watch.on_event(1, "+try-failover", "master mymaster 10.0.1.1 6379")
    watch.on_event(2, "+try-failover", "master mymaster 10.0.1.1 6379")
    watch.on_event(2, "-failover-abort-not-elected", "master mymaster 10.0.1.1 6379")
    assert watch.holding
    watch.on_event(1, "-failover-abort-no-good-slave", "master mymaster 10.0.1.1 6379")
    assert not watch.holding
    assert watch.switches == 0


async def test_the_hold_ends_at_its_limit_on_the_injected_clock() -> None:
    clock = ManualClock()
    watch = follower(clock, hold_limit=5.0)
    watch.on_event(0, "+try-failover", "master mymaster 10.0.1.1 6379")
    released: list[bool] = []

    async def check() -> None:
        await watch.wait_until_settled()
        released.append(True)

    async with anyio.create_task_group() as group:
        group.start_soon(check)
        await anyio.wait_all_tasks_blocked()
        clock.advance(4.9)
        await anyio.wait_all_tasks_blocked()
        assert released == []
        clock.advance(0.1)
    assert released == [True]
    assert not watch.holding


async def test_the_switch_releases_waiting_checks_at_once() -> None:
    watch = follower()
    watch.on_event(0, "+try-failover", "master mymaster 10.0.1.1 6379")
    released: list[bool] = []

    async def check() -> None:
        await watch.wait_until_settled()
        released.append(True)

    async with anyio.create_task_group() as group:
        group.start_soon(check)
        group.start_soon(check)
        await anyio.wait_all_tasks_blocked()
        assert released == []
        watch.on_event(2, "+switch-master", "mymaster 10.0.1.1 6379 10.0.1.2 6379")
    assert released == [True, True]


async def test_only_sentinel_master_clients_get_a_follower() -> None:
    plain = types.SimpleNamespace(connection_pool=types.SimpleNamespace())
    assert SentinelFollower.for_client(plain) is None
    manager = types.SimpleNamespace(sentinels=[_sentinel(*SENTINELS[0])])
    replica_pool = types.SimpleNamespace(
        sentinel_manager=manager, is_master=False, service_name="mymaster"
    )
    assert SentinelFollower.for_client(types.SimpleNamespace(connection_pool=replica_pool)) is None
    master_pool = types.SimpleNamespace(
        sentinel_manager=manager, is_master=True, service_name="mymaster"
    )
    found = SentinelFollower.for_client(types.SimpleNamespace(connection_pool=master_pool))
    assert found is not None
    assert found.sentinels == [SENTINELS[0]]
    assert found.service_name == "mymaster"
