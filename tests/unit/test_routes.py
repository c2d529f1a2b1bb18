"""The one route matcher (scalekit._routes): rules cover exactly what Starlette routes."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Match, Route, Router
from starlette.types import ASGIApp, Message, Scope

from scalekit._clock import ManualClock
from scalekit._routes import RouteTemplate, RouteTemplateError, route_methods, route_path
from scalekit.cache import CacheConfigError, CacheMiddleware, CacheRule, MemoryCache
from scalekit.ratelimit import RateLimitConfigError, RateLimitMiddleware, Rule

THING = "3f1c7e0a-9b2d-4c5e-8f60-718293a4b5c6"


class Endpoint:
    """A route endpoint that counts the requests the router sent it."""

    def __init__(self) -> None:
        self.runs = 0

    async def handle(self, request: Request) -> PlainTextResponse:
        self.runs += 1
        return PlainTextResponse("ok")


def router(counter: Endpoint) -> Router:
    endpoint = counter.handle
    return Router(
        [
            Route("/api/v1/auth/login", endpoint, methods=["POST"]),
            Route("/items", endpoint),
            Route("/things/{id:uuid}", endpoint),
            Route("/prices/{x:float}", endpoint),
        ]
    )


def scope(method: str, path: str, root_path: str = "") -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "root_path": root_path,
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": ("203.0.113.7", 50000),
        "server": ("testserver", 80),
    }


async def call(app: ASGIApp, method: str, path: str, root_path: str = "") -> dict[str, str]:
    """The status and headers of one request, as a dict (``status`` included)."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope(method, path, root_path), receive, send)
    start = next(message for message in sent if message["type"] == "http.response.start")
    headers = {k.decode().lower(): v.decode() for k, v in start.get("headers", [])}
    return {"status": str(start["status"]), **headers}


def limiter(app: ASGIApp, *rules: Rule) -> RateLimitMiddleware:
    return RateLimitMiddleware(app, "memory://", list(rules), clock=ManualClock())


def cache(app: ASGIApp, *rules: CacheRule) -> CacheMiddleware:
    clock = ManualClock()
    return CacheMiddleware(app, MemoryCache(clock=clock), list(rules), clock=clock)


pytestmark = pytest.mark.filterwarnings("error")


# -- regressions: each escaped its rule before the one matcher ----------------------------


@pytest.mark.anyio
async def test_login_rule_limits_a_path_ending_in_an_encoded_newline() -> None:
    endpoint = Endpoint()
    app = limiter(router(endpoint), Rule("2/minute", path="/api/v1/auth/login", methods=["POST"]))
    path = unquote("/api/v1/auth/login%0A")  # what uvicorn puts in scope["path"]
    statuses = [(await call(app, "POST", path))["status"] for _ in range(3)]
    assert statuses == ["200", "200", "429"]
    assert endpoint.runs == 2  # the router does send it to the login endpoint


@pytest.mark.anyio
async def test_rate_limit_rules_match_under_a_root_path() -> None:
    endpoint = Endpoint()
    app = limiter(router(endpoint), Rule("2/minute", path="/api/v1/auth/login", methods=["POST"]))
    statuses = [
        (await call(app, "POST", "/svc/api/v1/auth/login", root_path="/svc"))["status"]
        for _ in range(3)
    ]
    assert statuses == ["200", "200", "429"]


@pytest.mark.anyio
async def test_cache_rules_match_under_a_root_path() -> None:
    endpoint = Endpoint()
    app = cache(router(endpoint), CacheRule("/items", ttl=60))
    first = await call(app, "GET", "/svc/items", root_path="/svc")
    second = await call(app, "GET", "/svc/items", root_path="/svc")
    assert first["cache-status"] == "scalekit; fwd=miss; stored"
    assert second["cache-status"] == "scalekit; hit"
    assert endpoint.runs == 1


@pytest.mark.anyio
async def test_head_is_limited_by_a_get_rule() -> None:
    endpoint = Endpoint()
    app = limiter(router(endpoint), Rule("2/minute", path="/items", methods=["GET"]))
    statuses = [(await call(app, "HEAD", "/items"))["status"] for _ in range(3)]
    assert statuses == ["200", "200", "429"]
    assert Rule("2/minute", path="/items", methods=["get"]).methods == {"GET", "HEAD"}


