"""MetricsMiddleware and metrics_endpoint: bounded series by route template."""

from __future__ import annotations

import random
import string
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Host, Mount, Route, Router

from scalekit.observability import MetricsMiddleware, cleanup_dead_workers, metrics_endpoint_for
from scalekit.observability.metrics import (
    DEFAULT_BUCKETS,
    OVERFLOW_ROUTE,
    UNMATCHED_ROUTE,
    HttpMetrics,
    _DirectSeries,
    _LiveGauge,
    _PublicSeries,
    _request_series,
    render_metrics,
)


async def ok(request: Request) -> Response:
    return PlainTextResponse("ok")


async def boom(request: Request) -> Response:
    raise RuntimeError("kaboom")


def samples(registry: CollectorRegistry, name: str) -> list[tuple[dict[str, str], float]]:
    body, _ = render_metrics(registry)
    found = []
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name:
                found.append((dict(sample.labels), sample.value))
    return found


def routes_counted(registry: CollectorRegistry) -> set[str]:
    return {labels["route"] for labels, _ in samples(registry, "http_requests_total")}


def make_app(registry: CollectorRegistry, **options: Any) -> Starlette:
    inner = Router([Route("/users/{user_id:int}", ok), Route("/", ok)])
    return Starlette(
        routes=[
            Route("/items/{item_id}", ok, methods=["GET", "POST"]),
            Route("/boom", boom),
            Route("/metrics", metrics_endpoint_for(registry)),
            Route("/health/live", ok),
            Mount("/api/{version}", app=inner),
            Mount("/static", app=PlainTextResponse("file")),
            Host("admin.example.com", app=Router([Route("/panel", ok)])),
        ],
        middleware=[Middleware(MetricsMiddleware, registry=registry, **options)],
    )


def client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@pytest.mark.anyio
async def test_distinct_ids_give_one_route_series() -> None:
    registry = CollectorRegistry()
    async with client(make_app(registry)) as http:
        for item_id in range(1000):
            assert (await http.get(f"/items/{item_id}")).status_code == 200
    [(labels, value)] = samples(registry, "http_requests_total")
    assert labels == {"method": "GET", "route": "/items/{item_id}", "status": "200"}
    assert value == 1000
    [(_, count)] = samples(registry, "http_request_duration_seconds_count")
    assert count == 1000


@pytest.mark.anyio
async def test_random_unmatched_paths_and_methods_add_one_route_value() -> None:
    registry = CollectorRegistry()
    rng = random.Random(7)
    methods = ["GET", "POST", "OPTIONS", "DELETE", "PROPFIND", "BREW"]
    async with client(make_app(registry)) as http:
        await http.get("/items/1")
        for _ in range(500):
            path = "/" + "".join(rng.choices(string.ascii_letters + "/._-", k=rng.randint(1, 40)))
            if path.startswith(("/items/", "/static", "/api/", "/boom", "/metrics", "/health")):
                continue
            await http.request(rng.choice(methods), path)
    assert routes_counted(registry) == {"/items/{item_id}", UNMATCHED_ROUTE}
    unmatched_methods = {
        labels["method"]
        for labels, _ in samples(registry, "http_requests_total")
        if labels["route"] == UNMATCHED_ROUTE
    }
    assert unmatched_methods == {"GET", "POST", "OPTIONS", "DELETE", "OTHER"}


@pytest.mark.anyio
async def test_mounts_hosts_and_405_use_the_full_template() -> None:
    registry = CollectorRegistry()
    async with client(make_app(registry)) as http:
        await http.get("/api/v1/users/7")
        await http.get("/api/v2/users/8")
        await http.get("/api/v1/")
        await http.get("/api/v1/nothing-here")
        await http.get("/static/css/site.css")
        await http.get("/panel", headers={"host": "admin.example.com"})
        assert (await http.delete("/items/3")).status_code == 405
    assert routes_counted(registry) == {
        "/api/{version}/users/{user_id}",
        "/api/{version}/",
        "/static/{path}",
        "/panel",
        "/items/{item_id}",
        UNMATCHED_ROUTE,
    }
    statuses = {
        (labels["route"], labels["status"])
        for labels, _ in samples(registry, "http_requests_total")
    }
    assert ("/items/{item_id}", "405") in statuses


