"""Request context + metrics against asgi-correlation-id + starlette-exporter (a run_all subset).

Runs bench/run_all.py's harness on its observability variants only: bare
Starlette, scalekit's request context (JSON access line) + metrics in one
layer, and the peer stack. Prints the table; writes nothing.

    .venv/bin/python bench/observability_bench.py [--quick] [--duration S] [--rounds N]
"""

from __future__ import annotations

import sys

import run_all

VARIANTS = ("starlette:obs", "starlette:correlation-id+exporter")

if __name__ == "__main__":
    sys.exit(run_all.subset(VARIANTS, sys.argv[1:]))
