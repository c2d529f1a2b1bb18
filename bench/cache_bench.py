"""Response cache hits against bare Starlette and FastAPI + fastapi-cache2.

Variants, each served by its own ``uvicorn --loop uvloop --http httptools
--workers 1`` on a free 127.0.0.1 port, driven by ``wrk`` in interleaved
rounds, all against one redis-server this script starts (and stops):

- ``bare``: Starlette building a 1 KB JSON response on every request.
- ``cache``: the same endpoint behind ``CacheMiddleware`` + ``RedisCache`` (hits).
- ``cache-stack``: ``RequestContextMiddleware`` + ``MetricsMiddleware`` in
  front of ``cache`` (what ``scalekit.install`` puts there).
- ``fastapi-cache2``: FastAPI + fastapi-cache2 (``RedisBackend``, ``@cache``)
  with asgi-correlation-id + starlette-exporter in front (hits).

Then invalidation time at 10 and 100,000 entries: ``RedisCache.invalidate``
(one INCR) against the KEYS-pattern-then-DEL approach.

    .venv/bin/python bench/cache_bench.py [--quick] [--duration S] [--rounds N]
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import asynccontextmanager
from typing import Any

from _common import (
    Column,
    UvicornServer,
    bench_parser,
    duration_and_rounds,
    free_port,
    interleaved_rounds,
    medians,
    print_banner,
    print_table,
    round_line,
    run_wrk,
    split_variants,
    stop_process,
    wait_port,
)

VARIANTS = ("bare", "cache", "cache-stack", "fastapi-cache2")
PATH = "/items/42"


def payload(item_id: str) -> dict[str, Any]:
    """About 1 KB of JSON."""
    return {
        "id": item_id,
        "items": [{"n": n, "name": f"widget-{n:04d}", "price": n * 1.25} for n in range(20)],
    }


# -- the apps (imported by uvicorn from this file with --factory) -----------
def create_app() -> Any:
    """The app of the variant named by ``BENCH_VARIANT``."""
    variant = os.environ.get("BENCH_VARIANT", "bare")
    url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    if variant == "fastapi-cache2":
        return fastapi_cache2_app(url)
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def item(request: Request) -> JSONResponse:
        return JSONResponse(payload(request.path_params["item_id"]))

    routes = [Route("/items/{item_id}", item)]
    middleware: list[Middleware] = []
    if variant in ("cache", "cache-stack"):
        from scalekit.cache import CacheMiddleware, CacheRule, RedisCache

        backend = RedisCache.from_url(url, prefix="bench:")
        if variant == "cache-stack":
            from scalekit.observability import (
                MetricsMiddleware,
                RequestContextMiddleware,
                configure_logging,
            )

            configure_logging(json=True, stream=open(os.devnull, "w"))  # noqa: SIM115
            middleware = [Middleware(RequestContextMiddleware), Middleware(MetricsMiddleware)]
        middleware.append(
            Middleware(
                CacheMiddleware, backend=backend, rules=[CacheRule("/items/{item_id}", ttl=3600)]
            )
        )
    elif variant != "bare":
        raise SystemExit(f"unknown BENCH_VARIANT {variant!r}")
    return Starlette(routes=routes, middleware=middleware)


def fastapi_cache2_app(url: str) -> Any:
    from asgi_correlation_id import CorrelationIdMiddleware
    from fastapi import FastAPI
    from fastapi_cache import FastAPICache
    from fastapi_cache.backends.redis import RedisBackend
    from fastapi_cache.decorator import cache
    from redis import asyncio as aioredis
    from starlette_exporter import PrometheusMiddleware

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        FastAPICache.init(RedisBackend(aioredis.from_url(url)), prefix="fc2")
        yield

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(PrometheusMiddleware, group_paths=True)
    app.add_middleware(CorrelationIdMiddleware)

    @app.get("/items/{item_id}")
    @cache(expire=3600)
    async def item(item_id: str) -> dict[str, Any]:
        return payload(item_id)

    return app


# -- the driver --------------------------------------------------------------
class Server(UvicornServer):
    def __init__(self, variant: str, redis_url: str) -> None:
        super().__init__(
            "cache_bench:create_app", variant, PATH, env={"BENCH_REDIS_URL": redis_url}
        )

    def check_hit(self) -> str:
        """Two requests; the second's cache header (proves wrk measures hits)."""
        for _ in range(2):
            with urllib.request.urlopen(self.url) as response:
                headers = response.headers
        return headers.get("cache-status") or headers.get("x-fastapi-cache") or "-"


