"""The real-server harness works: replication, cluster slots, failover, restarts, proxy."""

from __future__ import annotations

import pymysql
import pytest
import redis
import redis.asyncio
from harness import CountingProxy, MariaDBReplication, RedisCluster, RedisSentinel, RedisServer


def _rows(conn: pymysql.connections.Connection, sql: str) -> list[tuple]:
    with conn.cursor() as cursor:
        cursor.execute(sql)
        return list(cursor.fetchall())


def _execute(conn: pymysql.connections.Connection, sql: str) -> None:
    with conn.cursor() as cursor:
        cursor.execute(sql)


# -- Redis -----------------------------------------------------------------


def test_redis_server_stop_start_kill_freeze(redis_server: RedisServer) -> None:
    port = redis_server.port
    with redis_server.client(socket_timeout=0.5) as client:
        client.set("harness:key", "v")
        redis_server.stop()
        assert redis_server.pid is None
        with pytest.raises(redis.ConnectionError):
            client.ping()
        redis_server.start()
        assert redis_server.port == port
        assert client.ping()

        redis_server.kill()
        redis_server.start()
        assert client.ping()

        redis_server.freeze()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        redis_server.thaw()
        assert client.ping()
    assert redis_server.url == f"redis://127.0.0.1:{port}/0"


def test_cluster_keys_land_on_the_node_owning_their_slot(redis_cluster: RedisCluster) -> None:
    keys = [f"harness:slot:{i}" for i in range(30)]
    with redis_cluster.client() as client:
        for key in keys:
            client.set(key, key)
    owners = set()
    for key in keys:
        node = redis_cluster.node_for_key(key)
        owners.add(node.port)
        with node.client() as direct:
            assert direct.get(key) == key.encode()
    assert len(owners) == 3
    ports = ",".join(f"127.0.0.1:{n.port}" for n in redis_cluster.nodes)
    assert redis_cluster.url == f"redis+cluster://{ports}"


def test_cluster_node_stop_and_start(redis_cluster: RedisCluster) -> None:
    node = redis_cluster.nodes[1]
    node.stop()
    node.start()
    with node.client() as direct:
        assert direct.ping()
        assert direct.cluster("info")["cluster_state"] == "ok"
    key = next(
        f"harness:restart:{i}"
        for i in range(1000)
        if redis_cluster.node_for_key(f"harness:restart:{i}") is node
    )
    with redis_cluster.client() as client:
        client.set(key, "back")
        assert client.get(key) == b"back"


def test_sentinel_failover_promotes_the_replica(redis_sentinel: RedisSentinel) -> None:
    old_master, old_replica = redis_sentinel.master, redis_sentinel.replica
    with old_master.client() as client:
        client.set("harness:failover", "kept")
        assert client.wait(1, 5000) == 1

    killed = redis_sentinel.kill_master()
    new_address = redis_sentinel.wait_for_failover(timeout=30)

    assert killed is old_master
    assert new_address == (old_replica.host, old_replica.port)
    for sentinel in redis_sentinel.sentinels:
        assert sentinel.master_address() == new_address
    assert redis_sentinel.master is old_replica
    with old_replica.client() as client:
        assert client.info("replication")["role"] == "master"
        assert client.get("harness:failover") == b"kept"

    redis_sentinel.heal()
    assert redis_sentinel.replica is old_master
    assert old_master.info("replication")["master_port"] == old_replica.port


def test_sentinel_factory_gives_a_fresh_setup(redis_sentinel_factory) -> None:
    setup = redis_sentinel_factory()
    ports = ",".join(f"127.0.0.1:{s.port}" for s in setup.sentinels)
    assert setup.url == f"redis+sentinel://{ports}/mymaster"
    assert setup.master_address() == (setup.master.host, setup.master.port)
    assert setup.replica.info("replication")["role"] == "slave"


# -- MariaDB ---------------------------------------------------------------


def test_write_on_primary_is_read_on_replica(mariadb_replication: MariaDBReplication) -> None:
    db = mariadb_replication
    with db.primary.app_connect() as conn:
        _execute(conn, "DROP TABLE IF EXISTS harness_rw")
        _execute(conn, "CREATE TABLE harness_rw (id INT PRIMARY KEY, v VARCHAR(20))")
        _execute(conn, "INSERT INTO harness_rw VALUES (1, 'one')")
    db.wait_caught_up(timeout=10)
    with db.replica.app_connect() as conn:
        assert _rows(conn, "SELECT id, v FROM harness_rw") == [(1, "one")]
        with pytest.raises(pymysql.err.OperationalError, match="read-only"):
            _execute(conn, "INSERT INTO harness_rw VALUES (2, 'two')")


def test_app_user_privileges(mariadb_replication: MariaDBReplication) -> None:
    db = mariadb_replication
    with db.primary.app_connect(db=None) as conn:
        _execute(conn, "CREATE DATABASE IF NOT EXISTS scalekit_shard_0")
        _execute(conn, "DROP DATABASE scalekit_shard_0")
    with db.replica.app_connect() as conn:
        (status,) = _rows(conn, "SHOW SLAVE STATUS")
        assert "Yes" in status
        _rows(conn, "SELECT COUNT(*) FROM performance_schema.events_statements_summary_by_digest")
        assert _rows(conn, "SHOW PROCESSLIST")
    assert db.primary.url.startswith("mysql://app:")
    assert db.primary.url.endswith(f"@127.0.0.1:{db.primary.port}/scalekit_test")


