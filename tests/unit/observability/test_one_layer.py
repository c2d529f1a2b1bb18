"""RequestContextMiddleware(metrics=RequestMetrics(...)) is the two layers in one.

Every request below goes through both set-ups: the one layer, and
RequestContextMiddleware with MetricsMiddleware behind it. The access lines
and the metrics must agree in everything but timings and random ids.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from scalekit.observability import (
    MetricsMiddleware,
    RequestContextMiddleware,
    RequestMetrics,
    metrics_endpoint,
    new_request_id,
)
from scalekit.observability.metrics import render_metrics


async def ok(request: Request) -> Response:
    return PlainTextResponse("ok" * 10)


async def boom(request: Request) -> Response:
    raise RuntimeError("kaboom")


async def late_boom(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        yield b"first part"
        raise RuntimeError("kaboom after the start")

    return StreamingResponse(body())


async def teapot(request: Request) -> Response:
    return Response(b"", status_code=418)


def routes() -> list[Any]:
    return [
        Route("/items/{item_id}", ok, methods=["GET", "PUT"]),
        Route("/boom", boom),
        Route("/late-boom", late_boom),
        Route("/teapot", teapot),
        Route("/metrics", metrics_endpoint),
        Route("/health/live", ok),
        Mount("/api/{version}", routes=[Route("/users/{user_id:int}", ok)]),
    ]


def one_layer(registry: CollectorRegistry, **metrics: Any) -> Starlette:
    counter = RequestMetrics(registry=registry, **metrics)
    return Starlette(
        routes=routes(),
        middleware=[Middleware(RequestContextMiddleware, metrics=counter, quiet_paths=["/teapot"])],
    )


def two_layers(registry: CollectorRegistry, **metrics: Any) -> Starlette:
    return Starlette(
        routes=routes(),
        middleware=[
            Middleware(RequestContextMiddleware, quiet_paths=["/teapot"]),
            Middleware(MetricsMiddleware, registry=registry, **metrics),
        ],
    )


REQUESTS = [
    ("GET", "/items/1", {}),
    ("GET", "/items/2", {"X-Request-ID": "kept-id"}),
    ("HEAD", "/items/3", {}),
    ("PUT", "/items/4", {}),
    ("POST", "/items/5", {}),  # 405
    ("GET", "/nowhere", {}),  # 404
    ("BREW", "/items/6", {}),  # an unknown method
    ("GET", "/boom", {}),  # raises before the response starts
    ("GET", "/late-boom", {}),  # raises after it started
    ("GET", "/teapot", {}),  # quiet: debug level
    ("GET", "/metrics", {}),  # not counted
    ("GET", "/health/live", {}),  # not counted
    ("GET", "/api/v1/users/7", {}),
    ("GET", "/api/v2/users/x", {}),  # the converter refuses: 404
    ("GET", "/items/7", {"X-Request-ID": "bad id with spaces"}),
]


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as captured:
        yield captured


async def drive(app: Starlette) -> list[tuple[int, bool]]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=("10.0.0.1", 9))
    seen = []
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        for method, path, headers in REQUESTS:
            try:
                response = await http.request(method, path, headers=headers)
            except httpx.RemoteProtocolError:  # the body broke off after the start
                seen.append((-1, True))
                continue
            seen.append((response.status_code, "x-request-id" in response.headers))
    return seen


def normalised_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # the traceback text names the frames of each layout
    timing_and_random = {"duration_ms", "request_id", "exc_info", "exception", "length"}
    return [
        {
            key: value
            for key, value in line.items()
            # the size of a /metrics body depends on the timings it shows
            if key not in timing_and_random and not (key == "bytes" and line["path"] == "/metrics")
        }
        for line in lines
    ]


def counted(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample except the sums of durations (timings differ)."""
    body, _ = render_metrics(registry)
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_created")):
                continue
            labels = dict(sample.labels)
            if sample.name.endswith("_bucket"):
                continue  # timings decide the bucket; _count below holds the total
            found[(sample.name, tuple(sorted(labels.items())))] = sample.value
    return found


@pytest.mark.anyio
@pytest.mark.parametrize("options", [{}, {"max_routes": 2}], ids=["no-cap", "max_routes=2"])
async def test_one_layer_logs_and_counts_what_two_layers_do(
    logs: list[dict[str, Any]], options: dict[str, Any]
) -> None:
    one_registry, two_registry = CollectorRegistry(), CollectorRegistry()
    one = await drive(one_layer(one_registry, **options))
    one_lines = list(logs)
    logs.clear()
    two = await drive(two_layers(two_registry, **options))
    assert one == two
    assert all(has_id for _, has_id in one)
    assert normalised_lines(one_lines) == normalised_lines(logs)
    assert len([line for line in one_lines if line["event"] == "request"]) == len(REQUESTS)
    assert counted(one_registry) == counted(two_registry)
    totals = {
        labels: value
        for (name, labels), value in counted(one_registry).items()
        if name == "http_requests_total"
    }
    assert sum(totals.values()) == len(REQUESTS) - 2  # /metrics and /health/live not counted


@pytest.mark.anyio
async def test_the_registry_reaches_the_metrics_endpoint_behind_one_layer() -> None:
    registry = CollectorRegistry()
    transport = httpx.ASGITransport(app=one_layer(registry))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        await http.get("/items/1")
        body = (await http.get("/metrics")).text
    assert 'http_requests_total{method="GET",route="/items/{item_id}",status="200"} 1.0' in body


def test_ids_are_32_hex_digits_and_distinct() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(value) == 32 and int(value, 16) >= 0 for value in ids)


def test_a_forked_child_never_reuses_an_id_its_parent_read() -> None:
    new_request_id()  # the parent now holds ids read ahead
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads running
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write_end, new_request_id().encode())
        os._exit(0)
    os.close(write_end)
    child_id = os.read(read_end, 64).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert len(child_id) == 32
    assert child_id != new_request_id()
