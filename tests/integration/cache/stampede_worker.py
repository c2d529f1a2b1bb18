"""One of several processes hitting one cold key at once (see test_cache_stampede.py).

Usage: python stampede_worker.py URL PREFIX WORKERS REQUESTS
Prints the responses as JSON; counts the app's runs in Redis (``PREFIX:runs``).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "unit" / "cache"))

from cache_helpers import call

from scalekit import _redis
from scalekit.cache import CacheMiddleware, CacheRule, RedisCache


async def main(url: str, prefix: str, workers: int, requests: int) -> None:
    backend = RedisCache.from_url(url, prefix=prefix, socket_timeout=2, socket_connect_timeout=2)
    counter = _redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await counter.incr(f"{prefix}runs")
        await asyncio.sleep(0.5)  # a slow computation: the others must wait for it
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"computed"})

    middleware = CacheMiddleware(app, backend, [CacheRule("/hot", ttl=60)], lock_wait=20)
    await counter.incr(f"{prefix}ready")
    while int(await counter.get(f"{prefix}ready")) < workers:  # noqa: ASYNC110 - another process
        await asyncio.sleep(0.01)
    responses = await asyncio.gather(*(call(middleware, path="/hot") for _ in range(requests)))
    print(json.dumps([[r.status, r.header("cache-status"), r.body.decode()] for r in responses]))
    await backend.aclose()
    await counter.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
