"""Metrics an SRE can use as they are: 1 ms buckets, no _created, breaker and readiness gauges.

Issue 12, "Metrics an SRE can use as they are".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from harness import free_port
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from scalekit import MetricsOptions, Settings, install
from scalekit.cache import CacheRule
from scalekit.observability.metrics import render_metrics
from scalekit.observability.state_metrics import StateMetrics

pytestmark = pytest.mark.anyio


async def tasks(request: Request) -> JSONResponse:
    return JSONResponse({"tasks": []})


@asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_install_buckets_start_at_1ms_and_created_series_are_off() -> None:
    app = Starlette(routes=[Route("/tasks", tasks)])
    install(app, registry=CollectorRegistry())
    async with serve(app) as client:
        await client.get("/tasks")
        text = (await client.get("/metrics")).text
    assert 'http_request_duration_seconds_bucket{le="0.001",method="GET",route="/tasks"}' in text
    assert "_created" not in text


async def test_created_series_can_be_turned_back_on() -> None:
    app = Starlette(routes=[Route("/tasks", tasks)])
    install(app, registry=CollectorRegistry(), metrics=MetricsOptions(created_series=True))
    async with serve(app) as client:
        await client.get("/tasks")
        text = (await client.get("/metrics")).text
    assert "http_requests_created" in text


async def test_breaker_state_gauge_per_backend_follows_a_redis_outage() -> None:
    # Nothing listens on this port: every Redis call fails at once.
    dead = f"redis://127.0.0.1:{free_port()}/0"
    app = Starlette(routes=[Route("/tasks", tasks)])
    install(
        app,
        Settings(redis_url=dead, rate_limit="100/minute"),
        cache_rules=[CacheRule("/tasks", ttl=60)],
        registry=CollectorRegistry(),
    )
    async with serve(app) as client:
        before = samples((await client.get("/metrics")).text)
        codes = {(await client.get("/tasks")).status_code for _ in range(10)}
        after = samples((await client.get("/metrics")).text)
    assert codes == {200}  # degraded, never amplified
    for backend in ("cache", "ratelimit"):
        key = ("scalekit_circuit_breaker_state", (("backend", backend), ("state", "closed")))
        assert before[key] == 1.0
        assert after[key] == 0.0
        opened = ("scalekit_circuit_breaker_state", (("backend", backend), ("state", "open")))
        assert after[opened] == 1.0


async def test_readiness_gauge_is_absent_then_follows_ready_and_draining() -> None:
    app = Starlette(routes=[Route("/tasks", tasks)])
    stack = install(app, registry=CollectorRegistry())
    ready = ("scalekit_ready", ())
    async with serve(app) as client:
        assert ready not in samples((await client.get("/metrics")).text)
        assert (await client.get("/health/ready")).status_code == 200
        assert samples((await client.get("/metrics")).text)[ready] == 1.0
        stack.health.start_draining()
        assert samples((await client.get("/metrics")).text)[ready] == 0.0


def test_process_collectors_join_the_workers_sum_in_multiprocess_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    state = StateMetrics()

    class Breaker:
        state = "open"

    state.watch_breaker("cache", Breaker())
    body, _ = render_metrics(None, process_collectors=[state])
    text = body.decode()
    assert 'scalekit_circuit_breaker_state{backend="cache",state="open"} 1.0' in text
