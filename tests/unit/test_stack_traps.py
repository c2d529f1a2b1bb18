"""install() without traps: probes and scrapes never limited, cached or shadowed; options reachable.

Issue 12, "install() without traps", points 1-6.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
import structlog
from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.authentication import AuthenticationBackend, AuthenticationError
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route

from scalekit import Settings, install
from scalekit.cache import CacheRule
from scalekit.ratelimit import Rule

pytestmark = pytest.mark.anyio

FRAMEWORKS = ["starlette", "fastapi"]


@asynccontextmanager
async def serve(app: Starlette, root_path: str = "") -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan run, and a client for it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, root_path=root_path)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"path": request.url.path})


async def spa(request: Request) -> PlainTextResponse:
    return PlainTextResponse("<html>the single-page app</html>", media_type="text/html")


def make_app(framework: str, *, catch_all: bool = False) -> Starlette:
    """An app with /api/search, /other and optionally a catch-all, in either framework."""
    if framework == "starlette":
        routes = [Route("/api/search", hello), Route("/other", hello)]
        if catch_all:
            routes.append(Route("/{full_path:path}", spa))
        return Starlette(routes=routes)
    app = FastAPI()
    app.add_api_route("/api/search", hello)
    app.add_api_route("/other", hello)
    if catch_all:
        app.add_api_route("/{full_path:path}", spa)
    return app


# -- 1. health and metrics paths: exempt from every rule and the cache, quiet in the log


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_300_probes_and_300_scrapes_under_a_5_per_minute_default_all_answer_200(
    framework: str,
) -> None:
    app = make_app(framework, catch_all=True)
    install(
        app,
        Settings(rate_limit="5/minute"),
        cache_rules=[CacheRule("/{full_path:path}", ttl=60)],
        registry=CollectorRegistry(),
    )
    async with serve(app) as client:
        statuses = set()
        for _ in range(300):
            live = await client.get("/health/live")
            ready = await client.get("/health/ready")
            scrape = await client.get("/metrics")
            statuses |= {live.status_code, ready.status_code, scrape.status_code}
            for response in (live, ready, scrape):
                assert "ratelimit" not in response.headers
                assert "cache-status" not in response.headers
        assert statuses == {200}
        # The default rule still limits the app's own routes.
        codes = [(await client.get("/other")).status_code for _ in range(6)]
        assert codes == [200] * 5 + [429]


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_probes_behind_root_path_are_exempt_too(framework: str) -> None:
    app = make_app(framework)
    install(app, Settings(rate_limit="2/minute"), registry=CollectorRegistry())
    async with serve(app, root_path="/svc") as client:
        codes = {(await client.get("/svc/health/live")).status_code for _ in range(20)}
        assert codes == {200}
        codes = {(await client.get("/svc/metrics")).status_code for _ in range(20)}
        assert codes == {200}


class RefusingAuth(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> None:
        raise AuthenticationError("no credentials")


async def test_probes_do_not_go_through_the_authentication_backend() -> None:
    app = make_app("starlette")
    install(app, auth_backend=RefusingAuth(), registry=CollectorRegistry())
    async with serve(app) as client:
        assert (await client.get("/other")).status_code == 400
        assert (await client.get("/health/live")).status_code == 200
        assert (await client.get("/health/ready")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200


async def test_probe_and_scrape_access_lines_are_quiet_unless_configured() -> None:
    from scalekit import RequestContextOptions

    app = make_app("starlette")
    install(app, registry=CollectorRegistry())
    async with serve(app) as client:
        with structlog.testing.capture_logs() as logs:
            await client.get("/health/live")
            await client.get("/metrics")
            await client.get("/other")
    levels = {line["path"]: line["log_level"] for line in logs if line["event"] == "request"}
    assert levels == {"/health/live": "debug", "/metrics": "debug", "/other": "info"}

    loud = make_app("starlette")
    install(
        loud,
        registry=CollectorRegistry(),
        request_context=RequestContextOptions(quiet_paths=()),
    )
    async with serve(loud) as client:
        with structlog.testing.capture_logs() as logs:
            await client.get("/health/live")
    assert [line["log_level"] for line in logs if line["event"] == "request"] == ["info"]


# -- 2. a catch-all route does not answer the probes


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_behind_a_catch_all_route_health_ready_is_scalekits(framework: str) -> None:
    app = make_app(framework, catch_all=True)
    install(app, registry=CollectorRegistry())
    async with serve(app) as client:
        ready = await client.get("/health/ready")
        live = await client.get("/health/live")
        scrape = await client.get("/metrics")
        page = await client.get("/some/page")
    assert ready.headers["content-type"] == "application/health+json"
    assert ready.json()["status"] == "pass"
    assert live.headers["content-type"] == "application/health+json"
    assert scrape.text.startswith("# HELP")
    assert page.text == "<html>the single-page app</html>"


async def test_behind_a_root_mount_health_ready_is_scalekits() -> None:
    app = Starlette(routes=[Mount("/", app=spa)])
    install(app, registry=CollectorRegistry())
    async with serve(app) as client:
        ready = await client.get("/health/ready")
    assert ready.headers["content-type"] == "application/health+json"


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_a_route_added_in_front_after_install_fails_start_up_naming_it(
    framework: str,
) -> None:
    app = make_app(framework)
    install(app, registry=CollectorRegistry())
    app.router.routes.insert(0, Route("/{anything:path}", spa, name="spa_fallback"))
    with pytest.raises(ValueError, match=r"'/health/live'.*spa_fallback"):
        async with serve(app):
            pass


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_the_apps_own_health_route_is_an_error_at_install(framework: str) -> None:
    from scalekit import ConfigurationError, HealthOptions

    app = make_app(framework)
    app.router.routes.append(Route("/health/ready", hello, name="my_ready"))
    with pytest.raises(ConfigurationError, match=r"my_ready.*'/health/ready'.*ready_path"):
        install(app, registry=CollectorRegistry())
    # Moving scalekit's endpoint elsewhere is the way out.
    install(app, registry=CollectorRegistry(), health=HealthOptions(ready_path="/ready"))
    async with serve(app) as client:
        assert (await client.get("/ready")).headers["content-type"] == "application/health+json"
        assert (await client.get("/health/ready")).json() == {"path": "/health/ready"}


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("lifespan", [True, False], ids=["lifespan", "first-request"])
async def test_the_apps_own_metrics_route_added_after_install_fails_start_up(
    framework: str, lifespan: bool
) -> None:
    from scalekit import ConfigurationError

    app = make_app(framework, catch_all=True)  # the catch-all is fine; /metrics of its own is not
    install(app, registry=CollectorRegistry())
    if framework == "fastapi":
        router = APIRouter()
        router.add_api_route("/metrics", hello, name="my_metrics")
        app.include_router(router)  # type: ignore[attr-defined]
    else:
        app.add_route("/metrics", hello, name="my_metrics")

    async def start() -> None:
        if lifespan:
            async with serve(app):
                pass
        else:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                await client.get("/other")

    with pytest.raises(ConfigurationError, match=r"my_metrics.*'/metrics'.*metrics_path"):
        await start()


# -- 3. a custom metrics path is not counted


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_a_custom_metrics_path_is_not_counted(framework: str) -> None:
    app = make_app(framework)
    install(app, Settings(metrics_path="/internal/metrics"), registry=CollectorRegistry())
    async with serve(app) as client:
        for _ in range(3):
            assert (await client.get("/internal/metrics")).status_code == 200
        await client.get("/other")
        text = (await client.get("/internal/metrics")).text
    assert 'route="/other"' in text
    assert "/internal/metrics" not in text
    assert "<unmatched>" not in text


# -- 4. every option of the middleware install() builds is reachable from it


def _parameters(function: Callable[..., object]) -> set[str]:
    return set(inspect.signature(function).parameters) - {"self", "app"}


def test_every_middleware_option_is_reachable_from_install() -> None:
    from scalekit import (
        CacheOptions,
        HealthOptions,
        MetricsOptions,
        RateLimitOptions,
        RequestContextOptions,
    )
    from scalekit.cache import CacheMiddleware
    from scalekit.observability import Health, MetricsMiddleware, RequestContextMiddleware
    from scalekit.ratelimit import RateLimitMiddleware

    def fields(options: type) -> set[str]:
        return {field.name for field in dataclasses.fields(options)}

    # What install() supplies itself, from Settings or its own arguments.
    supplied = {
        "rules",
        "clock",
        "trusted_proxies",
        "forwarded_header",
        "identity",
        "access_log",
        "registry",
        "backend",
        "checks",
        "metrics",  # RequestContextMiddleware's RequestMetrics, built from MetricsOptions
    }
    pairs: list[tuple[Callable[..., object], type]] = [
        (RateLimitMiddleware.__init__, RateLimitOptions),
        (CacheMiddleware.__init__, CacheOptions),
        (MetricsMiddleware.__init__, MetricsOptions),
        (Health.__init__, HealthOptions),
        (RequestContextMiddleware.__init__, RequestContextOptions),
    ]
    for init, options in pairs:
        missing = _parameters(init) - supplied - fields(options)
        assert not missing, f"{options.__name__} lacks {sorted(missing)}"


async def test_options_reach_the_middleware() -> None:
    from scalekit import HealthOptions, MetricsOptions, RateLimitOptions

    app = make_app("starlette")
    install(
        app,
        Settings(rate_limit="5/minute"),
        registry=CollectorRegistry(),
        ratelimit=RateLimitOptions(strategy="fixed-window", legacy_headers=True),
        health=HealthOptions(version="1.2.3", service_id="tasks", cache_ttl=0),
        metrics=MetricsOptions(buckets=(0.0005, 0.002, 1.0), max_routes=1),
    )
    async with serve(app) as client:
        other = await client.get("/other")
        await client.get("/api/search")
        ready = (await client.get("/health/ready")).json()
        text = (await client.get("/metrics")).text
    assert other.headers["x-ratelimit-limit"] == "5"
    assert ready["version"] == "1.2.3"
    assert ready["serviceId"] == "tasks"
    assert 'le="0.0005"' in text
    assert 'route="<overflow>"' in text  # max_routes=1: /api/search is the second template


def test_install_buckets_start_at_one_millisecond() -> None:
    from scalekit import MetricsOptions

    assert MetricsOptions().buckets[0] == 0.001


# -- 5. a route-level limit replaces the default rule for that route


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_a_route_rule_replaces_the_default_for_its_route(framework: str) -> None:
    app = make_app(framework)
    install(
        app,
        Settings(rate_limit="3/minute"),
        rate_rules=[Rule("100/minute", path="/api/search")],
        registry=CollectorRegistry(),
    )
    async with serve(app) as client:
        search = [await client.get("/api/search") for _ in range(10)]
        other = [(await client.get("/other")).status_code for _ in range(4)]
    assert {response.status_code for response in search} == {200}
    assert search[-1].headers["ratelimit"].startswith('"/api/search";r=90;')
    assert other == [200, 200, 200, 429]


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_default_limit_everywhere_keeps_the_old_tightening_behaviour(framework: str) -> None:
    from scalekit import DefaultLimit, RateLimitOptions

    app = make_app(framework)
    install(
        app,
        Settings(rate_limit="3/minute"),
        rate_rules=[Rule("100/minute", path="/api/search")],
        registry=CollectorRegistry(),
        ratelimit=RateLimitOptions(default_limit=DefaultLimit("everywhere")),
    )
    async with serve(app) as client:
        codes = [(await client.get("/api/search")).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]


async def test_a_pathless_rule_adds_to_the_default() -> None:
    app = make_app("starlette")
    install(
        app,
        Settings(rate_limit="3/minute"),
        rate_rules=[Rule("100/minute", methods=["POST"], name="writes")],
        registry=CollectorRegistry(),
    )
    async with serve(app) as client:
        codes = [(await client.get("/api/search")).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]


def test_default_limit_is_a_closed_set() -> None:
    from scalekit import ConfigurationError, RateLimitOptions

    with pytest.raises(ConfigurationError, match="'fallback' or 'everywhere'"):
        RateLimitOptions(default_limit="sometimes")  # type: ignore[arg-type]


# -- 6. the Stack on app.state, typed, with a cache even without cache rules


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_the_stack_is_on_app_state_and_always_has_a_cache(framework: str) -> None:
    from scalekit import Stack

    seen: list[Stack] = []

    async def write(request: Request) -> JSONResponse:
        stack = Stack.of(request)
        seen.append(stack)
        await request.app.state.scalekit.cache.invalidate("user:42:tasks")
        return JSONResponse({"ok": True})

    app = make_app(framework)
    app.router.routes.append(Route("/write", write, methods=["POST"]))
    stack = install(app, registry=CollectorRegistry())
    assert app.state.scalekit is stack
    assert Stack.of(app) is stack
    async with serve(app) as client:
        assert (await client.post("/write")).json() == {"ok": True}
    assert seen == [stack]


def test_stack_fields_are_typed_without_any() -> None:
    from scalekit import Stack

    for field in dataclasses.fields(Stack):
        assert "Any" not in str(field.type), f"Stack.{field.name}: {field.type}"


def test_stack_of_an_app_without_install_says_so() -> None:
    from scalekit import ConfigurationError, Stack

    with pytest.raises(ConfigurationError, match=r"call install\(app"):
        Stack.of(Starlette())


async def test_fastapi_router_routes_included_after_install_still_work() -> None:
    app = FastAPI()
    install(app, Settings(rate_limit="5/minute"), registry=CollectorRegistry())
    router = APIRouter(prefix="/api")
    router.add_api_route("/items", hello)
    app.include_router(router)
    async with serve(app) as client:
        assert (await client.get("/api/items")).json() == {"path": "/api/items"}
        assert (await client.get("/health/live")).status_code == 200


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_a_route_rule_replaces_the_default_under_root_path_too(framework: str) -> None:
    app = make_app(framework)
    install(
        app,
        Settings(rate_limit="3/minute"),
        rate_rules=[Rule("100/minute", path="/api/search")],
        registry=CollectorRegistry(),
    )
    async with serve(app, root_path="/svc") as client:
        codes = {(await client.get("/svc/api/search")).status_code for _ in range(10)}
    assert codes == {200}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_second_install_on_one_app_says_so(framework: str) -> None:
    from scalekit import ConfigurationError, HealthOptions

    app = make_app(framework)
    install(app, registry=CollectorRegistry())
    # Moving the paths (what the route clash would suggest) must not build a second stack.
    with pytest.raises(ConfigurationError, match="install\\(\\) was already called on this app"):
        install(app, registry=CollectorRegistry(), health=HealthOptions(live_path="/live2"))
