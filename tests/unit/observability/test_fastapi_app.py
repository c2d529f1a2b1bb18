"""The middlewares, /metrics and health endpoints work unchanged in a FastAPI app."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import structlog
from fastapi import APIRouter, FastAPI, HTTPException
from prometheus_client import CollectorRegistry

from scalekit._clock import ManualClock
from scalekit.observability import (
    CallableCheck,
    Health,
    MetricsMiddleware,
    RequestContextMiddleware,
    current_request_id,
    metrics_endpoint_for,
)


@pytest.mark.anyio
async def test_fastapi_app_unchanged() -> None:
    registry = CollectorRegistry()
    health = Health([CallableCheck("ok", lambda: True)], clock=ManualClock())
    app = FastAPI()
    router = APIRouter(prefix="/api/v1")
    log = structlog.get_logger("tests.fastapi")

    @router.get("/tasks/{task_id}")
    async def get_task(task_id: int) -> dict[str, Any]:
        log.info("reading task", task_id=task_id)
        if task_id == 0:
            raise HTTPException(status_code=404)
        return {"task_id": task_id, "request_id": current_request_id()}

    @router.post("/crash")
    def crash() -> None:
        raise ValueError("boom")

    app.include_router(router)
    app.add_api_route("/health/live", health.live)
    app.add_api_route("/health/ready", health.ready)
    app.add_route("/metrics", metrics_endpoint_for(registry))
    # The same order scalekit.stack installs: request context outermost.
    app.add_middleware(MetricsMiddleware, registry=registry)
    app.add_middleware(RequestContextMiddleware)

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            response = await http.get("/api/v1/tasks/5", headers={"X-Request-ID": "fa-1"})
            assert response.json() == {"task_id": 5, "request_id": "fa-1"}
            assert response.headers["x-request-id"] == "fa-1"
            assert (await http.get("/api/v1/tasks/0")).status_code == 404
            crashed = await http.post("/api/v1/crash")
            assert crashed.status_code == 500
            assert len(crashed.headers["x-request-id"]) == 32
            ready = await http.get("/health/ready")
            assert ready.status_code == 200
            assert ready.headers["content-type"] == "application/health+json"
            assert (await http.get("/health/live")).json() == {"status": "pass"}
            metrics = (await http.get("/metrics")).text

    assert 'http_requests_total{method="GET",route="/api/v1/tasks/{task_id}",status="200"} 1.0' in (
        metrics
    )
    assert 'route="/api/v1/tasks/{task_id}",status="404"} 1.0' in metrics
    assert 'http_requests_total{method="POST",route="/api/v1/crash",status="500"} 1.0' in metrics
    assert "/health/" not in metrics
    reading = [line for line in logs if line["event"] == "reading task"]
    assert [line["request_id"] for line in reading] == ["fa-1", reading[1]["request_id"]]
    routes = [line["route"] for line in logs if line["event"] == "request"]
    assert routes[:3] == ["/api/v1/tasks/{task_id}", "/api/v1/tasks/{task_id}", "/api/v1/crash"]
