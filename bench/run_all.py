"""Every HTTP variant side by side: scalekit's layers, bare Starlette/FastAPI and the peers.

One run, one machine, interleaved rounds. Each variant (:data:`VARIANTS`,
built by ``bench/apps.py``) is served by its own ``uvicorn --loop uvloop
--http httptools --workers 1`` pinned to CPU 0 with taskset; ``wrk -t1 -c50``
drives it from CPU 1. Every variant that talks to Redis gets its own
redis-server (pinned with wrk), started here, so ``INFO commandstats``
counts that variant's commands alone. Each round runs every variant once, in
turn; the table gives medians over the rounds, and every ratio is taken
within a round (both sides measured minutes apart at most) before its median.

Per variant: req/s, p50, p99, server CPU microseconds per request (from
``/proc/<pid>/stat``), Redis commands per request (``INFO commandstats``
around each wrk run; commands run inside a Lua script count too) and Redis
round trips per request (sequential requests through the test harness's
counting proxy, where a pipeline or a script call is one).

Writes ``docs/assets/benchmarks/results.json``, ``results.png`` and
regenerates ``docs/benchmarks.md`` from them (``--no-write`` to skip; a
subset of ``--variants`` never writes).

    .venv/bin/python bench/run_all.py            # 3 rounds x 10 s per variant (~10 min)
    .venv/bin/python bench/run_all.py --quick    # 3 rounds x 2 s
    .venv/bin/python bench/run_all.py --variants starlette,starlette:obs --rounds 5
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import report
from _common import BENCH_DIR, UvicornServer, WrkResult, pin, run_wrk
from apps import PATH

ROOT = BENCH_DIR.parent
OUTPUT_DIR = ROOT / "docs" / "assets" / "benchmarks"
SERVER_CPU = 0
CLIENT_CPU = 1


@dataclass(frozen=True)
class Variant:
    """One app to measure: ``name`` is its ``BENCH_VARIANT`` (framework:part+part)."""

    name: str
    label: str
    kind: str  # "bare", "scalekit" or "peer"
    redis: bool = False
    proof: tuple[str, ...] = ()
    """Response headers that show the layers did their work (checked before measuring)."""

    @property
    def framework(self) -> str:
        return self.name.partition(":")[0]


VARIANTS: tuple[Variant, ...] = (
    Variant("starlette", "bare Starlette", "bare"),
    Variant("fastapi", "bare FastAPI", "bare"),
    Variant(
        "starlette:obs",
        "scalekit request context (JSON access line) + metrics",
        "scalekit",
        proof=("x-request-id",),
    ),
    Variant(
        "starlette:ratelimit",
        "scalekit rate limit on Redis, headers on",
        "scalekit",
        redis=True,
        proof=("ratelimit",),
    ),
    Variant(
        "starlette:cache",
        "scalekit cache on Redis, hits",
        "scalekit",
        redis=True,
        proof=("cache-status=scalekit; hit",),
    ),
    Variant(
        "starlette:obs+ratelimit",
        "scalekit observability + rate limit",
        "scalekit",
        redis=True,
        proof=("x-request-id", "ratelimit"),
    ),
    Variant(
        "starlette:obs+ratelimit+cache",
        "scalekit observability + rate limit + cache hit",
        "scalekit",
        redis=True,
        proof=("x-request-id", "ratelimit", "cache-status=scalekit; hit"),
    ),
    Variant(
        "starlette:install",
        "install() on Starlette: all of the above + health",
        "scalekit",
        redis=True,
        proof=("x-request-id", "ratelimit", "cache-status=scalekit; hit"),
    ),
    Variant(
        "fastapi:install",
        "install() on FastAPI",
        "scalekit",
        redis=True,
        proof=("x-request-id", "ratelimit", "cache-status=scalekit; hit"),
    ),
    Variant(
        "starlette:correlation-id+exporter",
        "peer: asgi-correlation-id + starlette-exporter",
        "peer",
        proof=("x-request-id",),
    ),
    Variant(
        "starlette:slowapi",
        "peer: slowapi on Redis, headers on",
        "peer",
        redis=True,
        proof=("x-ratelimit-limit",),
    ),
    Variant(
        "starlette:correlation-id+exporter+slowapi",
        "peer: asgi-correlation-id + starlette-exporter + slowapi",
        "peer",
        redis=True,
        proof=("x-request-id", "x-ratelimit-limit"),
    ),
    Variant(
        "fastapi:fastapi-cache2",
        "peer: FastAPI + fastapi-cache2 hit",
        "peer",
        redis=True,
        proof=("x-fastapi-cache=HIT",),
    ),
    Variant(
        "fastapi:correlation-id+exporter+slowapi+fastapi-cache2",
        "peer: FastAPI + fastapi-cache2 hit + asgi-correlation-id + starlette-exporter + slowapi",
        "peer",
        redis=True,
        proof=("x-request-id", "x-ratelimit-limit", "x-fastapi-cache=HIT"),
    ),
    Variant("fastapi:instrumentator", "peer: prometheus-fastapi-instrumentator", "peer"),
    Variant("fastapi:fastapi-limiter", "peer: fastapi-limiter on Redis", "peer", redis=True),
)
BY_NAME = {variant.name: variant for variant in VARIANTS}


@dataclass(frozen=True)
class Target:
    """``variant`` must reach ``at_least`` times ``against``'s req/s, in the same round."""

    key: str
    text: str
    variant: str
    against: str
    at_least: float


