"""FastAPI under the cache, and ETags that agree across processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cache_helpers import RecordingApp, call
from fastapi import FastAPI, Request
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection

from scalekit.cache import CacheMiddleware, CacheRule, MemoryCache

pytestmark = pytest.mark.anyio
HERE = Path(__file__).resolve().parent


class TokenAuth(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        token = conn.headers.get("authorization", "")
        if not token.startswith("Bearer "):
            return None
        return AuthCredentials(["authenticated"]), SimpleUser(token.removeprefix("Bearer "))


async def test_fastapi_app_with_starlette_authentication() -> None:
    runs = {"count": 0}
    backend = MemoryCache()
    rule = CacheRule(
        "/api/v1/tasks",
        ttl=300,
        vary_user=True,
        tags=lambda request: [f"user:{request.user.identity}:tasks"],
        invalidate_on=("POST",),
    )
    # Outermost first: authentication sets scope["user"] before the cache keys on it.
    api = FastAPI(
        middleware=[
            Middleware(AuthenticationMiddleware, backend=TokenAuth()),
            Middleware(CacheMiddleware, backend=backend, rules=[rule]),
        ]
    )

    @api.get("/api/v1/tasks")
    async def tasks(request: Request) -> dict[str, object]:
        runs["count"] += 1
        return {"user": request.user.identity, "tasks": [1, 2, 3]}

    @api.post("/api/v1/tasks", status_code=201)
    async def create(request: Request) -> dict[str, str]:
        return {"ok": request.user.identity}

    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        alice = {"authorization": "Bearer alice"}
        first = await client.get("/api/v1/tasks", headers=alice)
        second = await client.get("/api/v1/tasks", headers=alice)
        bob = await client.get("/api/v1/tasks", headers={"authorization": "Bearer bob"})
        anonymous = await client.get("/api/v1/tasks")
        assert first.headers["cache-status"] == "scalekit; fwd=miss; stored"
        assert second.headers["cache-status"] == "scalekit; hit"
        assert second.json() == {"user": "alice", "tasks": [1, 2, 3]}
        assert bob.json()["user"] == "bob"
        assert anonymous.headers["cache-status"] == "scalekit; fwd=bypass; detail=no-identity"
        assert runs["count"] == 3
        assert (await client.post("/api/v1/tasks", headers=alice)).status_code == 201
        after = await client.get("/api/v1/tasks", headers=alice)
        assert after.headers["cache-status"] == "scalekit; fwd=miss; stored"
        not_modified = await client.get(
            "/api/v1/tasks", headers={**alice, "if-none-match": after.headers["etag"]}
        )
        assert not_modified.status_code == 304
        assert not_modified.content == b""


ETAG_SCRIPT = """
import asyncio, sys
sys.path.insert(0, sys.argv[1])
from cache_helpers import RecordingApp, call
from scalekit.cache import CacheMiddleware, CacheRule, MemoryCache
app = RecordingApp(body_of=lambda scope: b'{"same": "body"}')
middleware = CacheMiddleware(app, MemoryCache(), [CacheRule("/items", ttl=60)])
print(asyncio.run(call(middleware)).header("etag"))
"""


async def test_etag_is_the_same_in_another_process() -> None:
    app = RecordingApp(body_of=lambda scope: b'{"same": "body"}')
    mine = await call(CacheMiddleware(app, MemoryCache(), [CacheRule("/items", ttl=60)]))
    other = subprocess.run(  # noqa: ASYNC221 - a short child process, nothing else runs
        [sys.executable, "-c", ETAG_SCRIPT, str(HERE)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert other.stdout.strip() == mine.header("etag")
