"""Every panel of the shipped Grafana dashboard, evaluated by a real Prometheus.

A real ``prometheus`` scrapes the example task API (``examples/taskapi``)
every second, started as ``make demo`` starts it (``python -m
examples.taskapi``, ``SCALEKIT_ENV=development``, SQLite files in a temp
dir, in-memory cache and limits) on a free loopback port. The test drives it
as a user would (register, log in, create a task, list it twice for a cache
miss then a hit, read a missing task, fail to log in until the login limit
answers 429); each panel expression, with the dashboard's variables filled in
as Grafana fills them, must then evaluate without error to a number.

The outage test starts the same app on a real Redis (``SCALEKIT_REDIS_URL``)
and stops the Redis: the cache hit ratio must be a number (0), not NaN, and
the panels that only a remote backend feeds (breakers, backend errors) must
show the outage.
"""

from __future__ import annotations

import json
import math
import os
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import RedisServer, ServerProcess, require_binary, wait_until

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "examples" / "grafana" / "scalekit-dashboard.json"
PASSWORD = "correct horse battery staple"


class TaskApi(ServerProcess):
    """``python -m examples.taskapi`` (what ``make demo`` runs) under one uvicorn worker."""

    name = "taskapi"
    start_timeout = 60.0

    def __init__(self, workdir: Path, env: Mapping[str, str] | None = None) -> None:
        super().__init__(workdir)
        self.env = {
            "SCALEKIT_ENV": "development",
            "TASKAPI_DATA_DIR": str(workdir / "data"),
            **(env or {}),
        }

    def argv(self) -> Sequence[str]:
        # Only the variables given here: none of the caller's SCALEKIT_* or TASKAPI_*.
        inherited = [
            f"-u{name}" for name in os.environ if name.startswith(("SCALEKIT_", "TASKAPI_"))
        ]
        assignments = [f"{name}={value}" for name, value in sorted(self.env.items())]
        return [
            "env", *inherited, f"PYTHONPATH={ROOT}", *assignments,
            sys.executable, "-m", "examples.taskapi", "--host", self.host, "--port", str(self.port),
        ]  # fmt: skip

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


def scraped(
    tmp_path: Path, env: Mapping[str, str] | None = None
) -> Iterator[tuple[TaskApi, Prometheus]]:
    binary = require_binary("prometheus", "prometheus")
    app = TaskApi(tmp_path / "app", env)
    prometheus: Prometheus | None = None
    try:
        app.start_on_free_port()
        prometheus = Prometheus(tmp_path / "prometheus", binary, f"{app.host}:{app.port}")
        prometheus.start_on_free_port()
        yield app, prometheus
    finally:
        if prometheus is not None:
            prometheus.stop()
        app.stop()


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[TaskApi, Prometheus]]:
    """The task API as ``make demo`` runs it, and a Prometheus scraping it."""
    yield from scraped(tmp_path)


@pytest.fixture
def on_redis(
    tmp_path: Path, redis_server: RedisServer
) -> Iterator[tuple[TaskApi, Prometheus, RedisServer]]:
    """The task API with its cache and limits on a real Redis, and a Prometheus."""
    redis_server.flushall()
    for app, prometheus in scraped(tmp_path, {"SCALEKIT_REDIS_URL": redis_server.url}):
        yield app, prometheus, redis_server


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


