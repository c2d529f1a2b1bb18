"""Per-route limits and caching declared on the route, feeding install()'s middleware.

Issue 12, "Per-route configuration where the route is written", points 7, 8, 9.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Security
from fastapi.security import APIKeyHeader
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route

from scalekit import ConfigurationError, Settings, Stack, install
from scalekit.cache import CacheRule
from scalekit.fastapi import cached, limit, limited
from scalekit.ratelimit import Rule, user

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def serve(app: Starlette, root_path: str = "") -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, root_path=root_path)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


def api_app(**install_kwargs: object) -> FastAPI:
    """/api/search limited by a dependency, /api/items and POST /api/search not."""
    router = APIRouter(prefix="/api")

    @router.get("/search", dependencies=[Depends(limit("3/minute"))])
    async def search() -> dict[str, str]:
        return {"route": "search"}

    @router.post("/search")
    async def save_search() -> dict[str, str]:
        return {"route": "save"}

    @router.get("/items")
    async def items() -> dict[str, str]:
        return {"route": "items"}

    app = FastAPI()
    app.include_router(router)  # before or after install(): both work
    install(app, registry=CollectorRegistry(), **install_kwargs)  # type: ignore[arg-type]
    return app


# -- 7. a dependency limit takes its path from the route


@pytest.mark.parametrize("root_path", ["", "/svc"])
async def test_a_dependency_limit_under_a_router_prefix_limits_exactly_that_route(
    root_path: str,
) -> None:
    app = api_app()
    async with serve(app, root_path=root_path) as client:
        codes = [(await client.get(f"{root_path}/api/search")).status_code for _ in range(4)]
        others = {(await client.get(f"{root_path}/api/items")).status_code for _ in range(10)}
        posts = {(await client.post(f"{root_path}/api/search")).status_code for _ in range(10)}
    assert codes == [200, 200, 200, 429]
    assert others == {200}
    assert posts == {200}


async def test_a_router_included_after_install_is_read_at_start_up() -> None:
    app = FastAPI()
    install(app, registry=CollectorRegistry())
    router = APIRouter(prefix="/api")

    @router.get("/search", dependencies=[Depends(limit("1/minute"))])
    async def search() -> dict[str, str]:
        return {}

    app.include_router(router)
    async with serve(app) as client:
        codes = [(await client.get("/api/search")).status_code for _ in range(2)]
    assert codes == [200, 429]


async def test_declared_and_middleware_rules_send_the_same_headers() -> None:
    declared = api_app()
    plain = FastAPI()

    @plain.get("/api/search")
    async def search() -> dict[str, str]:
        return {"route": "search"}

    install(plain, registry=CollectorRegistry(), rate_rules=[Rule("3/minute", path="/api/search")])
    answers = []
    for app in (declared, plain):
        async with serve(app) as client:
            answers.append([await client.get("/api/search") for _ in range(4)])
    for one, other in zip(*answers, strict=True):
        assert one.status_code == other.status_code
        assert one.headers["ratelimit-policy"] == other.headers["ratelimit-policy"]
        assert (
            one.headers["ratelimit"].split(";t=")[0] == other.headers["ratelimit"].split(";t=")[0]
        )
    assert answers[0][0].headers["ratelimit-policy"] == '"/api/search";q=3;w=60'


async def test_a_declared_limit_replaces_the_default_rule_on_its_route() -> None:
    app = FastAPI()

    @app.get("/search", dependencies=[Depends(limit("100/minute"))])
    async def search() -> dict[str, str]:
        return {}

    @app.get("/other")
    async def other() -> dict[str, str]:
        return {}

    install(app, Settings(rate_limit="2/minute"), registry=CollectorRegistry())
    async with serve(app) as client:
        searches = {(await client.get("/search")).status_code for _ in range(10)}
        others = [(await client.get("/other")).status_code for _ in range(3)]
    assert searches == {200}
    assert others == [200, 200, 429]


async def test_starlette_decorators_under_a_mount() -> None:
    @limited("2/minute", name="search")
    async def search(request: Request) -> PlainTextResponse:
        return PlainTextResponse("found")

    runs = {"count": 0}

    @cached(ttl=60, tags=["item:{item_id}"])
    async def item(request: Request) -> JSONResponse:
        runs["count"] += 1
        return JSONResponse({"item": request.path_params["item_id"], "run": runs["count"]})

    app = Starlette(
        routes=[
            Mount(
                "/v1",
                routes=[Route("/search", search), Route("/items/{item_id:int}", item)],
            )
        ]
    )
    stack = install(app, registry=CollectorRegistry())
    async with serve(app) as client:
        codes = [(await client.get("/v1/search")).status_code for _ in range(3)]
        first = await client.get("/v1/items/7")
        hit = await client.get("/v1/items/7")
        await stack.cache.invalidate("item:7")
        again = await client.get("/v1/items/7")
    assert codes == [200, 200, 429]
    assert first.headers["cache-status"].startswith("scalekit; fwd=miss")
    assert hit.headers["cache-status"] == "scalekit; hit"
    assert hit.json() == first.json()
    assert again.json()["run"] == 2


async def test_a_fastapi_cached_route_with_invalidation_after_a_write() -> None:
    app = FastAPI()
    tasks: list[str] = []

    @app.get("/tasks")
    @cached(ttl=60, tags=["tasks"])
    async def list_tasks() -> list[str]:
        return list(tasks)

    @app.post("/tasks")
    async def add_task(request: Request) -> list[str]:
        tasks.append("t")
        await Stack.of(request).cache.invalidate("tasks")
        return tasks

    install(app, registry=CollectorRegistry())
    async with serve(app) as client:
        assert (await client.get("/tasks")).json() == []
        assert (await client.get("/tasks")).headers["cache-status"] == "scalekit; hit"
        await client.post("/tasks")
        assert (await client.get("/tasks")).json() == ["t"]


def test_a_rate_that_does_not_parse_fails_where_it_is_written() -> None:
    with pytest.raises(ConfigurationError, match="'5/fortnight'"):
        limit("5/fortnight")


@pytest.mark.parametrize(
    ("declare", "message"),
    [
        (lambda: limit("5/minute", count="failure"), r"count must be 'all' or 'failures'"),
        (lambda: limit("5/minute", cost=6), r"cost 6 is more than the limit 5/minute"),
        (lambda: limit("5/minute", on_backend_error="open"), r"'allow', 'deny' or None"),
        (lambda: limit("5/minute", key="user"), r"key must be client_ip, user"),
        (lambda: limited("5/minute", count="failure"), r"count must be 'all' or 'failures'"),
        (lambda: cached(ttl="60"), r"@cached: ttl must be > 0 seconds"),  # type: ignore[arg-type]
        (lambda: cached(ttl=60, statuses=[99]), r"statuses must be HTTP statuses"),
        (lambda: cached(ttl=60, max_body=-1), r"max_body must be a whole number"),
    ],
)
def test_every_declared_argument_fails_where_it_is_written(
    declare: Callable[[], object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        declare()


async def test_a_declaration_that_makes_a_bad_rule_names_the_route() -> None:
    app = FastAPI()

    @app.get("/items/{item_id}", name="item")
    @cached(ttl=60, tags=["item:{nope}"])
    async def item(item_id: int) -> dict[str, int]:
        return {}

    install(app, registry=CollectorRegistry())
    with pytest.raises(ConfigurationError, match=r"@cached on APIRoute\('/items/\{item_id\}'"):
        async with serve(app):
            pass


# -- 8. a path rule that matches no route is a start-up error


@pytest.mark.parametrize(
    ("rule", "closest"),
    [
        (Rule("5/minute", path="/api/serach"), "/api/search"),
        (Rule("5/minute", path="/search"), "/api/search"),  # the forgotten prefix
        (CacheRule("/api/item", ttl=60), "/api/items"),
    ],
)
async def test_a_path_rule_matching_no_route_fails_start_up_naming_the_closest(
    rule: Rule | CacheRule, closest: str
) -> None:
    kwargs = {"cache_rules": [rule]} if isinstance(rule, CacheRule) else {"rate_rules": [rule]}
    app = api_app(**kwargs)
    with pytest.raises(ConfigurationError, match=f"matches no route.*closest route is '{closest}'"):
        async with serve(app):
            pass


async def test_path_rules_that_cover_routes_pass() -> None:
    async def static(scope: object, receive: object, send: object) -> None:
        raise AssertionError("not called")

    app = api_app(
        rate_rules=[
            Rule("5/minute", path="/api/{rest:path}"),
            Rule("5/minute", path="/static/app.js"),  # served by a mounted sub-app
        ],
        cache_rules=[CacheRule("/api/items", ttl=60)],
    )
    app.mount("/static", static)  # type: ignore[arg-type]
    async with serve(app) as client:
        assert (await client.get("/api/items")).status_code == 200


async def test_a_typo_behind_a_catch_all_still_fails_and_the_check_can_be_off() -> None:
    def spa_app(**kwargs: object) -> FastAPI:
        app = FastAPI()

        @app.get("/api/search")
        async def search() -> dict[str, str]:
            return {}

        @app.get("/{full_path:path}")
        async def spa(full_path: str) -> str:
            return "spa"

        install(
            app,
            registry=CollectorRegistry(),
            rate_rules=[Rule("5/minute", path="/api/serach")],
            **kwargs,  # type: ignore[arg-type]
        )
        return app

    with pytest.raises(ConfigurationError, match="closest route is '/api/search'"):
        async with serve(spa_app()):
            pass
    async with serve(spa_app(check_paths=False)) as client:
        assert (await client.get("/api/search")).status_code == 200


async def test_without_the_lifespan_the_first_request_prepares_and_checks() -> None:
    app = api_app(rate_rules=[Rule("5/minute", path="/api/serach")])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with pytest.raises(ConfigurationError, match="matches no route"):
            await client.get("/api/items")
        assert (await client.get("/health/live")).status_code == 200


# -- 9. one identity hook for the cache and the limiter, from a JWT dependency

SECRET = b"test-secret"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token_for(subject: str) -> str:
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": subject}).encode())
    signature = hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def decode(authorization: str | None) -> str | None:
    """The one JWT decoder: the dependency and the identity hook both use it."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    head, body, signature = authorization.removeprefix("Bearer ").split(".")
    expected = hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(b64(expected), signature):
        return None
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return str(claims["sub"])


