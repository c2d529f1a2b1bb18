"""scalekit._redis connects to real standalone, Sentinel and Cluster servers from URLs."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from scalekit._redis import from_url, redis_errors, sync_from_url

pytestmark = pytest.mark.anyio


async def test_standalone(redis_server: Any) -> None:
    client = from_url(redis_server.url)
    try:
        await client.set("scalekit:standalone", b"1")
        assert await client.get("scalekit:standalone") == b"1"
    finally:
        await client.aclose()


def test_standalone_sync(redis_server: Any) -> None:
    client = sync_from_url(redis_server.url)
    try:
        assert client.ping()
    finally:
        client.close()


async def test_cluster_routes_keys_to_their_slot_owner(redis_cluster: Any) -> None:
    client = from_url(redis_cluster.url, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        for index in range(30):
            await client.set(f"scalekit:cluster:{index}", str(index))
        for index in range(30):
            key = f"scalekit:cluster:{index}"
            owner = redis_cluster.node_for_key(key)
            direct = owner.client()
            try:
                assert direct.get(key) == str(index).encode()
            finally:
                direct.close()
    finally:
        await client.aclose()


async def test_sentinel_client_follows_a_failover(redis_sentinel: Any) -> None:
    url = redis_sentinel.url + "?socket_timeout=0.5&socket_connect_timeout=0.5"
    client = from_url(url)
    try:
        await client.set("scalekit:sentinel", b"before")
        old_master_port = redis_sentinel.master.port
        redis_sentinel.kill_master()
        redis_sentinel.wait_for_failover(timeout=30)
        # The client rediscovers the master through the sentinels when it next
        # connects; a command on a connection to the dead master fails first.
        # Polling here waits for an external server's switch, not for our code.
        written = False
        with anyio.fail_after(30):
            while not written:
                try:
                    await client.set("scalekit:sentinel", b"after")
                    written = True
                except redis_errors():
                    await anyio.sleep(0.2)
        _host, port = await client.connection_pool.get_master_address()
        assert port != old_master_port
        assert await client.get("scalekit:sentinel") == b"after"
    finally:
        await client.aclose()


def test_sentinel_sync_client(redis_sentinel: Any) -> None:
    client = sync_from_url(redis_sentinel.url + "?socket_timeout=0.5")
    try:
        client.set("scalekit:sentinel:sync", b"1")
        assert client.get("scalekit:sentinel:sync") == b"1"
        assert client.connection_pool.get_master_address()[1] == redis_sentinel.master.port
    finally:
        client.close()