class User:
    """One user of the task API, registered and logged in on first use."""

    def __init__(self, client: httpx.Client, name: str) -> None:
        self.client = client
        self.email = f"{name}@example.com"
        response = client.post(
            "/api/v1/auth/register",
            json={"email": self.email, "username": name, "password": PASSWORD},
        )
        assert response.status_code == 201, response.text
        response = client.post(
            "/api/v1/auth/login", json={"email": self.email, "password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        self.headers = {"Authorization": f"Bearer {response.json()['access_token']}"}

    def list_tasks(self) -> httpx.Response:
        response = self.client.get("/api/v1/tasks", headers=self.headers)
        assert response.status_code == 200, response.text
        return response


def traffic(client: httpx.Client, user: User) -> None:
    """What a user does in a minute: every route class, a cache miss and hit, errors."""
    created = client.post("/api/v1/tasks", json={"title": "write the test"}, headers=user.headers)
    assert created.status_code == 201, created.text
    user.list_tasks()  # a miss: the create invalidated the list
    user.list_tasks()  # a hit
    task = client.get(f"/api/v1/tasks/{created.json()['id']}", headers=user.headers)
    assert task.status_code == 200, task.text
    assert client.get("/api/v1/tasks/999999", headers=user.headers).status_code == 404
    assert client.get("/api/v1/tasks").status_code == 401
    client.get("/health/ready")


def failed_logins(client: httpx.Client, user: User) -> list[int]:
    """Six wrong passwords: the login limit (5 failures per IP) answers the sixth with 429."""
    return [
        client.post(
            "/api/v1/auth/login", json={"email": user.email, "password": "not the password"}
        ).status_code
        for _ in range(6)
    ]


def scraped_after(prometheus: Prometheus, app: TaskApi, action: Callable[[], None]) -> None:
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


# Fed only by a replica (routing) or by a remote backend failing (errors, breakers):
# the embedded demo has neither; the outage test below shows the last two.
NEEDS_A_REPLICA = "scalekit_db_routing_total"
NEEDS_A_REMOTE_BACKEND = ("scalekit_backend_errors_total", "scalekit_circuit_breaker_state")


def test_every_panel_expression_has_data_on_the_example_task_api(
    demo: tuple[TaskApi, Prometheus],
) -> None:
    app, prometheus = demo
    codes: list[int] = []
    with httpx.Client(base_url=app.url, timeout=30) as client:

        def burst(name: str, *, fail_logins: bool) -> None:
            # Every route in every burst: a route idle for a whole window has a NaN p99.
            user = User(client, name)
            traffic(client, user)
            if fail_logins:
                codes.extend(failed_logins(client, user))

        # Two bursts a scrape apart, so every rate() has two different samples.
        scraped_after(prometheus, app, lambda: burst("ada", fail_logins=False))
        scraped_after(prometheus, app, lambda: burst("grace", fail_logins=True))
    assert codes == [401] * 5 + [429]
    expressions = panel_expressions()
    assert len(expressions) >= 18
    empty: set[str] = set()
    for title, expr in expressions:
        result = prometheus.query(as_grafana_sends(expr))
        if not result:
            empty.add(expr)
            continue
        for series in result:
            value = float(series["value"][1])
            assert not math.isnan(value), f"panel {title!r} is NaN: {series}"
    assert empty == {
        expr
        for _, expr in expressions
        if NEEDS_A_REPLICA in expr or any(name in expr for name in NEEDS_A_REMOTE_BACKEND)
    }
    (errors,) = [expr for title, expr in expressions if title == "5xx ratio"]
    assert prometheus.value(as_grafana_sends(errors)) == 0.0  # nothing failed: 0, not blank
    hits = 'sum(scalekit_cache_events_total{job="app",event="hit"})'
    assert prometheus.value(hits) == 2.0  # the second list of each burst
    denied = 'sum(scalekit_ratelimit_decisions_total{job="app",decision="limited"})'
    assert prometheus.value(denied) == 1.0  # the sixth failed login


def test_cache_hit_ratio_is_zero_not_nan_during_a_redis_outage(
    on_redis: tuple[TaskApi, Prometheus, RedisServer],
) -> None:
    app, prometheus, redis = on_redis
    expressions = dict(panel_expressions())
    with httpx.Client(base_url=app.url, timeout=30) as client:
        user = User(client, "ada")
        scraped_after(prometheus, app, lambda: traffic(client, user))
        redis.stop()
        window = "4s"
        served = (
            f'sum(rate(scalekit_cache_events_total{{job="app",event=~"hit|stale|miss"}}[{window}]))'
        )
        bypasses = f'sum(rate(scalekit_cache_events_total{{job="app",event="bypass"}}[{window}]))'

        def outage_only() -> bool:
            # Keep the outage traffic flowing until the window holds no hit or miss.
            user.list_tasks()  # bypassed, still served
            return prometheus.value(served) == 0.0 and (prometheus.value(bypasses) or 0.0) > 0

        wait_until(outage_only, timeout=60, what="a rate window with only bypasses")
    result = prometheus.query(as_grafana_sends(expressions["Cache hit ratio by rule"], window))
    assert result, "the hit ratio went blank during the outage"
    assert [float(series["value"][1]) for series in result] == [0.0]
    # The expression the dashboard had before divided by hits and misses only: NaN now.
    old = (
        f'sum by (rule) (rate(scalekit_cache_events_total{{job="app",event="hit"}}[{window}])) '
        f'/ sum by (rule) (rate(scalekit_cache_events_total{{job="app",event=~"hit|miss|stale"}}'
        f"[{window}]))"
    )
    assert all(math.isnan(float(series["value"][1])) for series in prometheus.query(old))
    # The panels only a remote backend feeds show the outage.
    breakers = prometheus.query(as_grafana_sends(expressions["Circuit breakers open (instances)"]))
    assert {series["metric"]["backend"] for series in breakers if float(series["value"][1])} >= {
        "cache"
    }
    errors = as_grafana_sends(expressions["Backend errors (degraded around)"])

    def components_erring() -> set[str]:
        return {series["metric"]["component"] for series in prometheus.query(errors)}

    # A rate needs two scrapes of the counter, which appears with the first error.
    wait_until(
        lambda: components_erring() == {"cache", "ratelimit"},
        timeout=30,
        what="the backend errors panel showing the cache and the limiter",
    )