async def current_user(authorization: Annotated[str | None, Header()] = None) -> str:
    subject = decode(authorization)
    if subject is None:
        raise HTTPException(401, "not authenticated")
    return subject


def jwt_app() -> tuple[FastAPI, dict[str, int]]:
    app = FastAPI()
    runs = {"count": 0}

    @app.get("/me/tasks", dependencies=[Depends(limit("3/minute", key=user))])
    @cached(ttl=60, vary_user=True, tags=["user:{user}:tasks"])
    async def my_tasks(me: Annotated[str, Depends(current_user)]) -> dict[str, object]:
        runs["count"] += 1
        return {"owner": me, "secret": f"{me}'s tasks", "run": runs["count"]}

    install(
        app,
        registry=CollectorRegistry(),
        identity=lambda request: decode(request.headers.get("authorization")),
    )
    return app, runs


async def test_a_cached_route_with_a_jwt_identity_never_serves_one_users_body_to_another() -> None:
    app, runs = jwt_app()
    alice = {"authorization": f"Bearer {token_for('alice')}"}
    bob = {"authorization": f"Bearer {token_for('bob')}"}
    forged = {"authorization": f"Bearer {token_for('alice')[:-2]}xx"}
    async with serve(app) as client:
        first = await client.get("/me/tasks", headers=alice)
        for_bob = await client.get("/me/tasks", headers=bob)
        alice_hit = await client.get("/me/tasks", headers=alice)
        anonymous = await client.get("/me/tasks")
        with_forgery = await client.get("/me/tasks", headers=forged)
    assert first.json()["owner"] == "alice"
    assert for_bob.json()["owner"] == "bob"
    assert "alice" not in for_bob.text
    assert alice_hit.headers["cache-status"] == "scalekit; hit"
    assert alice_hit.json() == first.json()
    assert anonymous.status_code == 401
    assert "alice" not in anonymous.text
    assert with_forgery.status_code == 401
    assert "alice" not in with_forgery.text
    assert runs["count"] == 2


