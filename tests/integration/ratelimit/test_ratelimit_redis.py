"""RateLimitMiddleware on a real redis-server: round trips, atomicity, outages."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import limits
import pytest
from harness import CountingProxy, RedisServer
from rl_integration_helpers import client, command_calls, make_app

from scalekit._breaker import CircuitBreaker
from scalekit._clock import ManualClock
from scalekit.ratelimit import (
    LimitCheck,
    MemoryRateLimitBackend,
    RateLimitMiddleware,
    RedisRateLimitBackend,
    Rule,
    header,
    identity_tag,
)

pytestmark = pytest.mark.anyio

CLIENT = identity_tag("ip:203.0.113.7")  # the hash tag of the test client's counters


@pytest.fixture(scope="module", autouse=True)
def _command_stats(redis_server: RedisServer) -> Iterator[None]:
    redis_server.client().config_resetstat()
    yield
    calls = command_calls(redis_server)
    assert "keys" not in calls
    assert "scan" not in calls


@pytest.fixture
async def proxied(
    redis_server: RedisServer, counting_proxy: Any
) -> AsyncIterator[tuple[CountingProxy, str]]:
    redis_server.flushall()
    proxy = counting_proxy(redis_server.host, redis_server.port)
    # generous: these tests count round trips, and one timed out under CPU
    # load would fail open instead (outage tests set their own short timeout)
    return proxy, proxy.url_for(redis_server.url) + "?socket_timeout=2"


def middleware(storage: str, rules: list[Rule], **kwargs: Any) -> RateLimitMiddleware:
    # Windows read the test's clock, not Redis' TIME: an exact count must not
    # depend on where the wall clock falls in a window (a burst that crossed a
    # minute boundary under CPU load let an 11th request through 10/minute).
    kwargs.setdefault("clock", ManualClock(wall=WINDOW_START))
    return RateLimitMiddleware(make_app(), storage, rules, **kwargs)


WINDOW_START = 1_700_000_040.0  # the first second of a minute: an epoch-aligned window starts


async def test_one_round_trip_per_request_with_headers(
    proxied: tuple[CountingProxy, str],
) -> None:
    proxy, url = proxied
    app = middleware(url, [Rule("1000/minute")])
    try:
        async with client(app) as http:
            await http.get("/")  # loads the script (EVALSHA -> NOSCRIPT -> EVAL)
            proxy.reset()
            for _ in range(20):
                response = await http.get("/")
                assert response.status_code == 200
                assert "ratelimit" in response.headers
            assert proxy.round_trips == 20
    finally:
        await app.aclose()


async def test_two_rules_on_one_identity_cost_one_round_trip(
    proxied: tuple[CountingProxy, str],
) -> None:
    proxy, url = proxied
    rules = [
        Rule("10/second;1000/hour", name="api"),
        Rule("50/minute", path="/items/{id}", name="items"),
        Rule("5/minute", path="/login", count="failures", name="login"),
    ]
    app = middleware(url, rules)
    try:
        async with client(app) as http:
            await http.get("/items/1")
            proxy.reset()
            for i in range(5):
                assert (await http.get(f"/items/{i}")).status_code == 200
            assert proxy.round_trips == 5
            proxy.reset()
            assert (await http.post("/login?ok=1")).status_code == 200
            assert proxy.round_trips == 2  # a success is refunded by one more call
            assert (await http.post("/login?ok=0")).status_code == 401
            assert proxy.round_trips == 3  # a failure stays counted: nothing more
    finally:
        await app.aclose()


async def test_a_rejected_request_changes_no_counter(redis_server: RedisServer) -> None:
    redis_server.flushall()
    rules = [Rule("100/minute", name="wide"), Rule("2/minute", path="/items/{id}", name="narrow")]
    for strategy in ("fixed-window", "sliding-window-counter", "moving-window"):
        app = middleware(
            redis_server.url + "?socket_timeout=2",
            rules,
            strategy=strategy,
            key_prefix=f"rl-{strategy}",
        )
        try:
            async with client(app) as http:
                assert (await http.get("/items/1")).status_code == 200
                assert (await http.get("/items/2")).status_code == 200
                redis = redis_server.client()
                short = strategy.split("-")[0]
                keys = [
                    f"rl-{strategy}:{CLIENT}:wide:100/60:{short}",
                    f"rl-{strategy}:{CLIENT}:narrow:2/60:{short}",
                ]
                before = {key: redis.dump(key) for key in keys}
                assert all(before.values())
                for _ in range(5):
                    assert (await http.get("/items/3")).status_code == 429
                assert {key: redis.dump(key) for key in keys} == before
                redis.close()
        finally:
            await app.aclose()


@pytest.mark.parametrize("strategy", ["fixed", "sliding", "moving"])
async def test_redis_script_agrees_with_limits_and_memory(
    redis_server: RedisServer, strategy: str
) -> None:
    redis_server.flushall()
    backend = RedisRateLimitBackend(redis_server.url + "?socket_timeout=2")
    memory = MemoryRateLimitBackend()
    item = limits.parse("5/10 seconds")
    # odd milliseconds: limits' float arithmetic and the script's integer
    # milliseconds agree except exactly on boundaries, which real time never hits
    steps = [0, 0.251, 0.497, 1.003, 0, 0, 0.263, 2.011, 4.493, 0.257, 0.509, 7.519, 0, 0]
    steps = ([*steps, 0.003, 1.517, 1.021, 0.249]) * 3
    now = 1_700_000_003.013
    try:
        for step in steps:
            now += step
            check = LimitCheck("{t}:k", strategy, item.amount, item.get_expiry())
            ours = await backend.check([check], at=now)
            reference = await memory.check([check], at=now)
            assert ours.allowed == reference.allowed
            assert [r.remaining for r in ours.results] == [r.remaining for r in reference.results]
    finally:
        await backend.aclose()


async def test_the_window_follows_redis_clock_not_the_app_host(redis_server: RedisServer) -> None:
    redis_server.flushall()
    backend = RedisRateLimitBackend(redis_server.url + "?socket_timeout=2")
    try:
        verdict = await backend.check([LimitCheck("{t}:clock", "sliding", 5, 60)])
        seconds, micros = redis_server.client().time()
        assert abs(verdict.at - (seconds + micros / 1e6)) < 5
        stored = redis_server.client().hget("{t}:clock", "w")
        assert int(stored) == int(verdict.at * 1000) // 60_000
    finally:
        await backend.aclose()


async def test_script_cache_flushed_is_reloaded_in_one_call(
    proxied: tuple[CountingProxy, str], redis_server: RedisServer
) -> None:
    proxy, url = proxied
    app = middleware(url, [Rule("3/minute")])
    try:
        async with client(app) as http:
            assert (await http.get("/")).status_code == 200
            redis_server.client().script_flush()
            proxy.reset()
            assert (await http.get("/")).status_code == 200
            assert proxy.round_trips == 2  # EVALSHA -> NOSCRIPT, then EVAL
            assert (await http.get("/")).status_code == 200
            assert (await http.get("/")).status_code == 429
    finally:
        await app.aclose()


async def test_redis_killed_fail_open_fail_closed_then_restarted(
    redis_server: RedisServer,
) -> None:
    redis_server.flushall()
    rules = [
        Rule("2/minute", path="/", name="open"),
        Rule("2/minute", path="/other", on_backend_error="deny", name="closed"),
    ]
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown=5.0, clock=clock)
    app = middleware(redis_server.url + "?socket_timeout=2", rules, breaker=breaker, clock=clock)
    try:
        async with client(app) as http:
            assert (await http.get("/")).status_code == 200
            redis_server.kill()
            statuses = [(await http.get("/")).status_code for _ in range(30)]
            assert statuses == [200] * 30
            for _ in range(5):
                closed = await http.get("/other")
                assert closed.status_code == 503
                assert closed.json()["error"] == "rate_limit_unavailable"
                # the breaker's probe tries Redis every second
                assert closed.headers["retry-after"] == "1"
                assert closed.json()["retry_after"] == 1
            redis_server.start()  # an empty Redis: no scripts, no counters
            clock.advance(5.0)
            assert (await http.get("/")).status_code == 200  # the breaker's trial closes it
            assert (await http.get("/")).status_code == 200
            assert (await http.get("/")).status_code == 429
            assert (await http.get("/other")).status_code == 200
    finally:
        await app.aclose()


async def test_frozen_redis_breaker_lets_one_call_per_cooldown(
    redis_server: RedisServer, counting_proxy: Any
) -> None:
    redis_server.flushall()
    proxy = counting_proxy(redis_server.host, redis_server.port)
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown=5.0, clock=clock)
    app = middleware(proxy.url_for(redis_server.url), [Rule("100/minute")], breaker=breaker)
    try:
        async with client(app) as http:
            assert (await http.get("/")).status_code == 200
            redis_server.freeze()
            proxy.reset()
            started = time.monotonic()
            for _ in range(20):
                assert (await http.get("/")).status_code == 200
            assert proxy.round_trips == 3  # until the breaker opened
            for _ in range(3):
                clock.advance(5.0)
                proxy.reset()
                for _ in range(10):
                    assert (await http.get("/")).status_code == 200
                assert proxy.round_trips <= 2  # the trial, and the probe's one PING
            # each call that reached Redis cost one socket timeout, no more
            assert time.monotonic() - started < 10
    finally:
        redis_server.thaw()
        await app.aclose()


async def test_concurrent_checks_share_a_pipeline_and_stay_exact(
    proxied: tuple[CountingProxy, str], redis_server: RedisServer
) -> None:
    proxy, url = proxied
    backend = RedisRateLimitBackend(url)  # the fixture's URL has a generous timeout
    check = LimitCheck("{batch}:k", "fixed", 30, 60)
    try:
        await backend.check([check])
        redis_server.client().script_flush()  # the batch meets NOSCRIPT
        proxy.reset()
        verdicts = await asyncio.gather(*[backend.check([check]) for _ in range(50)])
        assert sum(verdict.allowed for verdict in verdicts) == 29
        assert proxy.round_trips == 2  # one write of all 50; SCRIPT LOAD + the 50 again
        remaining = sorted(verdict.results[0].remaining for verdict in verdicts if verdict.allowed)
        assert remaining == list(range(29))
    finally:
        await backend.aclose()


def test_no_keys_or_scan_commands(redis_server: RedisServer) -> None:
    """What the module ran so far (the fixture checks again after the last test)."""
    calls = command_calls(redis_server)
    assert calls.get("evalsha", 0) > 0  # counted since the restart above
    assert "keys" not in calls
    assert "scan" not in calls


async def test_failures_only_login_rule_on_redis(redis_server: RedisServer) -> None:
    redis_server.flushall()
    login = Rule("5/15 minutes", path="/login", methods=["POST"], count="failures", name="login")
    app = middleware(redis_server.url + "?socket_timeout=2", [login], strategy="fixed-window")
    key = f"rl:{CLIENT}:login:5/900:fixed"
    redis = redis_server.client()
    try:
        async with client(app) as http:
            for _ in range(20):
                assert (await http.post("/login?ok=1")).status_code == 200
            assert int(redis.hget(key, "c")) == 0  # every success was refunded
            for _ in range(5):
                assert (await http.post("/login?ok=0")).status_code == 401
            assert int(redis.hget(key, "c")) == 5
            limited = await http.post("/login?ok=0")
            assert limited.status_code == 429
            assert limited.json()["error"] == "rate_limited"
            assert (await http.post("/login?ok=1")).status_code == 429
            assert int(redis.hget(key, "c")) == 5  # rejected attempts are not counted
    finally:
        redis.close()
        await app.aclose()


async def test_concurrent_failures_never_pass_the_limit_on_redis(redis_server: RedisServer) -> None:
    # Consumed on admission, refunded on success: with 3 failures counted, a
    # burst of 10 concurrent failures lets exactly 2 more through (it let up to
    # 10 through when failures were only counted after the response).
    redis_server.flushall()
    login = Rule("5/15 minutes", path="/login", count="failures", name="login")
    app = middleware(redis_server.url + "?socket_timeout=2", [login], strategy="fixed-window")
    key = f"rl:{CLIENT}:login:5/900:fixed"
    redis = redis_server.client()
    try:
        async with client(app) as http:
            for _ in range(3):
                assert (await http.post("/login?ok=0")).status_code == 401
            statuses = await asyncio.gather(*[http.post("/login?ok=0") for _ in range(10)])
            assert [response.status_code for response in statuses].count(401) == 2
            assert int(redis.hget(key, "c")) == 5
            assert (await http.post("/login?ok=0")).status_code == 429
    finally:
        redis.close()
        await app.aclose()


@pytest.mark.parametrize("strategy", ["fixed", "sliding", "moving"])
async def test_a_refund_after_its_window_is_over_gives_nothing_back_on_redis(
    redis_server: RedisServer, strategy: str
) -> None:
    # A success of a long request is refunded at its admission's timestamp; a
    # fixed window that started after it lost one hit to that refund.
    backend = RedisRateLimitBackend(redis_server.url + "?socket_timeout=2")
    key = f"refund-window:{strategy}"
    start = WINDOW_START + 59
    try:
        admitted = await backend.check([LimitCheck(key, strategy, 5, 60)], at=start)
        for moment in (start + 71, start + 72, start + 73):
            assert (await backend.check([LimitCheck(key, strategy, 5, 60)], at=moment)).allowed
        peek = LimitCheck(key, strategy, 5, 60, mode="peek")
        before = (await backend.check([peek], at=start + 74)).results[0].remaining
        await backend.check([LimitCheck(key, strategy, 5, 60, mode="refund")], at=admitted.at)
        assert (await backend.check([peek], at=start + 74)).results[0].remaining == before == 2
    finally:
        await backend.aclose()


async def test_spoofed_forwarded_for_on_redis(redis_server: RedisServer) -> None:
    redis_server.flushall()
    app = middleware(redis_server.url + "?socket_timeout=2", [Rule("10/minute")])
    try:
        async with client(app, peer="198.51.100.9") as http:
            statuses = [
                (
                    await http.get("/", headers={"X-Forwarded-For": f"10.1.{i // 250}.{i % 250}"})
                ).status_code
                for i in range(1000)
            ]
        assert statuses.count(200) == 10
    finally:
        await app.aclose()
    proxied = middleware(
        redis_server.url + "?socket_timeout=2",
        [Rule("2/minute")],
        trusted_proxies=["127.0.0.1"],
        key_prefix="rl-proxied",
    )
    try:
        async with client(proxied, peer="127.0.0.1") as http:
            for forwarded in ("203.0.113.1", "203.0.113.2"):
                for _ in range(2):
                    headers = {"X-Forwarded-For": forwarded}
                    assert (await http.get("/", headers=headers)).status_code == 200
            headers = {"X-Forwarded-For": "203.0.113.1"}
            assert (await http.get("/", headers=headers)).status_code == 429
    finally:
        await proxied.aclose()


async def test_a_client_sent_forwarded_header_is_not_a_new_identity_on_redis(
    redis_server: RedisServer,
) -> None:
    # behind nginx, which appends to X-Forwarded-For and passes the client's
    # Forwarded header through, every request with a fresh Forwarded was a new client
    redis_server.flushall()
    app = middleware(
        redis_server.url + "?socket_timeout=2", [Rule("10/minute")], trusted_proxies=["127.0.0.1"]
    )
    try:
        async with client(app, peer="127.0.0.1") as http:
            statuses = [
                (
                    await http.get(
                        "/",
                        headers={
                            "Forwarded": f"for=10.1.{i // 250}.{i % 250}",
                            "X-Forwarded-For": "203.0.113.50",
                        },
                    )
                ).status_code
                for i in range(100)
            ]
        assert statuses.count(200) == 10
    finally:
        await app.aclose()


async def test_redis_keys_hold_a_digest_of_the_identity(redis_server: RedisServer) -> None:
    redis_server.flushall()
    app = middleware(
        redis_server.url + "?socket_timeout=2",
        [Rule("2/minute", key=header("X-API-Key"), name="api")],
        strategy="fixed-window",
    )
    redis = redis_server.client()
    try:
        async with client(app) as http:
            for _ in range(5):
                await http.get("/", headers={"X-API-Key": "{victim}"})
            attackers = ["vic}tim", "{{victim}}", "victim}", "{victim"]
            for attacker in attackers:
                await http.get("/", headers={"X-API-Key": attacker})
            assert (await http.get("/", headers={"X-API-Key": "victim"})).status_code == 200
        victim = identity_tag("header:x-api-key:victim")
        assert re.fullmatch(r"\{[0-9a-f]{32}\}", victim)
        assert int(redis.hget(f"rl:{victim}:api:2/60:fixed", "c")) == 1
        assert (
            int(redis.hget(f"rl:{identity_tag('header:x-api-key:{victim}')}:api:2/60:fixed", "c"))
            == 2
        )
        keys = {f"rl:{identity_tag('header:x-api-key:' + key)}:api:2/60:fixed" for key in attackers}
        assert redis.exists(*keys) == 4
        assert redis.dbsize() == 6
    finally:
        redis.close()
        await app.aclose()


async def test_redis_windows_follow_the_injected_clock(redis_server: RedisServer) -> None:
    # Without an injected clock the script read Redis' TIME, so a test could
    # neither place its burst inside one window nor move to the next one.
    redis_server.flushall()
    clock = ManualClock(wall=WINDOW_START + 30)  # half way through a minute
    app = middleware(redis_server.url, [Rule("10/minute")], clock=clock)
    try:
        async with client(app) as http:
            statuses = [(await http.get("/")).status_code for _ in range(12)]
            assert statuses == [200] * 10 + [429] * 2
            clock.advance(60.0)  # half way through the next: the last minute weighs 1/2
            statuses = [(await http.get("/")).status_code for _ in range(7)]
            assert statuses == [200] * 5 + [429] * 2
            clock.advance(120.0)
            assert (await http.get("/")).headers["ratelimit"] == '"default";r=9;t=30'
    finally:
        await app.aclose()
