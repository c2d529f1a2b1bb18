"""Redis URL parsing and client construction (scalekit._redis), no server needed."""

from __future__ import annotations

import ssl
from urllib.parse import quote

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


@pytest.mark.parametrize(
    "password",
    ["S3CR#ETPW", "ABC?DEFSECRET", "123/SECRETPART", "AB/CDSECRET", "12#3", "ZK9/QX+W=="],
)
def test_a_password_with_reserved_characters_is_never_quoted_in_an_error(password: str) -> None:
    # Pasted unencoded, a "/", "?" or "#" ends the host part: pieces of the
    # password became the port, the db or an option, and their error messages
    # (start-up logs) quoted them: "port must be a number, got 's3cr'".
    for url in (
        f"redis://user:{password}@cache.internal:6379/0",
        f"redis+sentinel://:{password}@s1:26379/mymaster",
        f"rediss+cluster://:{password}@n1:7000",
    ):
        with pytest.raises(_redis.RedisURLError, match="percent-encode the password") as caught:
            parse_url(url)
        for piece in (password[i : i + 3] for i in range(len(password) - 2)):
            assert piece not in str(caught.value), url
    encoded = f"redis://user:{quote(password, safe='')}@cache.internal:6379/0"
    assert parse_url(encoded).password == password


def test_an_at_sign_in_an_option_is_not_a_password() -> None:
    assert parse_url("redis://h:1/0?client_name=app@eu").client_options == {"client_name": "app@eu"}


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


# -- URL options: every one redis-py takes, checked and converted ---------------


def test_tls_options_reach_the_connections() -> None:
    # Regression: ssl_ca_certs, ssl_cert_reqs, health_check_interval … were
    # silently dropped, so with a private CA every call failed.
    import redis.asyncio.connection

    url = (
        "rediss://h:6380/0?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required"
        "&ssl_certfile=/etc/c.pem&ssl_keyfile=/etc/k.pem&ssl_check_hostname=false"
        "&ssl_min_version=TLSv1_2&health_check_interval=15&client_name=api"
        "&socket_keepalive=yes&max_connections=20&protocol=3"
    )
    client = from_url(url)
    pool = client.connection_pool
    assert pool.connection_class is redis.asyncio.connection.SSLConnection
    kwargs = pool.connection_kwargs
    assert kwargs["ssl_ca_certs"] == "/etc/ca.pem"
    assert kwargs["ssl_cert_reqs"] == "required"
    assert (kwargs["ssl_certfile"], kwargs["ssl_keyfile"]) == ("/etc/c.pem", "/etc/k.pem")
    assert kwargs["ssl_check_hostname"] is False
    assert kwargs["ssl_min_version"] is ssl.TLSVersion.TLSv1_2
    assert kwargs["health_check_interval"] == 15.0
    assert kwargs["client_name"] == "api"
    assert kwargs["socket_keepalive"] is True
    assert kwargs["protocol"] == 3
    assert pool.max_connections == 20


def test_sync_clients_get_the_same_options() -> None:
    client = sync_from_url("rediss://h:6380/0?ssl_ca_certs=/etc/ca.pem&health_check_interval=5")
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["ssl_ca_certs"] == "/etc/ca.pem"
    assert kwargs["health_check_interval"] == 5.0


def test_url_options_win_over_keyword_arguments() -> None:
    client = from_url("redis://h/0?socket_timeout=0.5", socket_timeout=3.0)
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 0.5


def test_sentinel_passes_options_to_servers_and_tls_to_sentinels() -> None:
    client = from_url(
        "rediss+sentinel://s1:26379/mymaster?ssl_ca_certs=/ca.pem&health_check_interval=2"
    )
    pool = client.connection_pool
    assert pool.connection_kwargs["ssl_ca_certs"] == "/ca.pem"
    assert pool.connection_kwargs["health_check_interval"] == 2.0
    sentinel = pool.sentinel_manager.sentinels[0]
    assert sentinel.connection_pool.connection_kwargs["ssl_ca_certs"] == "/ca.pem"