async def test_the_identity_hook_keys_the_limiter_per_user() -> None:
    app, _ = jwt_app()
    alice = {"authorization": f"Bearer {token_for('alice')}"}
    bob = {"authorization": f"Bearer {token_for('bob')}"}
    async with serve(app) as client:
        alice_codes = [(await client.get("/me/tasks", headers=alice)).status_code for _ in range(4)]
        bob_code = (await client.get("/me/tasks", headers=bob)).status_code
    assert alice_codes == [200, 200, 200, 429]
    assert bob_code == 200


async def test_an_async_identity_hook() -> None:
    app = FastAPI()

    @app.get("/who")
    @cached(ttl=60, vary_user=True)
    async def who(request: Request) -> dict[str, str | None]:
        return {"user": request.headers.get("x-user")}

    async def identity(request: Request) -> str | None:
        return request.headers.get("x-user")

    install(app, registry=CollectorRegistry(), identity=identity)
    async with serve(app) as client:
        ann = await client.get("/who", headers={"x-user": "ann"})
        ben = await client.get("/who", headers={"x-user": "ben"})
        nobody = await client.get("/who")
    assert ann.json() == {"user": "ann"}
    assert ben.json() == {"user": "ben"}
    assert "fwd=bypass" in nobody.headers["cache-status"]


