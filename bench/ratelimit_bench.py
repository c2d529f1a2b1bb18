"""The rate limiter on Redis against slowapi and fastapi-limiter (a run_all subset).

Runs bench/run_all.py's harness on its rate-limit variants: scalekit's
limiter alone and behind the observability layer, slowapi alone and behind
asgi-correlation-id + starlette-exporter, and fastapi-limiter; each on its own
redis-server, with Redis commands and round trips per request. Limits are
never reached. Prints the table; writes nothing.

    .venv/bin/python bench/ratelimit_bench.py [--quick] [--duration S] [--rounds N]
"""

from __future__ import annotations

import sys

import run_all

VARIANTS = (
    "starlette:ratelimit",
    "starlette:obs+ratelimit",
    "starlette:slowapi",
    "starlette:correlation-id+exporter+slowapi",
    "fastapi:fastapi-limiter",
)

if __name__ == "__main__":
    sys.exit(run_all.subset(VARIANTS, sys.argv[1:]))
