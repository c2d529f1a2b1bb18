"""Every panel of the shipped Grafana dashboard, evaluated by a real Prometheus.

A real ``prometheus`` scrapes an app built with ``install()`` (cache and rate
limits on a real Redis, a SQLite pool) under uvicorn every second. Each
panel expression, with the dashboard's variables filled in as Grafana fills
them, must evaluate without error and return data; during a Redis outage
the cache hit ratio must be a number (0), not NaN.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import RedisServer, ServerProcess, require_binary, wait_until

DASHBOARD = Path(__file__).resolve().parents[3] / "examples" / "grafana" / "scalekit-dashboard.json"

APP = textwrap.dedent(
    """
    import os

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from scalekit import Settings, Stack, install
    from scalekit.cache import CacheRule
    from scalekit.ratelimit import Rule


    async def tasks(request: Request) -> JSONResponse:
        rows = Stack.of(request).db.query("SELECT 1 AS one")
        return JSONResponse({"tasks": rows})


    async def search(request: Request) -> JSONResponse:
        return JSONResponse({"results": []})


    async def boom(request: Request) -> JSONResponse:
        return JSONResponse({"error": "boom"}, status_code=500)


    app = Starlette(routes=[
        Route("/tasks", tasks), Route("/search", search), Route("/boom", boom),
    ])
    install(
        app,
        Settings(
            database_url=f"sqlite:///{os.environ['APP_DB']}",
            redis_url=os.environ["APP_REDIS_URL"],
            rate_limit="1000/minute",
        ),
        cache_rules=[CacheRule("/tasks", ttl=60)],
        rate_rules=[Rule("3/minute", path="/search")],
    )
    """
)


class App(ServerProcess):
    """The app above under one uvicorn worker."""

    name = "uvicorn"

    def __init__(self, workdir: Path, redis_url: str) -> None:
        super().__init__(workdir)
        (workdir / "dash_app.py").write_text(APP)
        self.redis_url = redis_url

    def argv(self) -> Sequence[str]:
        return [
            sys.executable, "-m", "uvicorn", "dash_app:app", "--app-dir", str(self.workdir),
            "--host", self.host, "--port", str(self.port), "--no-access-log",
            "--log-level", "warning",
        ]  # fmt: skip

    def start(self) -> None:
        import os

        os.environ["APP_DB"] = str(self.workdir / "app.db")
        os.environ["APP_REDIS_URL"] = self.redis_url
        try:
            super().start()
        finally:
            del os.environ["APP_DB"], os.environ["APP_REDIS_URL"]

    def probe(self) -> bool:
        return httpx.get(f"{self.url}/health/live", timeout=1.0).status_code == 200

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class Prometheus(ServerProcess):
    """A real Prometheus scraping one target every second."""

    name = "prometheus"

    def __init__(self, workdir: Path, binary: str, target: str) -> None:
        super().__init__(workdir)
        self.binary = binary
        (workdir / "prometheus.yml").write_text(
            textwrap.dedent(
                f"""
                global:
                  scrape_interval: 1s
                  evaluation_interval: 1s
                scrape_configs:
                  - job_name: app
                    static_configs:
                      - targets: ["{target}"]
                """
            )
        )

    def argv(self) -> Sequence[str]:
        return [
            self.binary,
            f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address={self.host}:{self.port}",
        ]

    def probe(self) -> bool:
        return httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert body["status"] == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


@pytest.fixture
def stack(
    tmp_path: Path, redis_server: RedisServer
) -> Iterator[tuple[App, Prometheus, RedisServer]]:
    binary = require_binary("prometheus", "prometheus")
    require_binary(sys.executable, "python3")
    app = App(tmp_path / "app", redis_server.url)
    prometheus: Prometheus | None = None
    try:
        app.start_on_free_port()
        prometheus = Prometheus(tmp_path / "prometheus", binary, f"{app.host}:{app.port}")
        prometheus.start_on_free_port()
        yield app, prometheus, redis_server
    finally:
        if prometheus is not None:
            prometheus.stop()
        app.stop()


def panel_expressions() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", ())
    ]


def as_grafana_sends(expr: str, rate_interval: str = "30s") -> str:
    """The expression with the dashboard's variables filled in (All selected)."""
    return (
        expr.replace('job=~"$job"', 'job=~"app"')
        .replace('instance=~"$instance"', 'instance=~".*"')
        .replace("$__rate_interval", rate_interval)
    )