# -- 7b. limits that depend on who is calling


def plan_of(request: Request) -> str:
    return "5/minute" if request.headers.get("x-plan") == "pro" else "2/minute"


async def test_a_callable_limit_applies_per_request_and_the_headers_carry_it() -> None:
    app = FastAPI()

    @app.get("/export", dependencies=[Depends(limit(plan_of, key=user))])
    async def export() -> dict[str, str]:
        return {}

    install(app, registry=CollectorRegistry(), identity=lambda r: r.headers.get("x-user"))
    async with serve(app) as client:
        free = [await client.get("/export", headers={"x-user": "ann"}) for _ in range(3)]
        pro = [
            await client.get("/export", headers={"x-user": "bob", "x-plan": "pro"})
            for _ in range(6)
        ]
    assert [r.status_code for r in free] == [200, 200, 429]
    assert [r.status_code for r in pro] == [200] * 5 + [429]
    assert free[0].headers["ratelimit-policy"] == '"/export";q=2;w=60'
    assert pro[0].headers["ratelimit-policy"] == '"/export";q=5;w=60'
    assert pro[0].headers["ratelimit"].startswith('"/export";r=4;')


async def test_a_callable_limit_on_a_middleware_rule_and_a_bad_answer() -> None:
    app = Starlette(routes=[Route("/x", lambda request: PlainTextResponse("x"))])
    install(
        app,
        registry=CollectorRegistry(),
        rate_rules=[Rule(lambda request: request.headers.get("x-rate", "1/minute"), path="/x")],
    )
    async with serve(app) as client:
        codes = [(await client.get("/x")).status_code for _ in range(2)]
        assert codes == [200, 429]
        with pytest.raises(ValueError, match="its limit callable"):
            await client.get("/x", headers={"x-rate": "lots"})


async def test_path_rules_for_routes_of_other_methods_and_fixed_paths_pass() -> None:
    app = FastAPI()

    @app.post("/api/v1/auth/login")
    async def login() -> dict[str, str]:
        return {}

    @app.put("/api/v1/items/{item_id}")
    async def put_item(item_id: int) -> dict[str, int]:
        return {}

    install(
        app,
        registry=CollectorRegistry(),
        rate_rules=[
            Rule("5/minute", path="/api/v1/auth/login", methods=["POST"]),
            Rule("5/minute", path="/api/v1/items/{item_id}"),
        ],
    )
    async with serve(app) as client:
        assert (await client.post("/api/v1/auth/login")).status_code == 200


# -- a declaration covers only what the router sends to its route

KEYS = {"key-alice": "alice", "key-bob": "bob"}
API_KEY = APIKeyHeader(name="X-API-Key")