TARGETS: tuple[Target, ...] = (
    Target(
        "observability-vs-bare",
        "observability ≥ 0.75x bare Starlette",
        "starlette:obs",
        "starlette",
        0.75,
    ),
    Target(
        "observability-vs-peer",
        "observability ≥ 1.5x asgi-correlation-id + starlette-exporter",
        "starlette:obs",
        "starlette:correlation-id+exporter",
        1.5,
    ),
    Target(
        "ratelimit-vs-bare",
        "rate limit alone ≥ 0.6x bare Starlette",
        "starlette:ratelimit",
        "starlette",
        0.6,
    ),
    Target(
        "ratelimit-stack-vs-peer",
        "observability + rate limit ≥ 2x the slowapi stack",
        "starlette:obs+ratelimit",
        "starlette:correlation-id+exporter+slowapi",
        2.0,
    ),
    Target(
        "cache-stack-vs-peer",
        "observability + rate limit + cache hit ≥ 3x the fastapi-cache2 stack",
        "starlette:obs+ratelimit+cache",
        "fastapi:correlation-id+exporter+slowapi+fastapi-cache2",
        3.0,
    ),
    Target(
        "install-vs-bare",
        "install() ≥ 0.35x bare Starlette",
        "starlette:install",
        "starlette",
        0.35,
    ),
)


# -- Redis ---------------------------------------------------------------------
@dataclass
class Redis:
    """One redis-server of one variant (the test harness's class), pinned with wrk."""

    server: Any
    client: Any = field(init=False)

    def __post_init__(self) -> None:
        self.client = self.server.client()

    @property
    def url(self) -> str:
        return str(self.server.url)

    def commands(self) -> int:
        """Commands run so far (``INFO commandstats``), this INFO not included."""
        stats = self.client.info("commandstats")
        return sum(int(value["calls"]) for value in stats.values())


def start_redis(workdir: Path) -> Redis:
    from harness import RedisServer

    server = RedisServer(workdir, binary=shutil.which("redis-server") or "redis-server")
    server.start_on_free_port()
    pin(server.pid, CLIENT_CPU)
    return Redis(server)


# -- measuring -------------------------------------------------------------------
def server_for(variant: Variant, redis_url: str | None) -> UvicornServer:
    env = {"BENCH_REDIS_URL": redis_url} if redis_url else {}
    return UvicornServer(
        "apps:create_app", variant.name, PATH, env=env, log_prefix="bench", cpu=SERVER_CPU
    )


def proof_of(variant: Variant, server: UvicornServer) -> str:
    """Two requests; fails unless the second carries the headers of ``variant.proof``."""
    for _ in range(2):
        with urllib.request.urlopen(server.url) as response:
            headers = {name.lower(): value for name, value in response.headers.items()}
            body = response.read()
    missing = []
    for wanted in variant.proof:
        name, _, value = wanted.partition("=")
        if name not in headers or (value and not headers[name].startswith(value)):
            missing.append(wanted)
    if missing or len(body) < 1000:
        raise SystemExit(
            f"{variant.name}: the response lacks {missing} (headers {headers}, "
            f"{len(body)} bytes); server log:\n{server.log_text()[-3000:]}"
        )
    return ", ".join(variant.proof) or "-"


def measure(
    variant: Variant,
    server: UvicornServer,
    redis: Redis | None,
    duration: float,
    connections: int,
    wrk: str,
) -> dict[str, float]:
    before = redis.commands() if redis else 0
    result: WrkResult = run_wrk(
        server.url,
        connections,
        duration,
        wrk=wrk,
        label=variant.name,
        cpu_pid=server.proc.pid,
        cpu=CLIENT_CPU,
    )
    run: dict[str, float] = {
        "rps": result.req_per_s,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "cpu_us": result.cpu_us_per_request or 0.0,
        "requests": float(result.requests),
    }
    if redis:
        run["redis_commands"] = (redis.commands() - before - 1) / max(result.requests, 1)
    return run


