"""Responses answered before the router runs count under the route's full template.

A cache hit (CacheMiddleware) and a 429 (RateLimitMiddleware) never reach the
router, so nothing writes ``scope["route"]``: the route label is found by
matching the app's routes, which must see inside FastAPI's lazily included
routers (``include_router(router, prefix=...)``), nested ones, mounts and
``root_path``. Before the fix these were counted under ``route=""``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import structlog
from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from scalekit import _routes, install
from scalekit._routes import UNMATCHED_ROUTE, RouteNames
from scalekit.fastapi import cached, declarations, limited

pytestmark = pytest.mark.anyio


def tasks_router() -> APIRouter:
    """GET /tasks cached, GET /tasks/{task_id} limited to 1/minute, a nested router."""
    router = APIRouter()

    @router.get("/tasks")
    @cached(ttl=60)
    async def list_tasks() -> list[str]:
        return ["t"]

    @router.get("/tasks/{task_id}")
    @limited("1/minute")
    async def get_task(task_id: int) -> dict[str, int]:
        return {"task_id": task_id}

    nested = APIRouter(prefix="/admin")

    @nested.get("/stats")
    @cached(ttl=60)
    async def stats() -> dict[str, int]:
        return {"n": 1}

    router.include_router(nested, prefix="/inner")
    return router


def fastapi_app(registry: CollectorRegistry) -> FastAPI:
    app = FastAPI()
    app.include_router(tasks_router(), prefix="/api/v1")
    install(app, registry=registry)
    return app


@asynccontextmanager
async def serve(app: Starlette, root_path: str = "") -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, root_path=root_path)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


def counted(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (sample.labels["route"], sample.labels["status"]): sample.value
        for metric in registry.collect()
        if metric.name == "http_requests"
        for sample in metric.samples
        if sample.name == "http_requests_total"
    }


@pytest.mark.parametrize("root_path", ["", "/svc"])
async def test_a_cache_hit_and_a_429_under_include_router_prefix_count_under_the_template(
    root_path: str,
) -> None:
    registry = CollectorRegistry()
    app = fastapi_app(registry)
    with structlog.testing.capture_logs() as logs:
        async with serve(app, root_path=root_path) as client:
            miss = await client.get(f"{root_path}/api/v1/tasks")
            hit = await client.get(f"{root_path}/api/v1/tasks")
            nested_miss = await client.get(f"{root_path}/api/v1/inner/admin/stats")
            nested_hit = await client.get(f"{root_path}/api/v1/inner/admin/stats")
            first = await client.get(f"{root_path}/api/v1/tasks/7")
            limited_ = await client.get(f"{root_path}/api/v1/tasks/7")
            missing = await client.get(f"{root_path}/api/v1/nowhere")
    assert miss.headers["cache-status"].startswith("scalekit; fwd=miss")
    assert hit.headers["cache-status"] == "scalekit; hit"
    assert nested_hit.headers["cache-status"] == "scalekit; hit"
    assert nested_miss.status_code == 200
    assert (first.status_code, limited_.status_code, missing.status_code) == (200, 429, 404)
    assert counted(registry) == {
        ("/api/v1/tasks", "200"): 2,
        ("/api/v1/inner/admin/stats", "200"): 2,
        ("/api/v1/tasks/{task_id}", "200"): 1,
        ("/api/v1/tasks/{task_id}", "429"): 1,
        (UNMATCHED_ROUTE, "404"): 1,
    }
    routes = [line["route"] for line in logs if line["event"] == "request"]
    assert routes == [
        "/api/v1/tasks",
        "/api/v1/tasks",
        "/api/v1/inner/admin/stats",
        "/api/v1/inner/admin/stats",
        "/api/v1/tasks/{task_id}",
        "/api/v1/tasks/{task_id}",
        UNMATCHED_ROUTE,
    ]


async def test_a_fastapi_app_with_included_routers_under_a_starlette_mount() -> None:
    registry = CollectorRegistry()
    api = FastAPI()
    api.include_router(tasks_router(), prefix="/api/v1")

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("home")

    app = Starlette(routes=[Route("/", home), Mount("/svc", app=api)])
    install(app, registry=registry)
    with structlog.testing.capture_logs() as logs:
        async with serve(app) as client:
            for _ in range(2):
                await client.get("/svc/api/v1/tasks")
                await client.get("/svc/api/v1/tasks/3")
    assert counted(registry) == {
        ("/svc/api/v1/tasks", "200"): 2,
        ("/svc/api/v1/tasks/{task_id}", "200"): 1,
        ("/svc/api/v1/tasks/{task_id}", "429"): 1,
    }
    routes = [line["route"] for line in logs if line["event"] == "request"]
    assert "" not in routes
    assert set(routes) == {"/svc/api/v1/tasks", "/svc/api/v1/tasks/{task_id}"}


def test_a_router_included_twice_is_told_apart_and_starlette_routes_in_it_are_found() -> None:
    router = tasks_router()

    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("plain")

    @limited("5/minute")
    async def file(request: Request) -> PlainTextResponse:
        return PlainTextResponse("file")

    router.add_route("/plain/{name}", plain)
    static = Starlette(routes=[Route("/file", file)])
    router.routes.append(Mount("/static", app=static))
    app = FastAPI()
    app.include_router(router, prefix="/v1")
    app.include_router(router, prefix="/v2")
    names = RouteNames()

    def name(path: str, method: str = "GET") -> str:
        scope = {"type": "http", "method": method, "path": path, "root_path": "", "app": app}
        return names(scope)

    assert name("/v1/tasks") == "/v1/tasks"
    assert name("/v2/tasks") == "/v2/tasks"
    assert name("/v2/tasks/5") == "/v2/tasks/{task_id}"
    assert name("/v1/tasks", "POST") == "/v1/tasks"  # a 405 counts under its route
    assert name("/v2/inner/admin/stats") == "/v2/inner/admin/stats"
    assert name("/v1/plain/x") == "/v1/plain/{name}"
    assert name("/v2/static/file") == "/v2/static/file"
    assert name("/v3/tasks") == UNMATCHED_ROUTE
    assert name("/v1/static/nothing") == UNMATCHED_ROUTE
    # The declarations see the same tree: both inclusions, the nested router,
    # and a Starlette app mounted inside the included router.
    assert {found.template for found in declarations(app.routes)} == {
        f"/{version}{path}"
        for version in ("v1", "v2")
        for path in ("/tasks", "/tasks/{task_id}", "/inner/admin/stats", "/static/file")
    }
    assert {entry.template for entry in _routes.walk_routes(app.routes)} >= {
        "/v1/plain/{name}",
        "/v2/static/file",
    }