def shadowed_fastapi_app() -> FastAPI:
    """``/users/me`` (API-key auth, no declarations) in front of a declaring ``/users/{id}``."""
    app = FastAPI()

    @app.get("/users/me")
    async def me(key: Annotated[str, Security(API_KEY)]) -> dict[str, str]:
        return {"user": KEYS[key]}

    @app.get("/users/{user_id}", dependencies=[Depends(limit("1/minute"))])
    @cached(ttl=60)
    async def profile(user_id: str) -> dict[str, str]:
        return {"profile": user_id}

    install(app, Settings(rate_limit="3/minute"), registry=CollectorRegistry())
    return app


def shadowed_starlette_app() -> Starlette:
    async def me(request: Request) -> JSONResponse:
        return JSONResponse({"user": KEYS[request.headers["x-api-key"]]})

    @limited("1/minute")
    @cached(ttl=60)
    async def profile(request: Request) -> JSONResponse:
        return JSONResponse({"profile": request.path_params["user_id"]})

    app = Starlette(
        routes=[
            Mount("/users", routes=[Route("/me", me), Route("/{user_id}", profile)]),
        ]
    )
    install(app, Settings(rate_limit="3/minute"), registry=CollectorRegistry())
    return app


@pytest.mark.parametrize("make", [shadowed_fastapi_app, shadowed_starlette_app])
async def test_a_route_in_front_keeps_another_routes_cache_and_limit_off_its_requests(
    make: object,
) -> None:
    app = make()  # type: ignore[operator]
    async with serve(app) as client:
        alice = await client.get("/users/me", headers={"x-api-key": "key-alice"})
        bob = await client.get("/users/me", headers={"x-api-key": "key-bob"})
        more = [
            (await client.get("/users/me", headers={"x-api-key": "key-bob"})).status_code
            for _ in range(2)
        ]
        profile = [(await client.get("/users/42")).status_code for _ in range(2)]
        cached_profile = await client.get("/users/7")
    assert alice.json() == {"user": "alice"}
    assert bob.json() == {"user": "bob"}  # never alice's body from /users/{user_id}'s cache
    assert "cache-status" not in bob.headers
    # /users/me has the default rule (3/minute), not /users/{user_id}'s 1/minute
    assert bob.headers["ratelimit-policy"] == '"default";q=3;w=60'
    assert more == [200, 429]
    assert profile == [200, 429]  # the declared limit still holds on its own route
    assert cached_profile.status_code == 429


def strict_decode(authorization: str | None) -> str | None:
    """Like ``jwt.decode``: raises on a token it cannot read."""
    if authorization is None:
        return None
    subject = decode(authorization)
    if subject is None:
        raise ValueError(f"invalid token {authorization!r}")
    return subject


async def strict_user(authorization: Annotated[str | None, Header()] = None) -> str:
    try:
        subject = strict_decode(authorization)
    except ValueError:
        subject = None
    if subject is None:
        raise HTTPException(401, "not authenticated")
    return subject


async def test_an_identity_hook_that_raises_makes_the_request_anonymous_not_a_500() -> None:
    import structlog

    app = FastAPI()

    @app.get("/me", dependencies=[Depends(limit("2/minute", key=user))])
    @cached(ttl=60, vary_user=True)
    async def me(who: Annotated[str, Depends(strict_user)]) -> dict[str, str]:
        return {"owner": who}

    install(
        app,
        registry=CollectorRegistry(),
        identity=lambda request: strict_decode(request.headers.get("authorization")),
    )
    bad = {"authorization": "Bearer not.a-valid.token"}
    async with serve(app) as client:
        with structlog.testing.capture_logs() as logs:
            codes = [(await client.get("/me", headers=bad)).status_code for _ in range(2)]
        alice = await client.get("/me", headers={"authorization": f"Bearer {token_for('alice')}"})
    assert codes == [401, 401]  # the app's own answer, not a 500 from the hook
    assert alice.json() == {"owner": "alice"}
    raised = [line for line in logs if line["event"].startswith("identity hook raised")]
    assert [line["log_level"] for line in raised] == ["warning", "debug"]
    assert raised[0]["error"] == "ValueError"
    assert "not.a-valid.token" not in repr(logs)