def round_trips(variant: Variant, redis: Redis, requests: int) -> float:
    """Redis round trips per request: sequential requests through a counting proxy."""
    from harness import CountingProxy

    proxy = CountingProxy(redis.server.host, redis.server.port)
    server = server_for(variant, proxy.url_for(redis.url))
    try:
        for _ in range(3):  # connections, script loads, the cache entry
            urllib.request.urlopen(server.url).read()
        proxy.reset()
        for _ in range(requests):
            urllib.request.urlopen(server.url).read()
        return proxy.round_trips / requests
    finally:
        server.stop()
        proxy.close()


def run_db_bench() -> str:
    """bench/db_bench.py --quick (its own MariaDB primary + replica): the table it prints."""
    print("\nbench/db_bench.py --quick (MariaDB primary + GTID replica) ...", flush=True)
    if shutil.which("mariadbd") is None and shutil.which("mysqld") is None:
        return "skipped: mariadbd is not installed (make system-deps)"
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / "db_bench.py"), "--quick"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"bench/db_bench.py failed:\n{done.stdout}\n{done.stderr}")
    lines = done.stdout.splitlines()
    table_start = next(
        (index for index, line in enumerate(lines) if line.startswith("threads=")), 0
    )
    output = "\n".join(lines[table_start:]).strip()
    print(output, flush=True)
    return output


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }


def versions() -> dict[str, str]:
    names = (
        "scalekit", "starlette", "fastapi", "uvicorn", "uvloop", "httptools", "redis",
        "hiredis", "structlog", "orjson", "prometheus-client", "asgi-correlation-id",
        "starlette-exporter", "slowapi", "fastapi-cache2", "prometheus-fastapi-instrumentator",
        "fastapi-limiter",
    )  # fmt: skip
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def wrk_version(wrk: str) -> str:
    output = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout
    found = re.search(r"wrk\s+(?:\S+/)?(\d[\w.]*)", output)
    return f"wrk {found.group(1)}" if found else "wrk"


