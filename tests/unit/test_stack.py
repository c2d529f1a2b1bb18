"""install() wires every piece in the right order; Settings from keywords and env."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from scalekit import Settings, install
from scalekit._net import ForwardedHeader
from scalekit.cache import CacheRule
from scalekit.ratelimit import Rule, user

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan run, and a client for it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


class HeaderAuth(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        name = conn.headers.get("x-user")
        return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None


runs = {"tasks": 0}


async def tasks(request: Request) -> JSONResponse:
    runs["tasks"] += 1
    return JSONResponse({"user": request.user.display_name, "run": runs["tasks"]})


def build(app: Starlette, tmp_path: Path) -> tuple[Starlette, CollectorRegistry]:
    registry = CollectorRegistry()
    settings = Settings(database_url=f"sqlite:///{tmp_path}/app.db", rate_limit="100/minute")
    stack = install(
        app,
        settings,
        auth_backend=HeaderAuth(),
        cache_rules=[CacheRule("/tasks", ttl=60, vary_user=True)],
        rate_rules=[Rule("2/minute", key=user, path="/tasks", name="per-user")],
        registry=registry,
    )
    assert stack.db is not None
    return app, registry


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
async def test_install_wires_the_whole_stack_in_order(tmp_path: Path, framework: str) -> None:
    runs["tasks"] = 0
    if framework == "starlette":
        app: Starlette = Starlette(routes=[Route("/tasks", tasks)])
    else:
        app = FastAPI()
        app.add_api_route("/tasks", tasks)
    app, _registry = build(app, tmp_path)
    async with serve(app) as client:
        first = await client.get("/tasks", headers={"x-user": "ann", "x-request-id": "req-1"})
        assert first.status_code == 200
        assert first.headers["x-request-id"] == "req-1"  # request context is outermost
        assert "fwd=miss" in first.headers["cache-status"]
        # Authentication runs before the cache: another user does not get ann's entry.
        bob = await client.get("/tasks", headers={"x-user": "bob"})
        assert bob.json()["user"] == "bob"
        hit = await client.get("/tasks", headers={"x-user": "ann"})
        assert hit.headers["cache-status"] == "scalekit; hit"
        assert runs["tasks"] == 2
        # ...and before the rate limiter: the per-user rule counts ann and bob apart.
        assert (await client.get("/tasks", headers={"x-user": "ann"})).status_code == 429
        limited = await client.get("/tasks", headers={"x-user": "ann"})
        assert limited.status_code == 429
        assert "x-request-id" in limited.headers  # the 429 went through the outer layers
        assert (await client.get("/health/live")).status_code == 200
        ready = await client.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json()["status"] == "pass"
        metrics = (await client.get("/metrics")).text
    assert 'http_requests_total{method="GET",route="/tasks",status="429"} 2.0' in metrics
    assert 'http_requests_total{method="GET",route="/tasks",status="200"} 3.0' in metrics
    assert "/health/ready" not in metrics


async def test_lifespan_closes_what_install_opened(tmp_path: Path) -> None:
    app = Starlette(routes=[Route("/tasks", tasks)])
    stack = install(
        app, Settings(database_url=f"sqlite:///{tmp_path}/app.db"), registry=CollectorRegistry()
    )
    async with serve(app) as client:
        assert (await client.get("/health/ready")).json()["status"] == "pass"
        assert stack.db.query("SELECT 1 AS one") == [{"one": 1}]
    assert stack.db.primary.stats().open == 0
    assert not stack._closers


async def test_with_no_settings_everything_is_in_process() -> None:
    app = Starlette(routes=[Route("/tasks", tasks)])
    stack = install(app, registry=CollectorRegistry())
    assert stack.db is None
    async with serve(app) as client:
        assert (await client.get("/health/ready")).json()["status"] == "pass"


def test_settings_from_env() -> None:
    settings = Settings.from_env(
        {
            "SCALEKIT_DATABASE_URL": "mysql://app:pw@db:3306/tasks",
            "SCALEKIT_REPLICA_URLS": "mysql://app:pw@r1/tasks, mysql://app:pw@r2/tasks",
            "SCALEKIT_REDIS_URL": "redis://cache:6379/0",
            "SCALEKIT_TRUSTED_PROXIES": "10.0.0.0/8,127.0.0.1",
            "SCALEKIT_FORWARDED_HEADER": "X-Real-IP",
            "SCALEKIT_RATE_LIMIT": "100/15 minutes",
            "SCALEKIT_MAX_LAG": "1.5",
            "SCALEKIT_ACCESS_LOG": "false",
            "UNRELATED": "x",
        }
    )
    assert settings.replica_urls == ("mysql://app:pw@r1/tasks", "mysql://app:pw@r2/tasks")
    assert settings.trusted_proxies == ("10.0.0.0/8", "127.0.0.1")
    assert settings.forwarded_header is ForwardedHeader.X_REAL_IP
    assert settings.max_lag == 1.5
    assert settings.access_log is False
    assert Settings.from_env({}) == Settings()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SCALEKIT_MAX_LAG": "soon"}, "SCALEKIT_MAX_LAG must be a number"),
        ({"SCALEKIT_ACCESS_LOG": "maybe"}, "SCALEKIT_ACCESS_LOG must be true or false"),
        ({"SCALEKIT_MAX_LAG": "9"}, "must exceed max_lag"),
        ({"SCALEKIT_REPLICA_URLS": "mysql://r1/x"}, "need a database_url"),
        ({"SCALEKIT_METRICS_PATH": "metrics"}, "must start with '/'"),
        ({"SCALEKIT_FORWARDED_HEADER": "auto"}, "SCALEKIT_FORWARDED_HEADER must be one of"),
    ],
)
def test_bad_settings_say_what_to_fix(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env(environ)


async def test_install_reads_the_client_address_from_the_configured_header() -> None:
    async def home(request: Request) -> JSONResponse:
        return JSONResponse({})

    app = Starlette(routes=[Route("/", home)])
    settings = Settings(
        rate_limit="2/minute", trusted_proxies=("127.0.0.1",), forwarded_header="x-real-ip"
    )
    install(app, settings, registry=CollectorRegistry())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            # the limiter keys on X-Real-IP; X-Forwarded-For and Forwarded are ignored
            statuses = [
                (
                    await http.get(
                        "/", headers={"X-Real-IP": "203.0.113.9", "X-Forwarded-For": f"10.0.0.{i}"}
                    )
                ).status_code
                for i in range(3)
            ]
            other = await http.get("/", headers={"X-Real-IP": "203.0.113.10"})
    assert statuses == [200, 200, 429]
    assert other.status_code == 200
    with pytest.raises(ValueError, match="forwarded_header must be one of"):
        Settings(forwarded_header="auto")


def test_settings_and_install_import_without_extras() -> None:
    code = (
        "import sys\n"
        "for name in ('redis', 'limits', 'pymysql', 'dbutils'):\n"
        "    sys.modules[name] = None\n"
        "from scalekit import Settings, install\n"
        "print(Settings().redis_url, install.__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "install"]


class UnreachableCache:
    """A cache backend whose invalidations fail, as RedisCache's do while Redis is down."""

    def __init__(self) -> None:
        from scalekit.cache import MemoryCache

        self.memory = MemoryCache()

    def __getattr__(self, name: str) -> object:
        return getattr(self.memory, name)

    async def invalidate(self, *tags: str) -> None:
        from scalekit.cache import CacheUnavailable

        raise CacheUnavailable("Redis cache skipped for a cool-down (invalidate)")


async def test_stack_invalidate_after_a_write_never_turns_an_outage_into_a_500() -> None:
    import structlog

    from scalekit import CacheOptions, Stack
    from scalekit.cache import CacheUnavailable

    notes: list[str] = []

    async def add(request: Request) -> JSONResponse:
        notes.append(request.query_params["text"])
        invalidated = await Stack.of(request).invalidate("notes")
        return JSONResponse({"added": len(notes), "invalidated": invalidated})

    app = Starlette(routes=[Route("/notes", add, methods=["POST"])])
    stack = install(
        app,
        registry=CollectorRegistry(),
        cache=CacheOptions(backend=UnreachableCache()),  # type: ignore[arg-type]
    )
    with structlog.testing.capture_logs() as logs:
        async with serve(app) as client:
            response = await client.post("/notes", params={"text": "hi"})
    assert response.status_code == 200  # the write happened: never a 500 for it
    assert response.json() == {"added": 1, "invalidated": False}
    assert [line["tags"] for line in logs if line["event"] == "cache invalidation failed"] == [
        ["notes"]
    ]
    with pytest.raises(CacheUnavailable):  # the backend itself still says what happened
        await stack.cache.invalidate("notes")