def test_paused_replication_lags_then_catches_up(mariadb_replication: MariaDBReplication) -> None:
    db = mariadb_replication
    with db.primary.app_connect() as conn:
        _execute(conn, "DROP TABLE IF EXISTS harness_lag")
        _execute(conn, "CREATE TABLE harness_lag (id INT PRIMARY KEY)")
    db.wait_caught_up(timeout=10)

    db.stop_replication(only="sql")
    with db.primary.app_connect() as conn:
        _execute(conn, "INSERT INTO harness_lag VALUES (1)")
    assert db.replication_status()["Slave_SQL_Running"] == "No"
    with db.replica.app_connect() as conn:
        assert _rows(conn, "SELECT id FROM harness_lag") == []
    db.start_replication()
    db.wait_caught_up(timeout=10)
    with db.replica.app_connect() as conn:
        assert _rows(conn, "SELECT id FROM harness_lag") == [(1,)]

    db.set_delay(60)
    with db.primary.app_connect() as conn:
        _execute(conn, "INSERT INTO harness_lag VALUES (2)")
    assert db.replication_status()["SQL_Delay"] == 60
    with pytest.raises(TimeoutError):
        db.wait_caught_up(timeout=1)
    db.clear_delay()
    db.wait_caught_up(timeout=10)
    with db.replica.app_connect() as conn:
        assert _rows(conn, "SELECT id FROM harness_lag ORDER BY id") == [(1,), (2,)]


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_mariadb_servers_restart_and_replication_resumes(
    mariadb_replication: MariaDBReplication, how: str
) -> None:
    db = mariadb_replication
    with db.primary.app_connect() as conn:
        _execute(conn, f"DROP TABLE IF EXISTS harness_restart_{how}")
        _execute(conn, f"CREATE TABLE harness_restart_{how} (id INT PRIMARY KEY)")
    for server, row in ((db.primary, 1), (db.replica, 2)):
        port = server.port
        getattr(server, how)()
        assert server.pid is None
        server.start()
        assert server.port == port
        with server.app_connect() as conn:
            assert _rows(conn, "SELECT 1") == [(1,)]
        with db.primary.app_connect() as conn:
            _execute(conn, f"INSERT INTO harness_restart_{how} VALUES ({row})")
        db.wait_replicating(timeout=30)
        db.wait_caught_up(timeout=30)
    with db.replica.app_connect() as conn:
        assert _rows(conn, f"SELECT id FROM harness_restart_{how} ORDER BY id") == [(1,), (2,)]


# -- CountingProxy ---------------------------------------------------------


def test_proxy_counts_a_pipeline_as_one_round_trip(
    redis_server: RedisServer, counting_proxy
) -> None:
    proxy: CountingProxy = counting_proxy(redis_server.host, redis_server.port)
    with redis.Redis.from_url(proxy.url_for(redis_server.url)) as client:
        client.ping()
        proxy.reset()
        with client.pipeline(transaction=False) as pipe:
            for i in range(10):
                pipe.set(f"harness:pipe:{i}", i)
            pipe.execute()
        assert proxy.round_trips == 1
        proxy.reset()
        for i in range(10):
            client.get(f"harness:pipe:{i}")
        assert proxy.round_trips == 10


@pytest.mark.anyio
async def test_proxy_works_with_an_async_client(redis_server: RedisServer, counting_proxy) -> None:
    proxy: CountingProxy = counting_proxy(redis_server.host, redis_server.port)
    client = redis.asyncio.Redis.from_url(proxy.url_for(redis_server.url))
    try:
        await client.ping()
        proxy.reset()
        async with client.pipeline(transaction=True) as pipe:
            for _ in range(10):
                pipe.incr("harness:async")
            await pipe.execute()
        assert proxy.round_trips == 1
    finally:
        await client.aclose()


def test_proxy_drop_after_response_leaves_one_row(
    mariadb_replication: MariaDBReplication, counting_proxy
) -> None:
    primary = mariadb_replication.primary
    with primary.app_connect() as conn:
        _execute(conn, "DROP TABLE IF EXISTS harness_drop")
        _execute(conn, "CREATE TABLE harness_drop (id INT AUTO_INCREMENT PRIMARY KEY)")
    proxy: CountingProxy = counting_proxy(
        primary.host, primary.port, drop_after_response_to=lambda sent: b"INSERT" in sent
    )
    assert proxy.url_for(primary.url) == primary.url.replace(str(primary.port), str(proxy.port))
    conn = pymysql.connect(
        host=proxy.host,
        port=proxy.port,
        user=mariadb_replication.app_user,
        password=mariadb_replication.app_password,
        database=mariadb_replication.database,
        autocommit=True,
    )
    try:
        with pytest.raises(pymysql.err.OperationalError):
            _execute(conn, "INSERT INTO harness_drop () VALUES ()")
    finally:
        if conn.open:
            conn.close()
    assert proxy.drops == 1
    with primary.app_connect() as conn:
        assert _rows(conn, "SELECT COUNT(*) FROM harness_drop") == [(1,)]
