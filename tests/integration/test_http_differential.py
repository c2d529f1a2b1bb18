"""Differential fuzz of the whole HTTP path: authentication, rate limiter, cache, app, real Redis.

Two instances of one app (``AuthenticationMiddleware`` → ``RateLimitMiddleware``
→ ``CacheMiddleware`` → echo endpoints) share one real ``redis-server`` for
their counters and entries. Random requests reach them as they would behind
a load balancer: from a trusted proxy that adds the true client address in
the configured ``forwarded_header`` (sometimes behind a second, CDN hop), or
straight from the client (an untrusted peer). Clients are IPv4, IPv6 in
several spellings (one /64 is one client) and IPv4-mapped IPv6; each may
send its own ``X-Forwarded-For``, ``Forwarded`` (malformed and unbalanced
quotes included) and ``X-Real-IP``. Users authenticate through
``Authorization``, a cookie or ``X-API-Key`` (names with braces and colons
among them) or not at all; hosts, ``root_path``, percent-encoded paths,
repeated and oddly encoded query parameters, GET and HEAD vary too.

Invariants, checked on every request:

- nothing answers 5xx;
- an answer that is not a 429 is the app's own answer to that request (the
  same status and body as an app without cache or limiter gives, but for a
  counter of app runs): so a body only reaches a request with the same host,
  ``root_path``, path, query and identity as the request that produced it;

and on every example (100 requests, so 2,000 requests per run):

- per rule, the requests admitted for one true client (or one user) never
  exceed the rule's limit, whatever headers the client sent;
- a request is refused only when one of its rules is (nearly) used up for
  its true identity: refusals are not caused by another client's traffic.
  Windows never roll: the limiter reads a ``ManualClock`` nobody advances.
"""

from __future__ import annotations

import collections
import json
import uuid
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest
from harness import RedisServer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from scalekit.cache import CacheMiddleware, CacheRule, RedisCache
from scalekit.ratelimit import RateLimitMiddleware, Rule, user
from scalekit.testing import ManualClock

IP_LIMIT = 20
USER_LIMIT = 4
CONCURRENCY = 5
TRUSTED = ["127.0.0.1/32", "10.0.0.0/8"]
PROXY = "127.0.0.1"
CDN = "10.0.0.5"

# (address as a peer or proxy would write it, the client it is): one /64 is one client,
# an IPv4-mapped IPv6 address is its IPv4 client.
CLIENTS = [
    ("203.0.113.7", "v4-a"),
    ("::ffff:203.0.113.7", "v4-a"),
    ("203.0.113.8", "v4-b"),
    ("2001:db8:1::5", "v6-1"),
    ("2001:DB8:1::6", "v6-1"),
    ("2001:db8:1:0:0:0:0:7", "v6-1"),
    ("2001:db8:2::5", "v6-2"),
]
USERS = ["alice", "bob", "{alice}", "alice}", "user:alice", "ip:203.0.113.8"]


