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

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    def __init__(self, variant: str) -> None:
        self.variant = variant
        self.port = free_port()
        env = dict(os.environ, BENCH_VARIANT=variant)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "uvicorn", "observability_bench:create_app", "--factory",
                "--app-dir", str(Path(__file__).resolve().parent),
                "--host", "127.0.0.1", "--port", str(self.port),
                "--loop", "uvloop", "--http", "httptools", "--workers", "1",
                "--no-access-log", "--log-level", "warning",
            ],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{variant}: uvicorn did not start") from None
                time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_wrk(wrk: str, server: Server, duration: float, connections: int) -> dict[str, float]:
    before = cpu_seconds(server.proc.pid)
    output = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", server.url],
        capture_output=True, text=True, check=True, timeout=duration + 60,
    ).stdout  # fmt: skip
    cpu = cpu_seconds(server.proc.pid) - before
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p99_text = re.search(r"99%\s+([\d.]+)(us|ms|s)", output)
    assert p99_text is not None, output
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99_text.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if errors:
        raise SystemExit(f"{server.variant}: {errors.group(1)} error responses")
    return {
        "rps": rps,
        "p99_ms": float(p99_text.group(1)) * scale,
        "cpu_us": cpu / max(requests, 1) * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round")
    parser.add_argument("--duration", type=float, default=None, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated; also context-only and metrics-only (to attribute the cost)",
    )
    args = parser.parse_args()
    duration = args.duration or (3.0 if args.quick else 10.0)
    rounds = args.rounds or (1 if args.quick else 3)
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 1

    variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    for required in ("bare", "peers"):
        if required not in variants:
            variants.append(required)
    servers = {variant: Server(variant) for variant in variants}
    results: dict[str, list[dict[str, float]]] = {variant: [] for variant in variants}
    try:
        for server in servers.values():  # warm up: imports, caches, first series
            run_wrk(wrk, server, 1.0, args.connections)
        for round_number in range(rounds):
            for variant in variants:
                result = run_wrk(wrk, servers[variant], duration, args.connections)
                results[variant].append(result)
                print(
                    f"round {round_number + 1} {variant:15} {result['rps']:9.0f} req/s "
                    f"p99 {result['p99_ms']:7.2f} ms  cpu {result['cpu_us']:6.1f} us/req",
                    flush=True,
                )
    finally:
        for server in servers.values():
            server.stop()

    def median(variant: str, key: str) -> float:
        return statistics.median(result[key] for result in results[variant])

    print(
        f"\nwrk -t1 -c{args.connections} -d{duration:g}s {PATH}, {rounds} interleaved round(s), "
        "uvicorn --loop uvloop --http httptools --workers 1 (medians)"
    )
    print(
        f"{'variant':15} {'req/s':>9} {'p99 ms':>8} {'cpu us/req':>11} {'x bare':>7} {'x peers':>8}"
    )
    bare, peers = median("bare", "rps"), median("peers", "rps")
    for variant in variants:
        rps = median(variant, "rps")
        print(
            f"{variant:15} {rps:9.0f} {median(variant, 'p99_ms'):8.2f} "
            f"{median(variant, 'cpu_us'):11.1f} {rps / bare:7.2f} {rps / peers:8.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
