"""The app each uvicorn process serves in the multi-process tests.

``RL_STORAGE`` names the Redis URL, ``RL_LIMIT`` the rule, ``RL_STRATEGY`` the strategy.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from scalekit.ratelimit import RateLimitMiddleware, Rule


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("up")


app = RateLimitMiddleware(
    Starlette(routes=[Route("/", home), Route("/health", health)]),
    os.environ["RL_STORAGE"],
    [Rule(os.environ.get("RL_LIMIT", "50/minute"), path="/", name="api")],
    strategy=os.environ.get("RL_STRATEGY", "sliding-window-counter"),
)