# -- a cached route's own security scheme: the cache must see the caller


async def start(app: Starlette) -> None:
    async with app.router.lifespan_context(app):
        pass


def keyed_app(**cached_kwargs: object) -> FastAPI:
    app = FastAPI()

    @app.get("/me")
    @cached(ttl=60, **cached_kwargs)  # type: ignore[arg-type]
    async def me(key: Annotated[str, Security(API_KEY)]) -> dict[str, str]:
        return {"user": KEYS[key]}

    install(app, registry=CollectorRegistry())
    return app


async def test_a_cached_route_with_an_api_key_header_and_no_vary_fails_start_up() -> None:
    with pytest.raises(ConfigurationError, match=r"APIKeyHeader reads the 'x-api-key' header") as e:
        await start(keyed_app())
    assert "Route('/me'" in str(e.value) or "'/me'" in str(e.value)
    assert "vary_headers=['x-api-key']" in str(e.value)


async def test_an_api_key_header_in_vary_headers_keeps_one_entry_per_key() -> None:
    app = keyed_app(vary_headers=["X-API-Key"])
    async with serve(app) as client:
        alice = await client.get("/me", headers={"x-api-key": "key-alice"})
        bob = await client.get("/me", headers={"x-api-key": "key-bob"})
        alice_again = await client.get("/me", headers={"x-api-key": "key-alice"})
    assert (alice.json(), bob.json()) == ({"user": "alice"}, {"user": "bob"})
    assert alice_again.headers["cache-status"] == "scalekit; hit"


async def test_a_cached_route_that_requires_a_bearer_token_needs_vary_user() -> None:
    from fastapi.security import OAuth2PasswordBearer

    bearer = OAuth2PasswordBearer(tokenUrl="/token")
    app = FastAPI()

    @app.get("/mine")
    @cached(ttl=60)
    async def mine(token: str = Depends(bearer)) -> dict[str, str]:
        return {"token": token[:3]}

    install(app, registry=CollectorRegistry())
    with pytest.raises(ConfigurationError, match="never caches a request with credentials"):
        await start(app)


# -- declarations on Starlette HTTPEndpoint handlers; @cached only on GET routes


async def test_declarations_on_http_endpoint_handlers_apply_to_their_methods() -> None:
    from starlette.endpoints import HTTPEndpoint

    class Items(HTTPEndpoint):
        @limited("1/minute")
        async def post(self, request: Request) -> PlainTextResponse:
            return PlainTextResponse("posted")

        @cached(ttl=60)
        async def get(self, request: Request) -> PlainTextResponse:
            return PlainTextResponse("listed")

    app = Starlette(routes=[Route("/items", Items)])
    install(app, registry=CollectorRegistry())
    async with serve(app) as client:
        posts = [(await client.post("/items")).status_code for _ in range(2)]
        gets = [await client.get("/items") for _ in range(3)]
    assert posts == [200, 429]
    assert [get.status_code for get in gets] == [200, 200, 200]  # GET is not POST's limit
    assert gets[-1].headers["cache-status"] == "scalekit; hit"


async def test_cached_on_a_route_that_serves_no_get_fails_start_up() -> None:
    app = FastAPI()
    items: list[str] = []

    @app.post("/items")
    @cached(ttl=60)
    async def add(title: str) -> list[str]:
        items.append(title)
        return items

    @app.get("/items")
    async def listing() -> list[str]:  # would have been cached by add's rule
        return items

    install(app, registry=CollectorRegistry())
    with pytest.raises(ConfigurationError, match=r"@cached on .*'/items'.*serves POST"):
        await start(app)


async def test_a_limit_on_a_websocket_route_fails_start_up() -> None:
    from fastapi import WebSocket

    app = FastAPI()

    @app.websocket("/ws", dependencies=[Depends(limit("1/minute"))])
    async def feed(websocket: WebSocket) -> None:
        await websocket.accept()

    install(app, registry=CollectorRegistry())
    with pytest.raises(ConfigurationError, match=r"a limit on .*'/ws'.*WebSocket connection"):
        await start(app)