class AnyCredential(AuthenticationBackend):
    """Bearer token, then a session cookie, then an API key: the first present wins."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        token = conn.headers.get("authorization", "").removeprefix("Bearer ")
        name = token or conn.cookies.get("session") or conn.headers.get("x-api-key")
        return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None


def make_app(
    runs: list[int],
    *,
    redis_url: str | None = None,
    prefix: str = "",
    clock: ManualClock | None = None,
    forwarded_header: str = "x-forwarded-for",
) -> Starlette:
    async def echo(request: Request) -> JSONResponse:
        runs[0] += 1
        return JSONResponse(
            {
                "host": request.headers.get("host"),
                "forwarded_host": request.headers.get("x-forwarded-host"),
                "root_path": request.scope.get("root_path"),
                "path": request.url.path,
                "query": [
                    (name, request.query_params.getlist(name)) for name in request.query_params
                ],
                "user": request.user.display_name if request.user.is_authenticated else None,
                "run": runs[0],
            },
            # the app reads X-Forwarded-Host, and says so
            headers={"vary": "X-Forwarded-Host"},
        )

    middleware = [Middleware(AuthenticationMiddleware, backend=AnyCredential())]
    if redis_url is not None:
        middleware += [
            Middleware(
                RateLimitMiddleware,
                storage=redis_url + "?socket_timeout=2&socket_connect_timeout=2",
                rules=[
                    Rule(f"{IP_LIMIT}/hour", name="per-ip"),
                    Rule(f"{USER_LIMIT}/hour", path="/mine/{rest:path}", key=user, name="per-user"),
                ],
                trusted_proxies=TRUSTED,
                forwarded_header=forwarded_header,
                clock=clock,
                key_prefix=f"{prefix}rl",
            ),
            Middleware(
                CacheMiddleware,
                backend=RedisCache.from_url(
                    redis_url,
                    prefix=f"{prefix}cache:",
                    clock=clock,
                    socket_timeout=2,
                    socket_connect_timeout=2,
                ),
                rules=[
                    CacheRule("/public/{rest:path}", ttl=600, stale_ttl=600),
                    CacheRule("/mine/{rest:path}", ttl=600, vary_user=True),
                ],
                clock=clock,
            ),
        ]
    routes = [Route("/public/{rest:path}", echo), Route("/mine/{rest:path}", echo)]
    return Starlette(routes=routes, middleware=middleware)


SEGMENTS = st.sampled_from(
    ["x", "a%2Fb", "%41", "A", "caf%C3%A9", "a%20b", "x%3Fy", "7", "%7Balice%7D", "%FF"]
)
QUERY = st.lists(
    st.tuples(
        st.sampled_from(["page", "%70age", "q", "a+b", "a%20b", "%FF", "%FE", "%C3"]),
        st.sampled_from(["1", "2", "%FF", "x+y"]),
    ),
    max_size=4,
)
CREDENTIALS = st.sampled_from(
    [{}, {}]
    + [{"authorization": f"Bearer {name}"} for name in USERS]
    + [{"cookie": f"session={name}"} for name in USERS]
    + [{"x-api-key": name} for name in USERS]
)
SPOOFED_ADDRESS = st.sampled_from(
    [address for address, _ in CLIENTS]
    + ["127.0.0.1", "10.9.9.9", "198.51.100.1", "[2001:db8:3::1]:443", "unknown", "garbage"]
)
SPOOFED_FORWARDED = st.sampled_from(
    [
        "for=198.51.100.1",
        'for="[2001:db8:3::1]:443"',
        'for=198.51.100.2;x="',  # an unbalanced quote meant to swallow the proxy's element
        'for=198.51.100.3;by="a\\"',
        "for=127.0.0.1, for=10.9.9.9",
        "for=unknown",
        'for="',
    ]
)
SPOOFING = st.fixed_dictionaries(
    {},
    optional={
        "x-forwarded-for": st.lists(SPOOFED_ADDRESS, min_size=1, max_size=3).map(", ".join),
        "forwarded": SPOOFED_FORWARDED,
        "x-real-ip": SPOOFED_ADDRESS,
    },
)
REQUESTS = st.fixed_dictionaries(
    {
        "instance": st.integers(0, 1),
        "client": st.sampled_from(CLIENTS),
        "route": st.sampled_from(["proxy", "proxy", "proxy", "cdn", "direct"]),
        "spoofing": SPOOFING,
        "method": st.sampled_from(["GET", "GET", "GET", "HEAD"]),
        "root_path": st.sampled_from(["", "/svc"]),
        "host": st.sampled_from(["a.example", "A.example", "evil.example", "a.example:8080"]),
        "forwarded_host": st.sampled_from([None, None, "evil.example"]),
        "prefix": st.sampled_from(["public", "mine"]),
        "segments": st.lists(SEGMENTS, min_size=1, max_size=2),
        "query": QUERY,
        "credentials": CREDENTIALS,
    }
)
FORWARDED_HEADERS = st.sampled_from(["x-forwarded-for", "forwarded", "x-real-ip"])


def forwarded_element(address: str) -> str:
    return f'for="[{address}]"' if ":" in address else f"for={address}"


def proxied_headers(mode: str, spoofing: dict[str, str], hops: list[str]) -> dict[str, str]:
    """The headers after the proxies in ``hops`` (nearest the client first) each added theirs.

    Like nginx: ``X-Forwarded-For`` gets ``$proxy_add_x_forwarded_for``, ``Forwarded``
    gets ``"$http_forwarded, for=$remote_addr"``, ``X-Real-IP`` is set to
    ``$remote_addr`` (replacing the client's); every other header passes through.
    """
    headers = dict(spoofing)
    for address in hops:
        if mode == "x-forwarded-for":
            sent = headers.get("x-forwarded-for")
            headers["x-forwarded-for"] = f"{sent}, {address}" if sent else address
        elif mode == "forwarded":
            sent = headers.get("forwarded")
            element = forwarded_element(address)
            headers["forwarded"] = f"{sent}, {element}" if sent else element
        elif address == hops[0]:  # x-real-ip: the first proxy sets it, the next keep it
            headers["x-real-ip"] = address
    return headers


def comparable(response: httpx.Response) -> tuple[int, Any]:
    if response.status_code >= 300 or not response.content:
        return response.status_code, None
    body = json.loads(response.content)
    body.pop("run")
    return response.status_code, body


@dataclass
class Tally:
    """Admissions per (rule, identity), the refused requests, what each client sent."""

    admitted: collections.Counter[tuple[str, str]]
    refused: list[list[tuple[str, str]]]
    sent: collections.defaultdict[tuple[str, str], list[str]]

    def story(self, pair: tuple[str, str]) -> str:
        """What the requests counted against ``pair`` carried, for a failure message."""
        return "\n".join(self.sent[pair])


def rule_identities(request: dict[str, Any]) -> list[tuple[str, str]]:
    """The (rule, true identity) pairs a request counts against: the test's own model."""
    client = "ip:" + request["client"][1]
    pairs = [("per-ip", client)]
    if request["prefix"] == "mine":
        credentials = request["credentials"]
        name = next(iter(credentials.values()), "").removeprefix("Bearer ").removeprefix("session=")
        pairs.append(("per-user", "user:" + name if name else client))
    return pairs


async def run_requests(url: str, mode: str, requests: list[dict[str, Any]]) -> None:
    clock = ManualClock()
    prefix = f"d{uuid.uuid4().hex[:8]}:"
    runs = [0]
    instances = [
        make_app(runs, redis_url=url, prefix=prefix, clock=clock, forwarded_header=mode)
        for _ in range(2)
    ]
    reference = make_app([0])
    tally = Tally(collections.Counter(), [], collections.defaultdict(list))

    async def one(request: dict[str, Any]) -> None:
        root = request["root_path"]
        path = f"{root}/{request['prefix']}/" + "/".join(request["segments"])
        query = "&".join(f"{name}={value}" for name, value in request["query"])
        address = request["client"][0]
        headers = {"host": request["host"], **request["credentials"]}
        if request["forwarded_host"]:
            headers["x-forwarded-host"] = request["forwarded_host"]
        if request["route"] == "direct":
            peer = address
            headers.update(request["spoofing"])
        else:
            hops = [address] + ([CDN] if request["route"] == "cdn" else [])
            peer = PROXY
            headers.update(proxied_headers(mode, request["spoofing"], hops))
        target = f"http://{request['host']}{path}" + (f"?{query}" if query else "")
        answers = []
        for app in (instances[request["instance"]], reference):
            transport = httpx.ASGITransport(app=app, root_path=root, client=(peer, 40000))
            async with httpx.AsyncClient(transport=transport) as client:
                answers.append(await client.request(request["method"], target, headers=headers))
        limited, direct = answers
        assert limited.status_code < 500, (request, limited.text)
        pairs = rule_identities(request)
        if limited.status_code == 429:
            tally.refused.append(pairs)
            return
        # checked, not waved through: a rule that missed the request (or a limiter
        # that failed open) would admit it without the RateLimit fields
        assert "ratelimit" in limited.headers, (request, limited.headers)
        for pair in pairs:
            tally.admitted[pair] += 1
            tally.sent[pair].append(f"peer={peer} {sorted(headers.items())}")
        assert comparable(limited) == comparable(direct), (
            request,
            limited.headers.get("cache-status"),
        )

    try:
        for start in range(0, len(requests), CONCURRENCY):
            async with anyio.create_task_group() as group:
                for request in requests[start : start + CONCURRENCY]:
                    group.start_soon(one, request)
    finally:
        for limiter, cache in _components(instances):
            await limiter.aclose()
            await cache.backend.aclose()

    limits = {"per-ip": IP_LIMIT, "per-user": USER_LIMIT}
    for pair, count in tally.admitted.items():
        assert count <= limits[pair[0]], (
            f"forwarded_header={mode}: {pair[1]} admitted {count} times under {pair[0]}:\n"
            + tally.story(pair)
        )
    for pairs in tally.refused:
        # Up to CONCURRENCY - 1 other requests in flight may have held a hit that a
        # rejection elsewhere then refunded: a refusal needs a rule nearly used up.
        assert any(tally.admitted[pair] >= limits[pair[0]] - (CONCURRENCY - 1) for pair in pairs), (
            f"forwarded_header={mode}: refused although "
            f"{[(pair, tally.admitted[pair]) for pair in pairs]}"
        )


def _components(
    instances: list[Starlette],
) -> list[tuple[RateLimitMiddleware, CacheMiddleware]]:
    found = []
    for app in instances:
        layer: Any = app.middleware_stack
        if layer is None:  # never served a request
            continue
        limiter = cache = None
        while layer is not None:
            if isinstance(layer, RateLimitMiddleware):
                limiter = layer
            elif isinstance(layer, CacheMiddleware):
                cache = layer
            layer = getattr(layer, "app", None)
        assert limiter is not None
        assert cache is not None
        found.append((limiter, cache))
    return found


# A failing example is 100 requests: its repr is long, and the assertion says what matters.
@pytest.mark.filterwarnings(
    "ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning"
)
@settings(
    max_examples=20,
    deadline=None,
    # 100-request examples shrink for minutes; the messages name the client and its headers
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(mode=FORWARDED_HEADERS, requests=st.lists(REQUESTS, min_size=100, max_size=100))
def test_no_leak_no_bypass_no_5xx(
    redis_server: RedisServer, mode: str, requests: list[dict[str, Any]]
) -> None:
    anyio.run(run_requests, redis_server.url, mode, requests)
