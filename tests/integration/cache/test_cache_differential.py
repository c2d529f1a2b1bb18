"""Differential fuzz: behind the cache on real Redis, every answer is the app's own answer.

Random users (``Authorization``, a session cookie, ``X-API-Key``, anonymous),
hosts, ``root_path``, paths with percent-encodings, repeated query parameters,
request ``Cache-Control``, GET and HEAD go through two cache instances sharing
one Redis. Each response is compared with what the same request gets from the
app without a cache: the same status and the same body (but for the counter of
how many times the app ran). So a body only reaches a request with the same
host, path, query and identity as the request that produced it, and nothing
answers 5xx. 20 examples of 100 requests: 2,000 requests per run.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import anyio
import httpx
from harness import RedisServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from scalekit.cache import CacheMiddleware, CacheRule, RedisCache

USERS = ["alice", "bob", "carol"]


class AnyCredential(AuthenticationBackend):
    """Bearer token, then a session cookie, then an API key: the first present wins."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        token = conn.headers.get("authorization", "").removeprefix("Bearer ")
        name = token or conn.cookies.get("session") or conn.headers.get("x-api-key")
        return (AuthCredentials(["authenticated"]), SimpleUser(name)) if name else None


def make_app(runs: list[int], cache: RedisCache | None) -> Starlette:
    async def echo(request: Request) -> JSONResponse:
        runs[0] += 1
        return JSONResponse(
            {
                "host": request.headers.get("host"),
                "root_path": request.scope.get("root_path"),
                "path": request.url.path,
                "query": sorted(
                    (name, request.query_params.getlist(name)) for name in request.query_params
                ),
                "user": request.user.display_name if request.user.is_authenticated else None,
                "run": runs[0],
            }
        )

    middleware = [Middleware(AuthenticationMiddleware, backend=AnyCredential())]
    if cache is not None:
        rules = [
            CacheRule("/public/{rest:path}", ttl=600, stale_ttl=600),
            CacheRule("/mine/{rest:path}", ttl=600, vary_user=True),
        ]
        middleware.append(Middleware(CacheMiddleware, backend=cache, rules=rules))
    routes = [Route("/public/{rest:path}", echo), Route("/mine/{rest:path}", echo)]
    return Starlette(routes=routes, middleware=middleware)


SEGMENTS = st.sampled_from(["x", "a%2Fb", "%41", "A", "caf%C3%A9", "a%20b", "x%3Fy", "7"])
QUERY = st.lists(
    st.tuples(st.sampled_from(["page", "%70age", "q", "a+b"]), st.sampled_from(["1", "2", "%FF"])),
    max_size=4,
)
CREDENTIALS = st.sampled_from(
    [{}]
    + [{"authorization": f"Bearer {user}"} for user in USERS]
    + [{"cookie": f"session={user}"} for user in USERS]
    + [{"x-api-key": user} for user in USERS]
)
REQUESTS = st.fixed_dictionaries(
    {
        "instance": st.integers(0, 1),
        "method": st.sampled_from(["GET", "GET", "GET", "HEAD"]),
        "root_path": st.sampled_from(["", "/svc"]),
        "host": st.sampled_from(["a.example", "A.example", "evil.example", "a.example:8080"]),
        "prefix": st.sampled_from(["public", "mine"]),
        "segments": st.lists(SEGMENTS, min_size=1, max_size=2),
        "query": QUERY,
        "credentials": CREDENTIALS,
        "cache_control": st.sampled_from([None, None, None, "no-cache", "max-age=0"]),
    }
)


def comparable(response: httpx.Response) -> tuple[int, Any]:
    if response.status_code >= 300 or not response.content:
        return response.status_code, None
    body = json.loads(response.content)
    body.pop("run")
    return response.status_code, body


async def run_requests(url: str, requests: list[dict[str, Any]]) -> None:
    backend = RedisCache.from_url(
        url, prefix=f"f{uuid.uuid4().hex[:8]}:", socket_timeout=2, socket_connect_timeout=2
    )
    runs = [0]
    instances = [make_app(runs, backend), make_app(runs, backend)]
    reference = make_app([0], None)
    try:

        async def one(request: dict[str, Any]) -> None:
            root = request["root_path"]
            path = f"{root}/{request['prefix']}/" + "/".join(request["segments"])
            query = "&".join(f"{name}={value}" for name, value in request["query"])
            headers = {"host": request["host"], **request["credentials"]}
            if request["cache_control"]:
                headers["cache-control"] = request["cache_control"]
            url = f"http://{request['host']}{path}" + (f"?{query}" if query else "")
            answers = []
            for app in (instances[request["instance"]], reference):
                transport = httpx.ASGITransport(app=app, root_path=root)
                async with httpx.AsyncClient(transport=transport) as client:
                    answers.append(await client.request(request["method"], url, headers=headers))
            cached, direct = answers
            assert cached.status_code < 500, cached.text
            assert comparable(cached) == comparable(direct), (
                request,
                cached.headers.get("cache-status"),
            )

        for start in range(0, len(requests), 5):  # five at a time: misses of one key collapse
            async with anyio.create_task_group() as group:
                for request in requests[start : start + 5]:
                    group.start_soon(one, request)
    finally:
        await backend.aclose()


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(requests=st.lists(REQUESTS, min_size=100, max_size=100))
def test_every_answer_is_the_apps_own_answer(
    redis_server: RedisServer, requests: list[dict[str, Any]]
) -> None:
    anyio.run(run_requests, redis_server.url, requests)