def test_cluster_options() -> None:
    parsed = parse_url(
        "rediss+cluster://n1:7000?require_full_coverage=false&ssl_ca_certs=/ca.pem"
        "&reinitialize_steps=3"
    )
    assert parsed.client_options == {
        "require_full_coverage": False,
        "ssl_ca_certs": "/ca.pem",
        "reinitialize_steps": 3,
    }


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "redis://h/0?ssl_ca_cert=/ca.pem",
            r"'ssl_ca_cert' is not known; did you mean 'ssl_ca_certs'",
        ),
        ("redis://h/0?socket_timout=1", r"did you mean 'socket_timeout'"),
        ("redis://h/0?frobnicate=1", r"'frobnicate' is not known Known options: .*socket_timeout"),
        ("redis://h/0?require_full_coverage=no", r"a Cluster option"),
        ("redis://h/0?ssl_ca_certs=/ca.pem", r"ssl_ca_certs needs TLS: use a rediss:// scheme"),
        ("redis://h/0?socket_timeout=fast", r"socket_timeout must be a number of seconds"),
        ("redis://h/0?socket_timeout=-1", r"socket_timeout must be a number of seconds >= 0"),
        ("redis://h/0?socket_timeout=nan", r"socket_timeout must be a number of seconds"),
        ("redis://h/0?health_check_interval=", r"health_check_interval must be a number"),
        ("redis://h/0?retries=two", r"retries must be a whole number"),
        ("redis://h/0?max_connections=0", r"max_connections must be >= 1"),
        ("redis://h/0?socket_keepalive=maybe", r"socket_keepalive must be true or false"),
        ("redis://h/0?protocol=4", r"protocol must be 2 or 3"),
        ("rediss://h/0?ssl_cert_reqs=always", r"ssl_cert_reqs must be none, optional or required"),
        ("rediss://h/0?ssl_min_version=SSLv2", r"ssl_min_version must be one of TLSv1"),
        ("rediss://h/0?ssl_include_verify_flags=NOPE", r"not an ssl.VerifyFlags name"),
        ("redis://h/0?decode_responses=true", r"decode_responses is not supported: .*raw bytes"),
        ("rediss+cluster://n1:7000?ssl_password=x", r"ssl_password is not supported by redis-py"),
    ],
)
def test_bad_options_are_config_errors_naming_them(url: str, message: str) -> None:
    from scalekit.errors import ConfigurationError

    with pytest.raises(_redis.RedisURLError, match=message) as caught:
        parse_url(url)
    assert isinstance(caught.value, ConfigurationError)
    assert isinstance(caught.value, ValueError)


def test_bad_options_fail_before_any_client_is_built() -> None:
    with pytest.raises(ValueError, match="ssl_ca_cert"):
        from_url("rediss://h/0?ssl_ca_cert=/ca.pem")


def test_verify_flags_and_tls_versions_convert() -> None:
    parsed = parse_url(
        "rediss://h/0?ssl_include_verify_flags=VERIFY_X509_STRICT,VERIFY_X509_PARTIAL_CHAIN"
        "&ssl_min_version=1.3"
    )
    assert parsed.client_options["ssl_include_verify_flags"] == [
        ssl.VerifyFlags.VERIFY_X509_STRICT,
        ssl.VerifyFlags.VERIFY_X509_PARTIAL_CHAIN,
    ]
    assert parsed.client_options["ssl_min_version"] is ssl.TLSVersion.TLSv1_3


def test_every_documented_option_is_taken_by_redis_py() -> None:
    import inspect

    import redis.asyncio

    accepted = set(inspect.signature(redis.asyncio.Redis.__init__).parameters)
    for group, names in _redis.URL_OPTIONS.items():
        if group.startswith("cluster"):
            continue
        assert set(names) - {"retries"} <= accepted, group


def test_default_timeouts_tolerate_a_busy_host() -> None:
    assert 0.1 <= _redis.DEFAULT_SOCKET_TIMEOUT <= 0.25
    assert 0.1 <= _redis.DEFAULT_CONNECT_TIMEOUT <= 1.0


def test_two_databases_in_one_url_is_an_error() -> None:
    assert parse_url("redis://h/3?db=3").db == 3
    assert parse_url("redis://h?db=5").db == 5
    with pytest.raises(_redis.RedisURLError, match=r"two databases \(/3 and \?db=4\)"):
        parse_url("redis://h/3?db=4")


def test_blocking_cluster_client_refuses_options_redis_py_would_drop() -> None:
    # redis-py's blocking RedisCluster silently ignores health_check_interval.
    with pytest.raises(_redis.RedisURLError, match="health_check_interval are not supported"):
        sync_from_url("redis+cluster://127.0.0.1:1?health_check_interval=5")