@pytest.mark.anyio
async def test_a_router_mounted_twice_is_told_apart() -> None:
    registry = CollectorRegistry()
    shared = Router([Route("/x", ok)])
    app = Starlette(
        routes=[Mount("/a", app=shared), Mount("/b", app=shared)],
        middleware=[Middleware(MetricsMiddleware, registry=registry)],
    )
    async with client(app) as http:
        await http.get("/a/x")
        await http.get("/b/x")
        await http.get("/b/x")
    values = {labels["route"]: value for labels, value in samples(registry, "http_requests_total")}
    assert values == {"/a/x": 1, "/b/x": 2}


@pytest.mark.anyio
async def test_fastapi_routers_report_templates() -> None:
    registry = CollectorRegistry()
    app = FastAPI()
    router = APIRouter(prefix="/v1/tasks")

    @router.get("/{task_id}")
    async def get_task(task_id: int) -> dict[str, int]:
        return {"task_id": task_id}

    app.include_router(router)
    app.add_middleware(MetricsMiddleware, registry=registry)
    async with client(app) as http:
        for task_id in range(20):
            assert (await http.get(f"/v1/tasks/{task_id}")).json() == {"task_id": task_id}
        assert (await http.get("/v1/tasks/not-a-number")).status_code == 422
    assert routes_counted(registry) == {"/v1/tasks/{task_id}"}


@pytest.mark.anyio
async def test_metrics_and_health_paths_are_not_counted() -> None:
    registry = CollectorRegistry()
    async with client(make_app(registry)) as http:
        await http.get("/health/live")
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert samples(registry, "http_requests_total") == []


@pytest.mark.anyio
async def test_exclude_paths_can_be_changed() -> None:
    registry = CollectorRegistry()
    async with client(make_app(registry, exclude_paths=())) as http:
        await http.get("/health/live")
    assert routes_counted(registry) == {"/health/live"}


@pytest.mark.anyio
async def test_unhandled_exception_counts_as_500() -> None:
    registry = CollectorRegistry()
    async with client(make_app(registry)) as http:
        assert (await http.get("/boom")).status_code == 500
    [(labels, _value)] = samples(registry, "http_requests_total")
    assert labels == {"method": "GET", "route": "/boom", "status": "500"}
    [(gauge_labels, in_progress)] = samples(registry, "http_requests_in_progress")
    assert gauge_labels == {"method": "GET"}
    assert in_progress == 0


@pytest.mark.anyio
async def test_route_cap_sends_new_templates_to_overflow() -> None:
    registry = CollectorRegistry()
    app = Starlette(
        routes=[Route(f"/r{i}/{{x}}", ok) for i in range(5)],
        middleware=[Middleware(MetricsMiddleware, registry=registry, max_routes=2)],
    )
    async with client(app) as http:
        for i in range(5):
            await http.get(f"/r{i}/1")
            await http.get(f"/r{i}/2")
        await http.get("/nowhere")
    assert routes_counted(registry) == {"/r0/{x}", "/r1/{x}", OVERFLOW_ROUTE, UNMATCHED_ROUTE}


@pytest.mark.anyio
async def test_in_progress_gauge_counts_running_requests() -> None:
    registry = CollectorRegistry()
    seen: list[float] = []

    async def peek(request: Request) -> Response:
        [(_, value)] = list(samples(registry, "http_requests_in_progress"))
        seen.append(value)
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/peek", peek, methods=["POST"])],
        middleware=[Middleware(MetricsMiddleware, registry=registry)],
    )
    async with client(app) as http:
        await http.post("/peek")
    assert seen == [1.0]
    assert samples(registry, "http_requests_in_progress") == [({"method": "POST"}, 0.0)]


def test_two_apps_on_two_registries_never_collide() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    make_app(first)
    make_app(second)
    # The same registry twice shares one set of metrics instead of raising.
    MetricsMiddleware(Router([]), registry=first)


