"""Request throughput of scalekit's rate limiter against slowapi, on real Redis.

Starts a redis-server on a free loopback port (the test harness's class) and
one ``uvicorn --loop uvloop --http httptools --workers 1`` per variant, each
with a limit that is never reached (``1000000/minute``, headers on), and
drives them with ``wrk -c50`` in interleaved rounds:

- ``bare``: Starlette alone.
- ``scalekit``: + ``RateLimitMiddleware`` (sliding-window counter, Redis).
- ``slowapi``: + slowapi's ``SlowAPIMiddleware`` (``headers_enabled=True``,
  ``storage_uri`` on the same Redis).
- ``scalekit-stack``: + scalekit's ``RequestContextMiddleware`` and
  ``MetricsMiddleware`` in front of ``RateLimitMiddleware``.
- ``slowapi-stack``: + asgi-correlation-id and starlette-exporter in front of slowapi.

Prints req/s, p99, the ratio to bare Starlette, Redis commands per request
(from ``INFO commandstats`` around each run; commands inside a Lua script
count too) and Redis round trips per request (sequential requests through the
test harness's counting proxy).

    .venv/bin/python bench/ratelimit_bench.py [--quick] [--duration S] [--rounds N]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import (
    Column,
    UvicornServer,
    bench_parser,
    duration_and_rounds,
    interleaved_rounds,
    medians,
    print_banner,
    print_table,
    round_line,
    run_wrk,
)

VARIANTS = ("bare", "scalekit", "slowapi", "scalekit-stack", "slowapi-stack")
PATH = "/items/42"
LIMIT = "1000000/minute"


# -- the apps (imported by uvicorn from this file with --factory) -----------
def create_app() -> Any:
    """The app of the variant named by ``BENCH_VARIANT`` on ``BENCH_REDIS``."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    variant = os.environ.get("BENCH_VARIANT", "bare")
    redis_url = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")

    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["item_id"], "name": "widget"})

    if variant.startswith("slowapi"):
        from slowapi import Limiter
        from slowapi.errors import RateLimitExceeded
        from slowapi.middleware import SlowAPIMiddleware
        from slowapi.util import get_remote_address

        limiter = Limiter(
            key_func=get_remote_address,
            default_limits=[LIMIT],
            storage_uri=redis_url,
            headers_enabled=True,
        )

        async def slow_item(request: Request) -> JSONResponse:
            return JSONResponse({"id": request.path_params["item_id"], "name": "widget"})

        middleware = [Middleware(SlowAPIMiddleware)]
        if variant == "slowapi-stack":
            from asgi_correlation_id import CorrelationIdMiddleware
            from starlette_exporter import PrometheusMiddleware

            middleware = [
                Middleware(CorrelationIdMiddleware),
                Middleware(PrometheusMiddleware, group_paths=True),
                *middleware,
            ]
        app = Starlette(routes=[Route("/items/{item_id}", slow_item)], middleware=middleware)
        app.state.limiter = limiter
        from slowapi import _rate_limit_exceeded_handler

        app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
        return app

    middleware = []
    if variant.startswith("scalekit"):
        from scalekit.ratelimit import RateLimitMiddleware, Rule

        if variant == "scalekit-stack":
            from scalekit.observability import (
                MetricsMiddleware,
                RequestContextMiddleware,
                configure_logging,
            )

            configure_logging(json=True, stream=open(os.devnull, "w"))  # noqa: SIM115
            middleware += [
                Middleware(RequestContextMiddleware, access_log=False),
                Middleware(MetricsMiddleware),
            ]
        middleware.append(
            Middleware(RateLimitMiddleware, storage=redis_url, rules=[Rule(LIMIT, name="api")])
        )
    elif variant != "bare":
        raise SystemExit(f"unknown BENCH_VARIANT {variant!r}")
    return Starlette(routes=[Route("/items/{item_id}", item)], middleware=middleware)


# -- the driver --------------------------------------------------------------
class Server(UvicornServer):
    def __init__(self, variant: str, redis_url: str) -> None:
        super().__init__(
            "ratelimit_bench:create_app",
            variant,
            PATH,
            env={"BENCH_REDIS": redis_url},
            log_prefix="ratelimit-bench",
        )

    def backend_errors(self) -> int:
        """Requests our limiter let through because Redis failed (it logs each)."""
        return self.log_text().count("ratelimit_backend_error")


