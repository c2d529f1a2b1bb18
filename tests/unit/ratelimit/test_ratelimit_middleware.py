"""RateLimitMiddleware on the memory backend with an injected clock."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import http_sfv
import pytest
from fastapi import FastAPI
from redis import exceptions as redis_exceptions
from rl_helpers import client, make_app

from scalekit import events
from scalekit._breaker import CircuitBreaker
from scalekit._clock import ManualClock
from scalekit.ratelimit import (
    LimitCheck,
    MemoryRateLimitBackend,
    RateLimitConfigError,
    RateLimitMiddleware,
    RateLimitUnavailable,
    RedisRateLimitBackend,
    Rule,
    Verdict,
    header,
)

pytestmark = pytest.mark.anyio


def field(value: str) -> tuple[str, dict[str, Any]]:
    parsed = http_sfv.List()
    parsed.parse(value.encode())
    assert len(parsed) == 1
    return parsed[0].value, dict(parsed[0].params)


def limiter(
    rules: list[Rule], clock: ManualClock | None = None, **kwargs: Any
) -> RateLimitMiddleware:
    return RateLimitMiddleware(
        make_app(), "memory://", rules, clock=clock or ManualClock(), **kwargs
    )


async def test_headers_parse_as_structured_fields_through_a_window() -> None:
    clock = ManualClock(wall=1_700_000_040.0)  # 40 s into a minute
    app = limiter([Rule("3/minute", name="api")], clock, strategy="fixed-window")
    async with client(app) as http:
        seen = []
        for _ in range(3):
            response = await http.get("/")
            assert response.status_code == 200
            assert "retry-after" not in response.headers
            assert field(response.headers["ratelimit-policy"]) == ("api", {"q": 3, "w": 60})
            name, params = field(response.headers["ratelimit"])
            seen.append((name, params["r"], params["t"]))
            clock.advance(10)
        assert seen == [("api", 2, 60), ("api", 1, 50), ("api", 0, 40)]
        limited = await http.get("/")
        assert limited.status_code == 429
        _, params = field(limited.headers["ratelimit"])
        assert params == {"r": 0, "t": 30}
        assert int(limited.headers["retry-after"]) >= params["t"]
        body = limited.json()
        assert body["error"] == "rate_limited"
        assert body["retry_after"] == int(limited.headers["retry-after"])
        assert "api" in body["detail"]
        clock.advance(30)
        assert (await http.get("/")).status_code == 200


@pytest.mark.parametrize("strategy", ["fixed-window", "sliding-window-counter", "moving-window"])
async def test_retry_after_is_never_earlier_than_t_and_is_honest(strategy: str) -> None:
    clock = ManualClock(wall=1_700_000_007.0)
    app = limiter([Rule("5/10 seconds")], clock, strategy=strategy)
    async with client(app) as http:
        for _ in range(5):
            assert (await http.get("/")).status_code == 200
            clock.advance(0.5)
        limited = await http.get("/")
        assert limited.status_code == 429
        _, params = field(limited.headers["ratelimit"])
        retry_after = int(limited.headers["retry-after"])
        assert retry_after >= params["t"] >= 1
        clock.advance(retry_after)
        assert (await http.get("/")).status_code == 200


async def test_two_rules_one_rejecting_consume_nothing() -> None:
    clock = ManualClock()
    backend = MemoryRateLimitBackend(clock=clock)
    app = RateLimitMiddleware(
        make_app(),
        backend,
        [Rule("100/minute", name="wide"), Rule("2/minute", path="/items/{id}", name="narrow")],
        clock=clock,
        strategy="fixed-window",
    )
    async with client(app) as http:
        assert (await http.get("/items/1")).status_code == 200
        assert (await http.get("/items/2")).status_code == 200
        for _ in range(10):
            assert (await http.get("/items/3")).status_code == 429
        # the wide rule saw 2 hits, not 12: the rejected requests consumed nothing
        response = await http.get("/other")
        assert field(response.headers["ratelimit"]) == ("wide", {"r": 97, "t": 60})


async def test_headers_describe_the_most_restrictive_rule() -> None:
    app = limiter([Rule("100/minute", name="wide"), Rule("10/minute", name="narrow", path="/")])
    async with client(app) as http:
        response = await http.get("/")
        assert field(response.headers["ratelimit-policy"]) == ("narrow", {"q": 10, "w": 60})
        assert field(response.headers["ratelimit"])[1]["r"] == 9


async def test_legacy_headers_are_opt_in_and_unmatched_requests_untouched() -> None:
    app = limiter([Rule("5/minute", path="/")], legacy_headers=True, strategy="fixed-window")
    async with client(app) as http:
        response = await http.get("/")
        assert response.headers["x-ratelimit-limit"] == "5"
        assert response.headers["x-ratelimit-remaining"] == "4"
        assert response.headers["x-ratelimit-reset"] == "60"
        other = await http.get("/other")
        assert "ratelimit" not in other.headers
    plain = limiter([Rule("5/minute")])
    async with client(plain) as http:
        assert "x-ratelimit-limit" not in (await http.get("/")).headers
    quiet = limiter([Rule("5/minute")], headers=False)
    async with client(quiet) as http:
        assert "ratelimit" not in (await http.get("/")).headers


async def test_failures_only_login_rule() -> None:
    clock = ManualClock()
    login = Rule("5/15 minutes", path="/login", methods=["POST"], count="failures", name="login")
    app = limiter([login], clock)
    async with client(app) as http:
        for _ in range(20):
            assert (await http.post("/login?ok=1")).status_code == 200
        for _ in range(5):
            assert (await http.post("/login?ok=0")).status_code == 401
        assert (await http.post("/login?ok=0")).status_code == 429
        assert (await http.post("/login?ok=1")).status_code == 429
        clock.advance(15 * 60 * 2)
        assert (await http.post("/login?ok=1")).status_code == 200


@pytest.mark.parametrize(("outcome", "status"), [("0", 401), ("1", 200)])
async def test_requests_in_flight_never_pass_a_failures_limit(outcome: str, status: int) -> None:
    # Checked only and counted after a failure, 50 concurrent guesses (a slow
    # password hash: they all overlap) all found the window open: 50 admitted
    # under 5/15 minutes. Consumed on admission and refunded on success, an
    # attempt in flight holds its place: exactly 5 get in, failures stay
    # counted, successes give their place back.
    import anyio
    from anyio.lowlevel import checkpoint
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    inside = 0
    release = anyio.Event()

    async def login(request: Request) -> JSONResponse:
        nonlocal inside
        inside += 1
        await release.wait()  # hashing the password: everyone admitted is in here at once
        ok = request.query_params.get("ok") == "1"
        return JSONResponse({"ok": ok}, status_code=200 if ok else 401)

    app = RateLimitMiddleware(
        Starlette(routes=[Route("/login", login, methods=["POST"])]),
        "memory://",
        [Rule("5/15 minutes", path="/login", methods=["POST"], count="failures")],
        clock=ManualClock(),
    )
    statuses: list[int] = []
    async with client(app) as http:

        async def attempt() -> None:
            statuses.append((await http.post(f"/login?ok={outcome}")).status_code)

        async with anyio.create_task_group() as group:
            for _ in range(50):
                group.start_soon(attempt)
            await checkpoint()
            await anyio.wait_all_tasks_blocked()
            assert inside == 5
            assert statuses == [429] * 45
            release.set()
        assert statuses.count(status) == 5
        after = (await http.post(f"/login?ok={outcome}")).status_code
        assert after == (429 if status == 401 else 200)


async def test_an_exception_in_the_app_counts_as_a_failure() -> None:
    app = limiter([Rule("2/minute", path="/boom", count="failures")])
    async with client(app) as http:
        assert (await http.get("/boom")).status_code == 500
        assert (await http.get("/boom")).status_code == 500
        assert (await http.get("/boom")).status_code == 429


async def test_spoofed_forwarded_for_from_an_untrusted_peer_is_one_client() -> None:
    app = limiter([Rule("10/minute")])
    async with client(app, peer="198.51.100.9") as http:
        statuses = [
            (
                await http.get("/", headers={"X-Forwarded-For": f"10.0.{i // 250}.{i % 250}"})
            ).status_code
            for i in range(1000)
        ]
    assert statuses.count(200) == 10


async def test_behind_a_trusted_proxy_clients_are_separate() -> None:
    app = limiter([Rule("2/minute")], trusted_proxies=["127.0.0.1"])
    async with client(app, peer="127.0.0.1") as http:
        for forwarded in ("203.0.113.1", "203.0.113.2"):
            for _ in range(2):
                response = await http.get("/", headers={"X-Forwarded-For": forwarded})
                assert response.status_code == 200
        assert (await http.get("/", headers={"X-Forwarded-For": "203.0.113.1"})).status_code == 429


async def test_a_client_sent_forwarded_header_behind_a_trusted_proxy_is_ignored() -> None:
    # nginx appends the client to X-Forwarded-For and passes the client's own
    # Forwarded header through: a fresh Forwarded per request was a fresh identity
    app = limiter([Rule("10/minute")], trusted_proxies=["127.0.0.1"])
    async with client(app, peer="127.0.0.1") as http:
        statuses = [
            (
                await http.get(
                    "/",
                    headers={"Forwarded": f"for=10.0.0.{i}", "X-Forwarded-For": "203.0.113.1"},
                )
            ).status_code
            for i in range(30)
        ]
    assert statuses.count(200) == 10


@pytest.mark.parametrize(
    ("forwarded_header", "carrier", "ignored"),
    [
        ("forwarded", "Forwarded", "X-Forwarded-For"),
        ("x-real-ip", "X-Real-IP", "X-Forwarded-For"),
        ("X-Forwarded-For", "X-Forwarded-For", "Forwarded"),
    ],
)
async def test_the_client_address_comes_from_the_configured_header(
    forwarded_header: str, carrier: str, ignored: str
) -> None:
    def value(name: str, address: str) -> str:
        return f'for="{address}"' if name == "Forwarded" else address

    app = limiter(
        [Rule("2/minute")], trusted_proxies=["127.0.0.1"], forwarded_header=forwarded_header
    )
    async with client(app, peer="127.0.0.1") as http:
        for i in range(5):
            headers = {
                carrier: value(carrier, "203.0.113.1"),
                ignored: value(ignored, f"10.0.0.{i}"),
            }
            expected = 200 if i < 2 else 429
            assert (await http.get("/", headers=headers)).status_code == expected
        other = {carrier: value(carrier, "203.0.113.2")}
        assert (await http.get("/", headers=other)).status_code == 200


async def test_identities_differing_only_in_braces_have_their_own_counters() -> None:
    # keys were built from the identity with braces stripped for the hash tag:
    # "{victim}" and "victim" shared a counter, so one client could lock out another
    app = limiter([Rule("2/minute", key=header("X-API-Key"))])
    async with client(app) as http:
        for _ in range(5):
            await http.get("/", headers={"X-API-Key": "{victim}"})
        for attacker in ("vic}tim", "{{victim}}", "victim}"):
            await http.get("/", headers={"X-API-Key": attacker})
        assert (await http.get("/", headers={"X-API-Key": "victim"})).status_code == 200


async def test_ipv6_clients_are_keyed_by_their_64() -> None:
    app = limiter([Rule("2/minute")])
    async with client(app, peer="2001:db8::1") as http:
        assert (await http.get("/")).status_code == 200
    async with client(app, peer="2001:db8::2") as http:
        assert (await http.get("/")).status_code == 200
    async with client(app, peer="2001:db8:0:0:ffff::3") as http:
        assert (await http.get("/")).status_code == 429
    full = limiter([Rule("1/minute")], ipv6_prefix=None)
    for peer in ("2001:db8::1", "2001:db8::2"):
        async with client(full, peer=peer) as http:
            assert (await http.get("/")).status_code == 200


async def test_rules_on_different_identities_refund_when_a_later_one_rejects() -> None:
    clock = ManualClock()
    app = limiter(
        [
            Rule("3/minute", name="per-ip"),
            Rule("1/minute", name="per-key", key=header("X-API-Key")),
        ],
        clock,
        strategy="fixed-window",
    )
    async with client(app) as http:
        assert (await http.get("/", headers={"X-API-Key": "k"})).status_code == 200
        for _ in range(3):
            assert (await http.get("/", headers={"X-API-Key": "k"})).status_code == 429
        # the per-ip counter was refunded each time: two requests without the key pass
        response = await http.get("/other", headers={"X-API-Key": "other"})
        assert field(response.headers["ratelimit"])[1]["r"] == 0
        assert (await http.get("/", headers={"X-API-Key": "third"})).status_code == 200


async def test_exempt_and_methods() -> None:
    app = limiter(
        [Rule("1/minute", methods=["POST"], exempt=lambda scope: scope["path"] == "/login")]
    )
    async with client(app) as http:
        for _ in range(3):
            assert (await http.get("/")).status_code == 200
            assert (await http.post("/login?ok=1")).status_code == 200


class _BrokenBackend:
    def __init__(self) -> None:
        self.calls = 0

    async def check(self, checks: Sequence[LimitCheck], at: float | None = None) -> Verdict:
        self.calls += 1
        raise RateLimitUnavailable("Redis is down")

    async def aclose(self) -> None:
        pass


async def test_backend_down_fail_open_and_fail_closed_per_rule() -> None:
    clock = ManualClock()
    seen: list[events.Event] = []
    unsubscribe = events.subscribe(seen.append, events.RateLimitDecision, events.DegradedRequest)
    try:
        app = RateLimitMiddleware(
            make_app(),
            _BrokenBackend(),
            [
                Rule("5/minute", path="/", name="root"),
                Rule("5/minute", path="/other", on_backend_error="deny"),
            ],
            clock=clock,
        )
        async with client(app) as http:
            open_response = await http.get("/")
            assert open_response.status_code == 200
            assert "ratelimit" not in open_response.headers
            closed = await http.get("/other")
            assert closed.status_code == 503
            assert closed.json()["error"] == "rate_limit_unavailable"
            assert closed.headers["content-type"] == "application/json"
            # when to come back: a backend without a breaker is tried again at once
            assert closed.headers["retry-after"] == "1"
            assert closed.json()["retry_after"] == 1
    finally:
        unsubscribe()
    assert events.RateLimitDecision("root", "error") in seen
    degraded = [e for e in seen if isinstance(e, events.DegradedRequest)]
    assert degraded == [
        events.DegradedRequest("ratelimit", "fail_open"),
        events.DegradedRequest("ratelimit", "fail_closed"),
    ]


class _DeadRedis:
    """An asyncio Redis client whose every command fails to connect."""

    def __init__(self) -> None:
        self.calls = 0

    async def execute_command(self, *args: Any) -> Any:
        self.calls += 1
        raise redis_exceptions.ConnectionError("Redis is down")

    async def ping(self) -> bool:
        raise redis_exceptions.ConnectionError("Redis is down")

    async def aclose(self) -> None:
        pass


async def test_breaker_lets_one_call_per_cooldown_through() -> None:
    clock = ManualClock()
    dead = _DeadRedis()
    breaker = CircuitBreaker(failure_threshold=3, cooldown=5.0, clock=clock)
    backend = RedisRateLimitBackend(client=dead, batching=False, breaker=breaker)
    seen: list[events.Event] = []
    unsubscribe = events.subscribe(seen.append, events.BackendError, events.DegradedRequest)
    app = RateLimitMiddleware(make_app(), backend, [Rule("5/minute")], clock=clock)
    try:
        assert app.breaker is breaker
        async with client(app) as http:
            for _ in range(20):
                assert (await http.get("/")).status_code == 200
            assert dead.calls == 3
            for _ in range(4):
                clock.advance(5.0)
                for _ in range(10):
                    assert (await http.get("/")).status_code == 200
            assert dead.calls == 3 + 4
    finally:
        unsubscribe()
    # one backend error per failed call, one degraded request per request
    assert sum(isinstance(e, events.BackendError) for e in seen) == 3 + 4
    assert seen.count(events.DegradedRequest("ratelimit", "fail_open")) == 20 + 40


def test_breaker_belongs_to_the_backend() -> None:
    with pytest.raises(RateLimitConfigError, match="pass it to the backend"):
        RateLimitMiddleware(
            make_app(), MemoryRateLimitBackend(), [Rule("5/minute")], breaker=CircuitBreaker()
        )


async def test_decisions_are_events() -> None:
    seen: list[events.Event] = []
    unsubscribe = events.subscribe(seen.append, events.RateLimitDecision)
    try:
        app = limiter([Rule("1/minute", name="api")])
        async with client(app) as http:
            await http.get("/")
            await http.get("/")
    finally:
        unsubscribe()
    assert seen == [
        events.RateLimitDecision("api", "allowed"),
        events.RateLimitDecision("api", "limited"),
    ]


async def test_fastapi_app_works_the_same() -> None:
    api = FastAPI()

    @api.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    api.add_middleware(
        RateLimitMiddleware, storage="memory://", rules=[Rule("2/minute", name="api")]
    )
    async with client(api) as http:
        first = await http.get("/hello")
        assert first.json() == {"hello": "world"}
        assert field(first.headers["ratelimit"])[1]["r"] == 1
        assert (await http.get("/hello")).status_code == 200
        limited = await http.get("/hello")
        assert limited.status_code == 429
        assert limited.json()["error"] == "rate_limited"


def test_an_unknown_forwarded_header_is_a_config_error() -> None:
    with pytest.raises(RateLimitConfigError, match=r"forwarded_header must be one of.*'auto'"):
        limiter([Rule("1/minute")], forwarded_header="auto")
    with pytest.raises(RateLimitConfigError, match=r"10\.0\.0\.0/33"):
        limiter([Rule("1/minute")], trusted_proxies=["10.0.0.0/33"])


def test_invalid_middleware_settings() -> None:
    with pytest.raises(RateLimitConfigError, match="strategy"):
        RateLimitMiddleware(make_app(), "memory://", [], strategy="token-bucket")
    with pytest.raises(RateLimitConfigError, match="on_backend_error"):
        RateLimitMiddleware(make_app(), "memory://", [], on_backend_error="ignore")
    with pytest.raises(RateLimitConfigError, match="unique"):
        RateLimitMiddleware(make_app(), "memory://", [Rule("1/minute"), Rule("2/minute")])
    with pytest.raises(RateLimitConfigError, match="storage"):
        RateLimitMiddleware(make_app(), "mongodb://x", [Rule("1/minute")])


async def test_lifespan_shutdown_closes_the_backend() -> None:
    closed: list[bool] = []

    class _Backend(MemoryRateLimitBackend):
        async def aclose(self) -> None:
            closed.append(True)

    app = RateLimitMiddleware(make_app(), _Backend(), [Rule("1/minute")])
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert closed == [True]
    assert sent[-1]["type"] == "lifespan.shutdown.complete"


async def test_a_user_class_without_identity_is_keyed_by_display_name() -> None:
    # Starlette's docs ask a user class for is_authenticated and display_name
    # only; BaseUser.identity then raises NotImplementedError: every request of
    # a logged-in user was a 500 under a key=user rule.
    from starlette.authentication import BaseUser

    from scalekit.ratelimit import user

    class DocsUser(BaseUser):
        @property
        def is_authenticated(self) -> bool:
            return True

        @property
        def display_name(self) -> str:
            return "alice"

    assert user({"user": DocsUser()}) == "user:alice"
    app = limiter([Rule("2/minute", key=user)])

    async def as_alice(scope: Any, receive: Any, send: Any) -> None:
        scope["user"] = DocsUser()
        await app(scope, receive, send)

    async with client(as_alice) as http:
        assert [(await http.get("/")).status_code for _ in range(3)] == [200, 200, 429]