def test_custom_buckets_and_a_conflict() -> None:
    registry = CollectorRegistry()
    middleware = MetricsMiddleware(Router([]), registry=registry, buckets=(0.1, 1.0))
    middleware.metrics.observe("GET", "/", 200, 0.05)
    body, _ = render_metrics(registry)
    assert b'le="0.1",method="GET",route="/"} 1.0' in body
    assert b'le="0.25"' not in body
    with pytest.raises(ValueError, match="buckets"):
        MetricsMiddleware(Router([]), registry=registry, buckets=(0.5,))


def test_bad_cap_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_routes"):
        MetricsMiddleware(Router([]), registry=CollectorRegistry(), max_routes=0)


@pytest.mark.anyio
async def test_openmetrics_is_served_when_asked() -> None:
    registry = CollectorRegistry()
    async with client(make_app(registry)) as http:
        await http.get("/items/1")
        response = await http.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


def test_cleanup_removes_only_dead_workers_live_gauges(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
    dead = int(finished.stdout)
    alive = os.getpid()
    for name in (
        f"gauge_livesum_{dead}.db",
        f"gauge_liveall_{dead}.db",
        f"counter_{dead}.db",
        f"histogram_{dead}.db",
        f"gauge_livesum_{alive}.db",
        f"counter_{alive}.db",
    ):
        (tmp_path / name).write_bytes(b"")
    assert cleanup_dead_workers(str(tmp_path)) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{dead}.db", f"histogram_{dead}.db", f"gauge_livesum_{alive}.db",
         f"counter_{alive}.db"]
    )  # fmt: skip
    assert cleanup_dead_workers(str(tmp_path)) == []


def test_cleanup_without_a_directory_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert cleanup_dead_workers() == []


async def call_asgi(app: Any, method: str, path: str) -> int:
    """One request straight through the ASGI interface (no HTTP client): fast for 10,000."""
    status = 0
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": [(b"host", b"test")], "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


@pytest.mark.anyio
async def test_ten_thousand_random_unmatched_requests_add_exactly_one_route_value() -> None:
    registry = CollectorRegistry()
    app = make_app(registry)
    await call_asgi(app, "GET", "/items/1")
    before = routes_counted(registry)
    rng = random.Random(20261129)
    alphabet = string.ascii_letters + string.digits + "/._-~%"
    sent = 0
    while sent < 10_000:
        path = "/" + "".join(rng.choices(alphabet, k=rng.randint(1, 60)))
        if path.startswith(("/items/", "/static", "/api/", "/boom", "/metrics", "/health")):
            continue
        method = "OPTIONS" if sent % 4 == 0 else rng.choice(["GET", "POST", "HEAD", "WEIRD"])
        status = await call_asgi(app, method, path)
        assert status in (404, 307), (path, status)
        sent += 1
    after = routes_counted(registry)
    assert after - before == {UNMATCHED_ROUTE}
    unmatched = sum(
        value
        for labels, value in samples(registry, "http_requests_total")
        if labels["route"] == UNMATCHED_ROUTE
    )
    assert unmatched == 10_000


@given(path=st.text(alphabet=string.printable, min_size=0, max_size=80), method=st.text(max_size=8))
@settings(max_examples=300, deadline=None)
def test_route_label_is_always_a_template_or_unmatched(path: str, method: str) -> None:
    import anyio

    registry = CollectorRegistry()
    app = make_app(registry)
    anyio.run(call_asgi, app, method or "GET", "/" + path)
    allowed = {
        "/items/{item_id}",
        "/boom",
        "/api/{version}/users/{user_id}",
        "/api/{version}/",
        "/static/{path}",
        UNMATCHED_ROUTE,
    }
    assert routes_counted(registry) <= allowed
    methods = {labels["method"] for labels, _ in samples(registry, "http_requests_total")}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
                       "CONNECT", "OTHER"}  # fmt: skip