@pytest.mark.anyio
async def test_head_is_served_by_a_cache_rule() -> None:
    endpoint = Endpoint()
    app = cache(router(endpoint), CacheRule("/items", ttl=60))
    await call(app, "GET", "/items")
    head = await call(app, "HEAD", "/items")
    assert head["cache-status"] == "scalekit; hit"
    assert endpoint.runs == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("template", "covered", "escaped"),
    [
        ("/things/{id:uuid}", f"/things/{THING}", "/things/not-a-uuid"),
        ("/prices/{x:float}", "/prices/1.5", "/prices/abc"),
    ],
)
async def test_uuid_and_float_templates_match_like_the_router(
    template: str, covered: str, escaped: str
) -> None:
    endpoint = Endpoint()
    limited = limiter(router(endpoint), Rule("1/minute", path=template))
    assert [(await call(limited, "GET", covered))["status"] for _ in range(2)] == ["200", "429"]
    # Not routed by Starlette (404), so not covered by the rule either.
    assert (await call(limited, "GET", escaped))["status"] == "404"
    assert (await call(limited, "GET", escaped))["status"] == "404"

    cached = cache(router(endpoint), CacheRule(template, ttl=60))
    await call(cached, "GET", covered)
    assert (await call(cached, "GET", covered))["cache-status"] == "scalekit; hit"
    assert "cache-status" not in await call(cached, "GET", escaped)


def test_parameters_are_converted_as_the_router_converts_them() -> None:
    assert CacheRule("/things/{id:uuid}", ttl=1).match(f"/things/{THING.upper()}") == {
        "id": uuid.UUID(THING)
    }
    assert CacheRule("/n/{n:int}", ttl=1).match("/n/007") == {"n": 7}
    rule = CacheRule("/n/{n:int}", ttl=1, tags=["n:{n}"])
    assert rule.tags_for({"n": 7}, None, lambda: None) == ("n:7",)


# -- construction ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("items", "must start with '/'"),
        ("/x/{id:nope}", "unknown converter 'nope'"),
        ("/x/{a}/{a:int}", "Duplicated param name a"),
    ],
)
def test_templates_starlette_rejects_are_config_errors(template: str, message: str) -> None:
    with pytest.raises(RouteTemplateError, match=message):
        RouteTemplate(template)
    with pytest.raises(CacheConfigError, match=message):
        CacheRule(template, ttl=1)
    with pytest.raises(RateLimitConfigError, match=message):
        Rule("1/minute", path=template)


class HexConvertor(Convertor[int]):
    regex = "[0-9a-f]+"

    def convert(self, value: str) -> int:
        return int(value, 16)

    def to_string(self, value: int) -> str:
        return f"{value:x}"


def test_registered_custom_converters_are_used() -> None:
    register_url_convertor("scalekit_test_hex", HexConvertor())
    template = RouteTemplate("/h/{n:scalekit_test_hex}")
    assert template.match("/h/ff") == {"n": 255}
    assert template.match("/h/zz") is None


class FussyConvertor(Convertor[str]):
    regex = "[a-z]+"

    def convert(self, value: str) -> str:
        if value == "bad":
            raise ValueError("no")
        return value

    def to_string(self, value: str) -> str:
        return value


def test_a_converter_that_raises_covers_nothing() -> None:
    # Starlette's router raises on it, so no endpoint runs behind the rule.
    register_url_convertor("scalekit_test_fussy", FussyConvertor())
    template = RouteTemplate("/f/{v:scalekit_test_fussy}")
    assert template.match("/f/good") == {"v": "good"}
    assert template.match("/f/bad") is None


def test_route_methods_follow_starlette() -> None:
    assert route_methods(None) is None
    assert route_methods(["get", "post"]) == {"GET", "HEAD", "POST"}
    assert route_methods(["POST"]) == {"POST"}


# -- differential: every rule matches exactly what a Starlette Route routes -------------------

