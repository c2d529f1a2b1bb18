"""Client helpers for the end-to-end tests of the example task API."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

README = Path(__file__).resolve().parents[2] / "README.md"

TASKS = "/api/v1/tasks"
_names = itertools.count()


async def signup(client: httpx.AsyncClient, prefix: str) -> tuple[int, dict[str, str]]:
    """A new user (unique name); its id and Authorization header."""
    name = f"{prefix}{next(_names)}"
    password = "e2e password 1"
    registered = await client.post(
        "/api/v1/auth/register",
        json={"email": f"{name}@example.com", "username": name, "password": password},
    )
    assert registered.status_code == 201, registered.text
    login = await client.post(
        "/api/v1/auth/login", json={"email": f"{name}@example.com", "password": password}
    )
    assert login.status_code == 200, login.text
    return registered.json()["id"], {"Authorization": f"Bearer {login.json()['access_token']}"}


async def gather_limited(calls: list[Callable[[], Awaitable[Any]]], concurrency: int) -> list[Any]:
    """Run ``calls`` with at most ``concurrency`` in flight; results in order."""
    gate = asyncio.Semaphore(concurrency)

    async def run(call: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await call()

    return await asyncio.gather(*(run(call) for call in calls))


def client(base_url: str, connections: int = 64) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30)


def statuses(responses: list[httpx.Response]) -> Counter[int]:
    return Counter(response.status_code for response in responses)


def readme_session() -> str:
    """The first ``sh`` block under "Try the example" in README.md."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Try the example") :]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match, "README.md has no curl session under 'Try the example'"
    return match.group(1)
