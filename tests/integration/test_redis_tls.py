"""The cache and the limiter on a real redis-server that speaks only TLS.

The server's certificate is signed by a CA the harness made, and it asks
for a client certificate, so nothing works unless ``ssl_ca_certs``,
``ssl_certfile`` and ``ssl_keyfile`` from the URL reach redis-py.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from harness import TLSRedisServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from scalekit import _redis
from scalekit.cache import CacheBackendError, CacheMiddleware, CacheRule, RedisCache
from scalekit.ratelimit import RateLimitMiddleware, Rule

pytestmark = pytest.mark.anyio


# A TLS handshake is CPU work: on a busy test machine it can take longer
# than the production defaults, and a timed-out call would fail open.
PATIENT = "&socket_timeout=2&socket_connect_timeout=2"


async def _home(request: Request) -> PlainTextResponse:
    return PlainTextResponse(uuid.uuid4().hex)


def http(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


APP = Starlette(routes=[Route("/items", _home)])


async def test_cache_over_tls_with_a_private_ca(redis_tls_server: TLSRedisServer) -> None:
    # Regression: the URL's ssl_* options were dropped, so every call failed
    # certificate verification and the cache was bypassed for good.
    url = f"{redis_tls_server.url}&health_check_interval=30{PATIENT}"
    backend = RedisCache.from_url(url, prefix=f"tls{uuid.uuid4().hex[:6]}:")
    app = CacheMiddleware(APP, backend, [CacheRule("/items", ttl=60, tags=["items"])])
    try:
        async with http(app) as client:
            first = await client.get("/items")
            assert first.headers["cache-status"] == "scalekit; fwd=miss; stored"
            second = await client.get("/items")
            assert second.headers["cache-status"] == "scalekit; hit"
            assert second.text == first.text
            backend.invalidate_sync("items")  # the blocking client goes over TLS too
            third = await client.get("/items")
            assert third.headers["cache-status"] == "scalekit; fwd=miss; stored"
        assert backend.errors == 0
    finally:
        await backend.aclose()


async def test_limiter_over_tls_with_a_private_ca(redis_tls_server: TLSRedisServer) -> None:
    rule = Rule("3/minute", name=f"tls{uuid.uuid4().hex[:6]}")
    app = RateLimitMiddleware(APP, redis_tls_server.url + PATIENT, [rule])
    try:
        async with http(app) as client:
            statuses = [(await client.get("/items")).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
    finally:
        await app.aclose()


async def test_without_the_ca_nothing_is_trusted(redis_tls_server: TLSRedisServer) -> None:
    certs = redis_tls_server.certificates
    url = (
        f"rediss://{redis_tls_server.host}:{redis_tls_server.port}/0"
        f"?ssl_certfile={certs.client_cert}&ssl_keyfile={certs.client_key}{PATIENT}"
    )
    backend = RedisCache.from_url(url, prefix="tls-no-ca:")
    limiter = RateLimitMiddleware(APP, url, [Rule("3/minute", on_backend_error="deny")])
    try:
        with pytest.raises(CacheBackendError, match="certificate verify failed"):
            await backend.invalidate("items")
        async with http(limiter) as client:
            assert (await client.get("/items")).status_code == 503
    finally:
        await backend.aclose()
        await limiter.aclose()


async def test_client_options_from_the_url_reach_a_live_connection(
    redis_tls_server: TLSRedisServer,
) -> None:
    client = _redis.from_url(f"{redis_tls_server.url}&client_name=scalekit-tls&protocol=3{PATIENT}")
    try:
        assert await client.ping()
        assert await client.client_getname() == b"scalekit-tls"
        info = await client.execute_command("CLIENT", "INFO")
        assert b"resp=3" in info
    finally:
        await client.aclose()