_LITERALS = st.sampled_from(
    ["api", "v1", "a.b", "login", "x-y", "caf\u00e9", "sp ace", "%", "a+b", "_", ""]
)
_PARAMS = st.builds(
    lambda name, converter: "{" + name + converter + "}",
    st.sampled_from(["id", "n", "rest"]),
    st.sampled_from(["", ":str", ":path", ":int", ":float", ":uuid"]),
)


@st.composite
def templates(draw: st.DrawFn) -> str:
    segments = draw(st.lists(st.one_of(_LITERALS, _PARAMS), min_size=0, max_size=4))
    names = [segment for segment in segments if segment.startswith("{")]
    # Starlette rejects a repeated parameter name; those are tested above.
    seen: set[str] = set()
    unique = []
    for segment in segments:
        name = segment[1:].split(":")[0].rstrip("}") if segment in names else None
        if name is not None and name in seen:
            continue
        if name is not None:
            seen.add(name)
        unique.append(segment)
    return "/" + "/".join(unique) + draw(st.sampled_from(["", "/"]))


_PIECES = st.sampled_from(
    [
        "api", "v1", "a.b", "aXb", "login", "x-y", "caf%C3%A9", "caf\u00e9", "sp%20ace",
        "%25", "a+b", "_", "", "42", "007", "1.5", "1.", "-3", THING, THING.upper(),
        "%0A", "%0D", "%00", "%09", "\n", "%2F", "%2f", "..", ".",
    ]
)  # fmt: skip


@st.composite
def requests(draw: st.DrawFn, template: str) -> tuple[str, str]:
    """A ``(path, root_path)`` pair as a server would put them in the scope.

    Half of the raw paths are the template with its parameters filled in (so
    many of them match), half are made of random pieces.
    """
    if draw(st.booleans()):
        raw = template
        for name in ("id", "n", "rest"):
            for converter in ("", ":str", ":path", ":int", ":float", ":uuid"):
                field = "{" + name + converter + "}"
                if field in raw:
                    filler = draw(st.lists(_PIECES, min_size=1, max_size=2).map("/".join))
                    raw = raw.replace(field, filler)
    else:
        raw = "/" + "/".join(draw(st.lists(_PIECES, min_size=0, max_size=5)))
    raw += draw(st.sampled_from(["", "", "/", "//", "%0A", "\n", "%0D", "x"]))
    path = unquote(raw)  # servers percent-decode the path
    root_path = draw(st.sampled_from(["", "/svc", "/svc/", "/sv"]))
    prefixed = draw(st.booleans())
    return (root_path + path if prefixed else path), root_path


async def _endpoint(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")  # pragma: no cover


@settings(max_examples=600, deadline=None)
@given(
    template=templates(),
    data=st.data(),
    methods=st.sampled_from([None, ["GET"], ["POST"]]),
    method=st.sampled_from(["GET", "HEAD", "POST"]),
)
def test_rules_match_exactly_what_a_starlette_route_routes(
    template: str, data: st.DataObject, methods: list[str] | None, method: str
) -> None:
    path, root_path = data.draw(requests(template))
    http: dict[str, Any] = {"type": "http", "path": path, "root_path": root_path}
    route = Route(template, _endpoint, methods=methods or ["GET", "HEAD", "POST"])
    routed, _ = route.matches({**http, "method": method})
    path_routed = routed is not Match.NONE

    assert (RouteTemplate(template).match(path, root_path) is not None) is path_routed
    assert (CacheRule(template, ttl=1).match(path, root_path) is not None) is path_routed
    rule = Rule("1/minute", path=template, methods=methods, name="rule")
    assert rule.matches(method, path, root_path) is (routed is Match.FULL)


@pytest.mark.parametrize(
    ("path", "root_path", "expected"),
    [
        ("/svc/health", "/svc", "/health"),
        ("/svchealth", "/svc", "/svchealth"),
        ("/svc", "/svc", ""),
        ("/health", "/svc", "/health"),
        ("/health", "", "/health"),
    ],
)
def test_route_path_strips_root_path_as_the_router_does(
    path: str, root_path: str, expected: str
) -> None:
    assert route_path({"type": "http", "path": path, "root_path": root_path}) == expected
