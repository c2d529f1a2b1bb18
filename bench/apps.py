"""The apps every HTTP variant of bench/run_all.py serves, one factory for all.

``uvicorn apps:create_app --factory`` builds the variant named by
``BENCH_VARIANT`` against the Redis at ``BENCH_REDIS_URL``. Every variant
serves the same endpoint, ``GET /items/{item_id}``, answering the same
~1.1 KB JSON document (:func:`payload`); only what stands in front of it
changes. Limits are never reached (``LIMIT``) and cache entries never expire
during a run, so the rate-limit variants measure an admitted request with its
headers and the cache variants measure hits.

Components (joined with ``+`` in a variant name, outermost first):

- ``obs``: scalekit's request context (id, JSON access line written by
  ``configure_logging`` to /dev/null) and request metrics, in one layer as
  ``install()`` puts them.
- ``ratelimit``: ``RateLimitMiddleware`` on Redis, ``RateLimit`` headers on.
- ``cache``: ``CacheMiddleware`` + ``RedisCache``.
- ``install``: ``scalekit.install()`` with all of the above plus health.
- ``correlation-id`` + ``exporter``: asgi-correlation-id and starlette-exporter.
- ``slowapi``: slowapi's middleware on Redis, headers on.
- ``fastapi-cache2``: fastapi-cache2's ``@cache`` on Redis (FastAPI only).
- ``instrumentator``: prometheus-fastapi-instrumentator (FastAPI only).
- ``fastapi-limiter``: fastapi-limiter's dependency on a pyrate-limiter Redis bucket.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

PATH = "/items/42"
ROUTE = "/items/{item_id}"
LIMIT = "1000000/minute"
"""Never reached: the rate-limit variants measure admitted requests."""


def payload(item_id: str) -> dict[str, Any]:
    """The ~1.1 KB JSON document every variant answers."""
    return {
        "id": item_id,
        "name": "widget catalogue",
        "items": [
            {"n": n, "name": f"widget-{n:04d}", "price": n * 1.25, "stock": n * 7}
            for n in range(20)
        ],
    }


def _devnull_logging() -> None:
    from scalekit.observability import configure_logging

    configure_logging(json=True, stream=open(os.devnull, "w"))  # noqa: SIM115


def create_app() -> Any:
    """The app of the variant named by ``BENCH_VARIANT``."""
    variant = os.environ.get("BENCH_VARIANT", "starlette")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    framework, _, stack = variant.partition(":")
    parts = stack.split("+") if stack else []
    if framework == "starlette":
        return _starlette_app(parts, redis_url)
    if framework == "fastapi":
        return _fastapi_app(parts, redis_url)
    raise SystemExit(f"unknown BENCH_VARIANT {variant!r}: starlette[:...] or fastapi[:...]")


# -- Starlette ---------------------------------------------------------------
def _starlette_app(parts: list[str], redis_url: str) -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def item(request: Request) -> JSONResponse:
        return JSONResponse(payload(request.path_params["item_id"]))

    app = Starlette(routes=[Route(ROUTE, item)])
    middleware: list[Middleware] = []  # outermost first
    for part in parts:
        middleware.extend(_STARLETTE_PARTS[part](app, redis_url))
    app.user_middleware[0:0] = middleware
    return app


def _obs(app: Any, redis_url: str) -> list[Any]:
    from starlette.middleware import Middleware

    from scalekit.observability import RequestContextMiddleware, RequestMetrics, metrics_endpoint

    _devnull_logging()
    app.add_route("/metrics", metrics_endpoint)
    return [Middleware(RequestContextMiddleware, metrics=RequestMetrics())]


def _ratelimit(app: Any, redis_url: str) -> list[Any]:
    from starlette.middleware import Middleware

    from scalekit.ratelimit import RateLimitMiddleware, Rule

    return [Middleware(RateLimitMiddleware, storage=redis_url, rules=[Rule(LIMIT, name="api")])]


def _cache(app: Any, redis_url: str) -> list[Any]:
    from starlette.middleware import Middleware

    from scalekit.cache import CacheMiddleware, CacheRule, RedisCache

    backend = RedisCache.from_url(redis_url, prefix="bench:")
    return [Middleware(CacheMiddleware, backend=backend, rules=[CacheRule(ROUTE, ttl=3600)])]


def _install(app: Any, redis_url: str) -> list[Any]:
    from scalekit import Settings, install
    from scalekit.cache import CacheRule

    _devnull_logging()
    install(
        app,
        Settings(redis_url=redis_url, rate_limit=LIMIT),
        cache_rules=[CacheRule(ROUTE, ttl=3600)],
    )
    return []


def _correlation_id(app: Any, redis_url: str) -> list[Any]:
    from asgi_correlation_id import CorrelationIdMiddleware
    from starlette.middleware import Middleware

    return [Middleware(CorrelationIdMiddleware)]


def _exporter(app: Any, redis_url: str) -> list[Any]:
    from starlette.middleware import Middleware
    from starlette_exporter import PrometheusMiddleware, handle_metrics

    app.add_route("/metrics", handle_metrics)
    return [Middleware(PrometheusMiddleware, group_paths=True)]


def _slowapi(app: Any, redis_url: str) -> list[Any]:
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from slowapi.middleware import SlowAPIMiddleware
    from slowapi.util import get_remote_address
    from starlette.middleware import Middleware

    app.state.limiter = Limiter(
        key_func=get_remote_address,
        default_limits=[LIMIT],
        storage_uri=redis_url,
        headers_enabled=True,
    )
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)
    return [Middleware(SlowAPIMiddleware)]


_STARLETTE_PARTS: dict[str, Callable[[Any, str], list[Any]]] = {
    "obs": _obs,
    "ratelimit": _ratelimit,
    "cache": _cache,
    "install": _install,
    "correlation-id": _correlation_id,
    "exporter": _exporter,
    "slowapi": _slowapi,
}


# -- FastAPI -----------------------------------------------------------------
def _fastapi_app(parts: list[str], redis_url: str) -> Any:
    from fastapi import Depends, FastAPI

    startup: list[Callable[[], Any]] = []

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        for step in startup:
            await step()
        yield

    app = FastAPI(lifespan=lifespan)
    dependencies: list[Any] = []
    decorate: Callable[[Any], Any] = lambda endpoint: endpoint  # noqa: E731
    starlette_parts = [part for part in parts if part in _STARLETTE_PARTS]
    middleware = []
    for part in starlette_parts:
        middleware.extend(_STARLETTE_PARTS[part](app, redis_url))
    app.user_middleware[0:0] = middleware

    if "fastapi-cache2" in parts:
        from fastapi_cache import FastAPICache
        from fastapi_cache.backends.redis import RedisBackend
        from fastapi_cache.decorator import cache
        from redis import asyncio as aioredis

        async def init_cache() -> None:
            FastAPICache.init(RedisBackend(aioredis.from_url(redis_url)), prefix="fc2")

        startup.append(init_cache)
        decorate = cache(expire=3600)
    if "fastapi-limiter" in parts:
        from fastapi_limiter.depends import RateLimiter
        from pyrate_limiter import Duration, Limiter, Rate, RedisBucket
        from redis import asyncio as aioredis

        limiter_dependency = RateLimiter(limiter=None)  # type: ignore[arg-type]

        async def init_limiter() -> None:
            bucket = await RedisBucket.init(
                [Rate(1_000_000, Duration.MINUTE)], aioredis.from_url(redis_url), "fl-bench"
            )
            limiter_dependency.limiter = Limiter(bucket)

        startup.append(init_limiter)
        dependencies.append(Depends(limiter_dependency))
    if "instrumentator" in parts:
        from prometheus_fastapi_instrumentator import Instrumentator

        Instrumentator().instrument(app).expose(app)
    unknown = (
        set(parts)
        - set(_STARLETTE_PARTS)
        - {
            "fastapi-cache2",
            "fastapi-limiter",
            "instrumentator",
        }
    )
    if unknown:
        raise SystemExit(f"unknown bench component(s) {sorted(unknown)}")

    async def item(item_id: str) -> dict[str, Any]:
        return payload(item_id)

    app.get(ROUTE, dependencies=dependencies)(decorate(item))
    return app