def redis_calls(client: Any) -> int:
    return sum(int(stats["calls"]) for stats in client.info("commandstats").values())


def measure(
    wrk: str, server: Server, duration: float, connections: int, redis: Any
) -> dict[str, float]:
    calls_before = redis_calls(redis)
    result = run_wrk(
        server.url, connections, duration, wrk=wrk, label=server.variant, cpu_pid=server.proc.pid
    )
    calls = redis_calls(redis) - calls_before - 1  # minus the INFO itself
    assert result.cpu_us_per_request is not None
    return {
        "rps": result.req_per_s,
        "p99_ms": result.p99_ms,
        "redis_per_request": calls / max(result.requests, 1),
        "cpu_us": result.cpu_us_per_request,
    }


def round_trips_per_request(variant: str, redis_server: Any, requests: int = 100) -> float:
    """Sequential requests through a counting TCP proxy in front of Redis."""
    import httpx
    from harness import CountingProxy

    proxy = CountingProxy(redis_server.host, redis_server.port)
    server = Server(variant, proxy.url_for(redis_server.url))
    try:
        with httpx.Client() as http:
            http.get(server.url)  # warm up: connection, script load
            proxy.reset()
            for _ in range(requests):
                http.get(server.url).raise_for_status()
        return proxy.round_trips / requests
    finally:
        server.stop()
        proxy.close()


def main() -> int:
    args = bench_parser(__doc__).parse_args()
    duration, rounds = duration_and_rounds(args)
    wrk = shutil.which("wrk")
    redis_binary = shutil.which("redis-server")
    if wrk is None or redis_binary is None:
        print("needs wrk and redis-server (apt-get install wrk redis-server)", file=sys.stderr)
        return 1
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from harness import RedisServer

    workdir = Path(tempfile.mkdtemp(prefix="ratelimit-bench-"))
    redis_server = RedisServer(workdir, binary=redis_binary)
    redis_server.start_on_free_port()
    redis = redis_server.client()
    servers: dict[str, Server] = {}
    try:
        servers = {variant: Server(variant, redis_server.url) for variant in VARIANTS}
        for server in servers.values():  # warm up: imports, script load, connections
            measure(wrk, server, 1.0, args.connections, redis)
        results = interleaved_rounds(
            VARIANTS,
            rounds,
            lambda variant: measure(wrk, servers[variant], duration, args.connections, redis),
            lambda result: (
                f"{round_line(result)}  cpu {result['cpu_us']:6.1f} us/req  "
                f"redis {result['redis_per_request']:.2f} cmds/req"
            ),
        )
        errors = {variant: server.backend_errors() for variant, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
        trips = {
            variant: round_trips_per_request(variant, redis_server)
            for variant in ("scalekit", "slowapi")
        }
        redis.close()
        redis_server.close()
        shutil.rmtree(workdir, ignore_errors=True)

    median = medians(results)
    print_banner(args.connections, duration, PATH, rounds, ", limit never reached")
    bare = median["bare"]["rps"]
    print_table(
        [
            Column("variant", 15),
            Column("req/s", 9, ".0f"),
            Column("p99 ms", 8, ".2f"),
            Column("cpu us/req", 11, ".1f"),
            Column("x bare", 7, ".2f"),
            Column("x slowapi", 10, ".2f"),
            Column("redis cmds/req", 15, ".2f"),
        ],
        (
            (
                variant,
                (rps := median[variant]["rps"]),
                median[variant]["p99_ms"],
                median[variant]["cpu_us"],
                rps / bare,
                rps / median["slowapi-stack" if variant.endswith("stack") else "slowapi"]["rps"],
                median[variant]["redis_per_request"],
            )
            for variant in VARIANTS
        ),
    )
    print(f"failed-open checks (Redis errors or timeouts) over the whole run: {errors}")
    print(
        "\nRedis round trips per request (100 sequential requests through a counting "
        "proxy; a pipeline or a script call is one): "
        + ", ".join(f"{variant} {value:.2f}" for variant, value in trips.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
