"""Redis URL parsing and client construction (scalekit._redis), no server needed."""

from __future__ import annotations

import pytest

from scalekit import _redis
from scalekit._redis import from_url, hash_tag, parse_url, redis_errors, sync_from_url


def test_standalone_url() -> None:
    parsed = parse_url("redis://user:s3cret@cache.internal:6380/2")
    assert parsed.kind == "standalone"
    assert parsed.hosts == (("cache.internal", 6380),)
    assert (parsed.username, parsed.password, parsed.db) == ("user", "s3cret", 2)
    assert not parsed.ssl


def test_defaults() -> None:
    parsed = parse_url("redis://localhost")
    assert parsed.hosts == (("localhost", 6379),)
    assert parsed.db == 0


def test_tls_and_ipv6() -> None:
    parsed = parse_url("rediss://[::1]:6390/1")
    assert parsed.ssl
    assert parsed.hosts == (("::1", 6390),)


def test_sentinel_url_names_the_service() -> None:
    parsed = parse_url("redis+sentinel://:pw@s1:26379,s2:26380/mymaster/3?socket_timeout=0.2")
    assert parsed.kind == "sentinel"
    assert parsed.hosts == (("s1", 26379), ("s2", 26380))
    assert parsed.service_name == "mymaster"
    assert parsed.db == 3
    assert parsed.options == {"socket_timeout": "0.2"}


def test_sentinel_url_without_service_is_an_error() -> None:
    with pytest.raises(ValueError, match="must name the service"):
        parse_url("redis+sentinel://s1:26379")


def test_cluster_url() -> None:
    parsed = parse_url("redis+cluster://n1:7000,n2:7001,n3:7002")
    assert parsed.kind == "cluster"
    assert len(parsed.hosts) == 3


def test_cluster_has_only_db_zero() -> None:
    with pytest.raises(ValueError, match="only database 0"):
        parse_url("redis+cluster://n1:7000/1")


def test_unix_socket_url() -> None:
    parsed = parse_url("unix:///run/redis.sock?db=4")
    assert (parsed.path, parsed.db) == ("/run/redis.sock", 4)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://localhost", "scheme 'http' is not supported"),
        ("redis://localhost:port", "port must be a number"),
        ("redis://localhost/zero", "db must be a whole number"),
    ],
)
def test_malformed_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_url(url)


def test_errors_and_repr_never_show_the_password() -> None:
    parsed = parse_url("redis://u:hunter2@h:1/0")
    assert "hunter2" not in repr(parsed)
    assert "hunter2" not in parsed.redacted
    with pytest.raises(ValueError) as caught:
        parse_url("redis://u:hunter2@h:nope/0")
    assert "hunter2" not in str(caught.value)


def test_from_url_builds_the_right_client_with_short_timeouts() -> None:
    import redis.asyncio
    import redis.asyncio.cluster

    client = from_url("redis://127.0.0.1:1/0")
    assert isinstance(client, redis.asyncio.Redis)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == _redis.DEFAULT_SOCKET_TIMEOUT
    assert kwargs["socket_connect_timeout"] == _redis.DEFAULT_CONNECT_TIMEOUT
    tuned = from_url("redis://127.0.0.1:1/0?socket_timeout=0.5&retries=2")
    assert tuned.connection_pool.connection_kwargs["socket_timeout"] == 0.5


def test_sync_from_url_builds_blocking_clients() -> None:
    import redis
    import redis.sentinel

    assert isinstance(sync_from_url("redis://127.0.0.1:1/0"), redis.Redis)
    sentinel_client = sync_from_url("redis+sentinel://127.0.0.1:1/mymaster")
    assert isinstance(sentinel_client.connection_pool, redis.sentinel.SentinelConnectionPool)


def test_unreachable_server_fails_fast_with_a_redis_error() -> None:
    client = sync_from_url("redis://127.0.0.1:1/0")
    with pytest.raises(redis_errors()):
        client.ping()
    client.close()


def test_hash_tag() -> None:
    assert hash_tag("user:42") == "{user:42}"
    assert hash_tag("a{b}c") == "{abc}"
    assert hash_tag("{}") == "{_}"