def traffic(app: App) -> None:
    with httpx.Client(base_url=app.url, timeout=10) as client:
        for _ in range(20):
            assert client.get("/tasks").status_code == 200
        for _ in range(5):
            client.get("/search")
        client.get("/boom")
        client.get("/health/ready")


def scraped_after(prometheus: Prometheus, app: App, action: Callable[[], None]) -> None:
    """Run ``action``, then wait until Prometheus has scraped what it did."""
    with httpx.Client(base_url=app.url, timeout=10) as client:
        action()
        text = client.get("/metrics").text
    wanted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("http_requests_total{")
    )
    wait_until(
        lambda: (prometheus.value('sum(http_requests_total{job="app"})') or 0) >= wanted,
        timeout=30,
        what="a scrape after the traffic",
    )


# Panels whose series only exist after a failure this test does not cause.
MAY_BE_EMPTY = ("scalekit_db_routing_total", "scalekit_backend_errors_total")


def test_every_panel_expression_evaluates_with_data(
    stack: tuple[App, Prometheus, RedisServer],
) -> None:
    app, prometheus, _ = stack
    # Two bursts a scrape apart, so every rate() has two different samples.
    scraped_after(prometheus, app, lambda: traffic(app))
    scraped_after(prometheus, app, lambda: traffic(app))
    expressions = panel_expressions()
    assert len(expressions) >= 18
    for title, expr in expressions:
        result = prometheus.query(as_grafana_sends(expr))
        if any(name in expr for name in MAY_BE_EMPTY):
            continue
        assert result, f"panel {title!r} returned no data: {expr}"
        for series in result:
            value = float(series["value"][1])
            assert not math.isnan(value), f"panel {title!r} is NaN: {series}"


def test_cache_hit_ratio_is_zero_not_nan_during_a_redis_outage(
    stack: tuple[App, Prometheus, RedisServer],
) -> None:
    app, prometheus, redis = stack
    (ratio,) = [expr for title, expr in panel_expressions() if title == "Cache hit ratio by rule"]
    scraped_after(prometheus, app, lambda: traffic(app))
    redis.stop()
    window = "4s"
    hits = f'sum(rate(scalekit_cache_events_total{{job="app",event=~"hit|stale|miss"}}[{window}]))'
    bypasses = f'sum(rate(scalekit_cache_events_total{{job="app",event="bypass"}}[{window}]))'

    def outage_only() -> bool:
        # Keep the outage traffic flowing until the window holds no hit or miss.
        with httpx.Client(base_url=app.url, timeout=10) as client:
            assert client.get("/tasks").status_code == 200  # bypassed, still served
        return prometheus.value(hits) == 0.0 and (prometheus.value(bypasses) or 0.0) > 0

    wait_until(outage_only, timeout=60, what="a rate window with only bypasses")
    result = prometheus.query(as_grafana_sends(ratio, window))
    assert result, "the hit ratio went blank during the outage"
    assert [float(series["value"][1]) for series in result] == [0.0]
    # The expression the dashboard had before divided by hits and misses only: NaN now.
    old = (
        f'sum by (rule) (rate(scalekit_cache_events_total{{job="app",event="hit"}}[{window}])) '
        f'/ sum by (rule) (rate(scalekit_cache_events_total{{job="app",event=~"hit|miss|stale"}}'
        f"[{window}]))"
    )
    assert all(math.isnan(float(series["value"][1])) for series in prometheus.query(old))
    breakers = prometheus.query('scalekit_circuit_breaker_state{job="app",state="open"} == 1')
    assert {series["metric"]["backend"] for series in breakers} >= {"cache"}