def measure(wrk: str, server: Server, duration: float, connections: int) -> dict[str, float]:
    result = run_wrk(server.url, connections, duration, wrk=wrk, label=server.variant)
    return {"rps": result.req_per_s, "p99_ms": result.p99_ms}


def invalidation(redis_url: str, sizes: tuple[int, ...], repeats: int) -> None:
    asyncio.run(_invalidation(redis_url, sizes, repeats))


async def _invalidation(redis_url: str, sizes: tuple[int, ...], repeats: int) -> None:
    """Median milliseconds to invalidate one user's entries, ours vs KEYS + DEL."""
    import redis

    from scalekit.cache import RedisCache

    client = redis.Redis.from_url(redis_url)
    backend = RedisCache.from_url(redis_url, prefix="inv:", socket_timeout=30)
    print("\ninvalidate one user's entries (median of", repeats, "runs, ms)")
    print(f"{'entries':>9} {'ours (INCR)':>12} {'KEYS + DEL':>11}")
    try:
        for size in sizes:
            client.flushdb()
            pipe = client.pipeline(transaction=False)
            for n in range(size):
                # The design this replaces: cache:<url> with user_id in the URL.
                pipe.set(f"cache:/api/v1/tasks?page={n}&user_id={n % 1000}", b"x" * 100)
                if len(pipe) >= 10_000:
                    pipe.execute()
            pipe.execute()
            ours, scan = [], []
            for _ in range(repeats):
                started = time.perf_counter()
                await backend.invalidate("user:7:tasks")
                ours.append(time.perf_counter() - started)
                started = time.perf_counter()
                keys = client.keys("cache:/api/v1/tasks*user_id=7*")
                if keys:
                    client.delete(*keys)
                scan.append(time.perf_counter() - started)
            print(
                f"{size:9d} {statistics.median(ours) * 1000:12.3f} "
                f"{statistics.median(scan) * 1000:11.3f}"
            )
    finally:
        client.flushdb()
        client.close()
        await backend.aclose()


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    duration, rounds = duration_and_rounds(args)
    wrk, redis_server = shutil.which("wrk"), shutil.which("redis-server")
    if wrk is None or redis_server is None:
        print("needs wrk and redis-server (apt-get install wrk redis-server)", file=sys.stderr)
        return 1
    variants = split_variants(args.variants)
    for required in ("bare",):
        if required not in variants:
            variants.insert(0, required)

    redis_port = free_port()
    workdir = tempfile.mkdtemp(prefix="cache-bench-")
    redis_proc = subprocess.Popen(
        [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    servers: dict[str, Server] = {}
    try:
        wait_port(redis_port, redis_proc, "redis-server")
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        servers = {variant: Server(variant, redis_url) for variant in variants}
        for server in servers.values():
            print(f"{server.variant:15} second request: {server.check_hit()}", flush=True)
            measure(wrk, server, 1.0, args.connections)  # warm up
        results = interleaved_rounds(
            variants,
            rounds,
            lambda variant: measure(wrk, servers[variant], duration, args.connections),
            round_line,
        )
    finally:
        for server in servers.values():
            server.stop()
    try:
        sizes = (10, 10_000) if args.quick else (10, 100_000)
        invalidation(redis_url, sizes, 3 if args.quick else 7)
    finally:
        stop_process(redis_proc)
        shutil.rmtree(workdir, ignore_errors=True)

    median = medians(results)
    print_banner(args.connections, duration, PATH, rounds)
    bare = median["bare"]["rps"]
    peer = median["fastapi-cache2"]["rps"] if "fastapi-cache2" in variants else None
    print_table(
        [
            Column("variant", 15),
            Column("req/s", 9, ".0f"),
            Column("p99 ms", 8, ".2f"),
            Column("x bare", 7, ".2f"),
            Column("x fastapi-cache2", 17, ".2f"),
        ],
        (
            (
                variant,
                (rps := median[variant]["rps"]),
                median[variant]["p99_ms"],
                rps / bare,
                rps / peer if peer else None,
            )
            for variant in variants
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
