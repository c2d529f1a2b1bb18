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

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, variant: str, redis_url: str) -> None:
        self.variant = variant
        self.port = free_port()
        env = dict(os.environ, BENCH_VARIANT=variant, BENCH_REDIS=redis_url)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.log = Path(tempfile.mkstemp(prefix=f"ratelimit-bench-{variant}-", suffix=".log")[1])
        log = self.log.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "uvicorn", "ratelimit_bench:create_app", "--factory",
                "--app-dir", str(Path(__file__).resolve().parent),
                "--host", "127.0.0.1", "--port", str(self.port),
                "--loop", "uvloop", "--http", "httptools", "--workers", "1",
                "--no-access-log", "--log-level", "warning",
            ],
            env=env, stdout=log, stderr=log,
        )  # fmt: skip
        log.close()
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
        self.log.unlink(missing_ok=True)

    def backend_errors(self) -> int:
        """Requests our limiter let through because Redis failed (it logs each)."""
        return self.log.read_text(errors="replace").count("ratelimit_backend_error")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_calls(client: Any) -> int:
    return sum(int(stats["calls"]) for stats in client.info("commandstats").values())


def run_wrk(
    wrk: str, server: Server, duration: float, connections: int, redis: Any
) -> dict[str, float]:
    calls_before = redis_calls(redis)
    cpu_before = cpu_seconds(server.proc.pid)
    output = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", server.url],
        capture_output=True, text=True, check=True, timeout=duration + 60,
    ).stdout  # fmt: skip
    cpu = cpu_seconds(server.proc.pid) - cpu_before
    calls = redis_calls(redis) - calls_before - 1  # minus the INFO itself
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
        "redis_per_request": calls / max(requests, 1),
        "cpu_us": cpu / max(requests, 1) * 1e6,
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round")
    parser.add_argument("--duration", type=float, default=None, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    duration = args.duration or (3.0 if args.quick else 10.0)
    rounds = args.rounds or (1 if args.quick else 3)
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
    results: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    try:
        servers = {variant: Server(variant, redis_server.url) for variant in VARIANTS}
        for server in servers.values():  # warm up: imports, script load, connections
            run_wrk(wrk, server, 1.0, args.connections, redis)
        for round_number in range(rounds):
            for variant in VARIANTS:
                result = run_wrk(wrk, servers[variant], duration, args.connections, redis)
                results[variant].append(result)
                print(
                    f"round {round_number + 1} {variant:15} {result['rps']:9.0f} req/s "
                    f"p99 {result['p99_ms']:7.2f} ms  cpu {result['cpu_us']:6.1f} us/req  "
                    f"redis {result['redis_per_request']:.2f} cmds/req",
                    flush=True,
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

    def median(variant: str, key: str) -> float:
        return statistics.median(result[key] for result in results[variant])

    print(
        f"\nwrk -t1 -c{args.connections} -d{duration:g}s {PATH}, {rounds} interleaved round(s), "
        "uvicorn --loop uvloop --http httptools --workers 1, limit never reached (medians)"
    )
    print(
        f"{'variant':15} {'req/s':>9} {'p99 ms':>8} {'cpu us/req':>11} {'x bare':>7} "
        f"{'x slowapi':>10} {'redis cmds/req':>15}"
    )
    bare = median("bare", "rps")
    for variant in VARIANTS:
        rps = median(variant, "rps")
        peer = "slowapi-stack" if variant.endswith("stack") else "slowapi"
        print(
            f"{variant:15} {rps:9.0f} {median(variant, 'p99_ms'):8.2f} "
            f"{median(variant, 'cpu_us'):11.1f} {rps / bare:7.2f} "
            f"{rps / median(peer, 'rps'):10.2f} {median(variant, 'redis_per_request'):15.2f}"
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