# -- results -----------------------------------------------------------------------
def summarise(
    variants: Sequence[Variant],
    runs: dict[str, list[dict[str, float]]],
    trips: dict[str, float],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-variant medians and per-round ratios; the targets whose variants both ran."""
    rounds = len(next(iter(runs.values())))

    def ratio(name: str, against: str) -> float:
        return statistics.median(
            runs[name][index]["rps"] / runs[against][index]["rps"] for index in range(rounds)
        )

    rows = []
    for variant in variants:
        median = {key: statistics.median(run[key] for run in runs[variant.name]) for key in runs[
            variant.name][0]}  # fmt: skip
        bare = variant.framework
        rows.append(
            {
                "name": variant.name,
                "label": variant.label,
                "kind": variant.kind,
                "framework": variant.framework,
                "rps": round(median["rps"], 1),
                "p50_ms": round(median["p50_ms"], 3),
                "p99_ms": round(median["p99_ms"], 3),
                "cpu_us": round(median["cpu_us"], 1),
                "x_bare": round(ratio(variant.name, bare), 3) if bare in runs else None,
                "redis_commands": (
                    round(median["redis_commands"], 2) if "redis_commands" in median else None
                ),
                "redis_round_trips": (
                    round(trips[variant.name], 2) if variant.name in trips else None
                ),
                "rounds_rps": [round(run["rps"], 1) for run in runs[variant.name]],
            }
        )
    targets = []
    for target in TARGETS:
        if target.variant in runs and target.against in runs:
            measured = round(ratio(target.variant, target.against), 3)
            targets.append(
                {
                    "key": target.key,
                    "text": target.text,
                    "variant": target.variant,
                    "against": target.against,
                    "at_least": target.at_least,
                    "ratio": measured,
                    "met": measured >= target.at_least,
                }
            )
    return rows, targets


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds x 2 s")
    parser.add_argument("--duration", type=float, default=None, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=None, help="at least 3 for the docs page")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--variants",
        default="",
        help="comma-separated variant names (default: all); bare ones are always added",
    )
    parser.add_argument("--trips", type=int, default=50, help="requests through the proxy")
    parser.add_argument(
        "--db", action="store_true", help="then bench/db_bench.py --quick on MariaDB (its table)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--output", type=Path, default=OUTPUT_DIR, help="where results.json and results.png go"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    duration = args.duration or (2.0 if args.quick else 10.0)
    rounds = args.rounds or 3
    wrk = shutil.which("wrk")
    if wrk is None or shutil.which("redis-server") is None:
        print("needs wrk and redis-server (make system-deps)", file=sys.stderr)
        return 1
    sys.path.insert(0, str(ROOT / "tests"))
    wanted = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in BY_NAME]
    if unknown:
        print(f"unknown variants {unknown}; known: {', '.join(BY_NAME)}", file=sys.stderr)
        return 2
    variants = list(VARIANTS) if not wanted else [BY_NAME[name] for name in wanted]
    for bare in {variant.framework for variant in variants}:
        if BY_NAME[bare] not in variants:
            variants.insert(0, BY_NAME[bare])
    complete = len(variants) == len(VARIANTS)

    started = datetime.datetime.now(datetime.UTC)
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="scalekit-bench-"))
    redises: dict[str, Redis] = {}
    servers: dict[str, UvicornServer] = {}
    runs: dict[str, list[dict[str, float]]] = {variant.name: [] for variant in variants}
    trips: dict[str, float] = {}
    try:
        for index, variant in enumerate(variants):
            if variant.redis:
                redises[variant.name] = start_redis(workdir / str(index))
            redis = redises.get(variant.name)
            servers[variant.name] = server_for(variant, redis.url if redis else None)
        for variant in variants:
            server = servers[variant.name]
            print(f"{variant.name:55} proof: {proof_of(variant, server)}", flush=True)
            # warm up: imports, caches, connections, scripts, first series
            measure(variant, server, redises.get(variant.name), 1.0, args.connections, wrk)
        for number in range(rounds):
            for variant in variants:
                run = measure(
                    variant,
                    servers[variant.name],
                    redises.get(variant.name),
                    duration,
                    args.connections,
                    wrk,
                )
                runs[variant.name].append(run)
                redis_text = (
                    f"  redis {run['redis_commands']:.2f} cmd/req"
                    if "redis_commands" in run
                    else ""
                )
                print(
                    f"round {number + 1} {variant.name:55} {run['rps']:8.0f} req/s "
                    f"p50 {run['p50_ms']:6.2f} p99 {run['p99_ms']:7.2f} ms "
                    f"cpu {run['cpu_us']:6.1f} us/req{redis_text}",
                    flush=True,
                )
        for server in servers.values():
            server.stop()
        for variant in variants:
            if variant.redis:
                trips[variant.name] = round_trips(variant, redises[variant.name], args.trips)
    finally:
        for server in servers.values():
            server.stop()
        for redis in redises.values():
            redis.client.close()
            redis.server.close()
        shutil.rmtree(workdir, ignore_errors=True)

    db_output = run_db_bench() if args.db else None
    rows, targets = summarise(variants, runs, trips)
    data = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {**machine(), "load_average_before": [round(v, 2) for v in load_before]},
        "setup": {
            "rounds": rounds,
            "duration_s": duration,
            "connections": args.connections,
            "server": f"{report.UVICORN} pinned to CPU {SERVER_CPU} (taskset)",
            "client": f"{wrk_version(wrk)}, -t1 -c{args.connections}, pinned to CPU {CLIENT_CPU}",
            "redis": f"one redis-server per variant, pinned to CPU {CLIENT_CPU}",
            "path": PATH,
            "quick": bool(args.quick),
            "command": "make bench" if not args.quick else "make bench BENCH_ARGS=--quick",
        },
        "versions": versions(),
        "variants": rows,
        "targets": targets,
    }
    if db_output is not None:
        data["db"] = {"command": "bench/db_bench.py --quick", "output": db_output}
    print()
    print(report.text_table(data))
    if complete and not args.no_write:
        args.output.mkdir(parents=True, exist_ok=True)
        json_path = args.output / "results.json"
        json_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        report.write_chart(data, args.output / "results.png")
        (ROOT / "docs" / "benchmarks.md").write_text(report.render_markdown(data))
        print(f"\nwrote {json_path}, results.png and docs/benchmarks.md")
    return 0


def subset(variants: Sequence[str], argv: Sequence[str]) -> int:
    """Run ``variants`` (plus their bare frameworks) and print; what the per-component scripts do."""
    if "--variants" in argv or any(arg.startswith("--variants=") for arg in argv):
        return main([*argv, "--no-write"])
    return main([*argv, "--variants", ",".join(variants), "--no-write"])


if __name__ == "__main__":
    sys.exit(main())
