"""Request overhead of scalekit's RequestContext + Metrics middlewares against peers.

Variants, each served by its own ``uvicorn --loop uvloop --http httptools
--workers 1`` on a free 127.0.0.1 port and driven by ``wrk -c50`` in
interleaved rounds:

- ``bare``: Starlette alone.
- ``scalekit``: + ``RequestContextMiddleware`` (request id, structlog context,
  one JSON access line per request written to /dev/null by
  ``configure_logging``) + ``MetricsMiddleware``.
- ``scalekit-nolog``: the same with ``access_log=False``.
- ``peers``: + asgi-correlation-id's ``CorrelationIdMiddleware`` +
  starlette-exporter's ``PrometheusMiddleware`` (``group_paths=True``).

Prints req/s, p99 latency and server CPU microseconds per request (from
``/proc/<pid>/stat`` of the uvicorn process), with ratios against bare
Starlette and the peer stack.

    .venv/bin/python bench/observability_bench.py [--quick] [--duration S] [--rounds N]
"""

from __future__ import annotations

import os
import shutil
import sys
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
    split_variants,
)

VARIANTS = ("bare", "scalekit", "scalekit-nolog", "peers")
PATH = "/items/42"


# -- the apps (imported by uvicorn from this file with --factory) -----------
def create_app() -> Any:
    """The app of the variant named by ``BENCH_VARIANT``."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["item_id"], "name": "widget"})

    routes = [Route("/items/{item_id}", item)]
    variant = os.environ.get("BENCH_VARIANT", "bare")
    middleware: list[Middleware] = []
    if variant in ("scalekit", "scalekit-nolog", "context-only", "metrics-only"):
        from scalekit.observability import (
            MetricsMiddleware,
            RequestContextMiddleware,
            configure_logging,
            metrics_endpoint,
        )

        configure_logging(json=True, stream=open(os.devnull, "w"))  # noqa: SIM115
        routes.append(Route("/metrics", metrics_endpoint))
        middleware = [
            Middleware(RequestContextMiddleware, access_log=variant == "scalekit"),
            Middleware(MetricsMiddleware),
        ]
        if variant == "context-only":
            middleware = middleware[:1]
        elif variant == "metrics-only":
            middleware = middleware[1:]
    elif variant == "peers":
        from asgi_correlation_id import CorrelationIdMiddleware
        from starlette_exporter import PrometheusMiddleware, handle_metrics

        routes.append(Route("/metrics", handle_metrics))
        middleware = [
            Middleware(CorrelationIdMiddleware),
            Middleware(PrometheusMiddleware, group_paths=True),
        ]
    elif variant != "bare":
        raise SystemExit(f"unknown BENCH_VARIANT {variant!r}")
    return Starlette(routes=routes, middleware=middleware)


# -- the driver --------------------------------------------------------------
def measure(wrk: str, server: UvicornServer, duration: float, connections: int) -> dict[str, float]:
    result = run_wrk(
        server.url, connections, duration, wrk=wrk, label=server.variant, cpu_pid=server.proc.pid
    )
    assert result.cpu_us_per_request is not None
    return {"rps": result.req_per_s, "p99_ms": result.p99_ms, "cpu_us": result.cpu_us_per_request}


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated; also context-only and metrics-only (to attribute the cost)",
    )
    args = parser.parse_args()
    duration, rounds = duration_and_rounds(args)
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 1

    variants = split_variants(args.variants)
    for required in ("bare", "peers"):
        if required not in variants:
            variants.append(required)
    servers = {
        variant: UvicornServer("observability_bench:create_app", variant, PATH)
        for variant in variants
    }
    try:
        for server in servers.values():  # warm up: imports, caches, first series
            measure(wrk, server, 1.0, args.connections)
        results = interleaved_rounds(
            variants,
            rounds,
            lambda variant: measure(wrk, servers[variant], duration, args.connections),
            lambda result: f"{round_line(result)}  cpu {result['cpu_us']:6.1f} us/req",
        )
    finally:
        for server in servers.values():
            server.stop()

    median = medians(results)
    print_banner(args.connections, duration, PATH, rounds)
    bare, peers = median["bare"]["rps"], median["peers"]["rps"]
    print_table(
        [
            Column("variant", 15),
            Column("req/s", 9, ".0f"),
            Column("p99 ms", 8, ".2f"),
            Column("cpu us/req", 11, ".1f"),
            Column("x bare", 7, ".2f"),
            Column("x peers", 8, ".2f"),
        ],
        (
            (
                variant,
                (rps := median[variant]["rps"]),
                median[variant]["p99_ms"],
                median[variant]["cpu_us"],
                rps / bare,
                rps / peers,
            )
            for variant in variants
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