@pytest.mark.anyio
async def test_metrics_endpoint_serves_the_registry_of_the_middleware_in_front() -> None:
    from scalekit.observability import metrics_endpoint

    def app_on(registry: CollectorRegistry) -> Starlette:
        return Starlette(
            routes=[Route("/items/{item_id}", ok), Route("/metrics", metrics_endpoint)],
            middleware=[Middleware(MetricsMiddleware, registry=registry)],
        )

    first, second = CollectorRegistry(), CollectorRegistry()
    async with client(app_on(first)) as one, client(app_on(second)) as two:
        await one.get("/items/1")
        for _ in range(3):
            await two.get("/items/2")
        first_text = (await one.get("/metrics")).text
        second_text = (await two.get("/metrics")).text
    line = 'http_requests_total{method="GET",route="/items/{item_id}",status="200"}'
    assert f"{line} 1.0" in first_text
    assert f"{line} 3.0" in second_text


@pytest.mark.anyio
async def test_answered_before_the_router_still_counts_under_its_template() -> None:
    """A response from an inner middleware (a cache hit, a 429) never reaches the router."""
    from starlette.types import ASGIApp, Receive, Scope, Send

    class ShortCircuit:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and scope["path"].endswith("/7"):
                await PlainTextResponse("limited", status_code=429)(scope, receive, send)
                return
            await self.app(scope, receive, send)

    async def item(request: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    registry = CollectorRegistry()
    app = Starlette(routes=[Mount("/api", routes=[Route("/items/{item_id}", item)])])
    app.add_middleware(ShortCircuit)
    app.add_middleware(MetricsMiddleware, registry=registry)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/api/items/7")).status_code == 429
        assert (await client.get("/api/items/8")).status_code == 200
        assert (await client.get("/nowhere/7")).status_code == 429
    labels = {"method": "GET", "route": "/api/items/{item_id}"}
    assert registry.get_sample_value("http_requests_total", {**labels, "status": "429"}) == 1.0
    assert registry.get_sample_value("http_requests_total", {**labels, "status": "200"}) == 1.0
    unmatched = {"method": "GET", "route": "<unmatched>", "status": "429"}
    assert registry.get_sample_value("http_requests_total", unmatched) == 1.0


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from([0.0, *DEFAULT_BUCKETS]),  # exactly on a bound
            st.floats(min_value=0, max_value=100, allow_nan=False),
        ),
        max_size=40,
    )
)
def test_direct_series_count_exactly_what_the_public_methods_count(durations: list[float]) -> None:
    direct, public = CollectorRegistry(), CollectorRegistry()
    fast = HttpMetrics(direct, DEFAULT_BUCKETS)
    slow = HttpMetrics(public, DEFAULT_BUCKETS)
    assert isinstance(fast.gauge("GET"), _LiveGauge)
    for duration in durations:
        fast.observe("GET", "/items/{item_id}", 200, duration)
        slow.requests.labels("GET", "/items/{item_id}", "200").inc()
        slow.duration.labels("GET", "/items/{item_id}").observe(duration)
        fast.gauge("GET").inc()
        slow.in_progress.labels("GET").inc()
    fast.gauge("GET").dec()
    slow.in_progress.labels("GET").dec()
    if durations:
        assert isinstance(fast.children[("GET", "/items/{item_id}", 200)], _DirectSeries)
    assert without_created(render_metrics(direct)[0]) == without_created(render_metrics(public)[0])


def without_created(body: bytes) -> list[str]:
    return [line for line in body.decode().splitlines() if "_created" not in line]


def test_children_without_the_expected_internals_use_the_public_methods() -> None:
    class Child:
        def __init__(self) -> None:
            self.calls: list[tuple[str, float]] = []

        def inc(self, amount: float = 1) -> None:
            self.calls.append(("inc", amount))

        def dec(self, amount: float = 1) -> None:
            self.calls.append(("dec", amount))

        def observe(self, amount: float) -> None:
            self.calls.append(("observe", amount))

    counter, histogram, gauge_child = Child(), Child(), Child()
    series = _request_series(counter, histogram)
    assert isinstance(series, _PublicSeries)
    series.record(0.25)
    gauge = _LiveGauge(gauge_child)
    gauge.inc()
    gauge.dec()
    assert counter.calls == [("inc", 1)]
    assert histogram.calls == [("observe", 0.25)]
    assert gauge_child.calls == [("inc", 1), ("dec", 1)]
