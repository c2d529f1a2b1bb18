"""``promtool check metrics`` accepts what /metrics serves (HTTP and component series)."""

from __future__ import annotations

import subprocess

import httpx
import pytest
from harness import require_binary
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

from scalekit import events
from scalekit.observability import (
    MetricsMiddleware,
    metrics_endpoint_for,
    subscribe_component_metrics,
)


def check_with_promtool(promtool: str, text: str) -> None:
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


async def ok(request: Request) -> Response:
    return PlainTextResponse("ok")


async def boom(request: Request) -> Response:
    raise RuntimeError("kaboom")


@pytest.mark.anyio
async def test_promtool_accepts_the_metrics_output() -> None:
    promtool = require_binary("promtool", "prometheus")
    registry = CollectorRegistry()
    bus = events.EventBus()
    unsubscribe = subscribe_component_metrics(registry, bus=bus)
    app = Starlette(
        routes=[
            Route("/items/{item_id}", ok, methods=["GET", "POST"]),
            Route("/boom", boom),
            Mount("/api/{version}", routes=[Route("/users/{user_id}", ok)]),
            Route("/metrics", metrics_endpoint_for(registry)),
        ],
        middleware=[Middleware(MetricsMiddleware, registry=registry, max_routes=50)],
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        for item_id in range(50):
            await http.get(f"/items/{item_id}")
            await http.post(f"/items/{item_id}")
        await http.get("/api/v1/users/3")
        await http.get("/boom")
        await http.request("OPTIONS", "/nowhere")
        await http.request("BREW", "/coffee")
        bus.emit(events.DbQuery(pool="main", role="replica", duration=0.004))
        bus.emit(events.DbRouting(pool="main", decision="replica_skipped", reason="lagging"))
        bus.emit(events.DbPoolStats(pool="main", in_use=2, idle=3, waiting=0))
        bus.emit(events.CacheEvent(rule="/api/v1/tasks", event="hit"))
        bus.emit(events.RateLimitDecision(rule="api", decision="limited"))
        bus.emit(events.BackendError(component="redis", operation="get"))
        response = await http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        openmetrics = await http.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
    unsubscribe()
    text = response.text
    check_with_promtool(promtool, text)
    # promtool reads the Prometheus text format; OpenMetrics is checked by its parser.
    families = list(text_string_to_metric_families(openmetrics.text))
    assert {family.name for family in families} >= {"http_requests", "scalekit_cache_events"}
    for name in (
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "http_requests_in_progress",
        "scalekit_db_query_duration_seconds_bucket",
        "scalekit_db_pool_connections",
        "scalekit_cache_events_total",
        "scalekit_ratelimit_decisions_total",
        "scalekit_backend_errors_total",
    ):
        assert f"\n{name}{{" in text, name
