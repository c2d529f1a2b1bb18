"""Response cache hits against fastapi-cache2 (a run_all subset), then invalidation cost.

First bench/run_all.py's harness on its cache variants: scalekit's cache
alone, with observability and the rate limiter in front, and fastapi-cache2
alone and with its usual companions, every hit looked up in Redis (each
variant on its own redis-server). Then the time to invalidate one user's
entries at 10 and 100,000 entries: ``RedisCache.invalidate`` (one INCR)
against the KEYS-pattern-then-DEL approach it replaces.

    .venv/bin/python bench/cache_bench.py [--quick] [--duration S] [--rounds N]
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import run_all

VARIANTS = (
    "starlette:cache",
    "starlette:obs+ratelimit+cache",
    "fastapi:fastapi-cache2",
    "fastapi:correlation-id+exporter+slowapi+fastapi-cache2",
)


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


def main(argv: list[str]) -> int:
    status = run_all.subset(VARIANTS, argv)
    if status:
        return status
    sys.path.insert(0, str(run_all.ROOT / "tests"))
    workdir = Path(tempfile.mkdtemp(prefix="cache-bench-"))
    redis = run_all.start_redis(workdir)
    try:
        quick = "--quick" in argv
        invalidation(redis.url, (10, 10_000) if quick else (10, 100_000), 3 if quick else 7)
    finally:
        redis.client.close()
        redis.server.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
