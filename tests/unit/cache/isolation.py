"""The isolation scenario shared by the MemoryCache, Redis and Cluster tests."""

from __future__ import annotations

import random
from typing import Any

from cache_helpers import User, call

from scalekit.cache import CacheMiddleware, CacheRule

USERS = 20
URLS = 50


def rules() -> list[CacheRule]:
    return [
        CacheRule(
            "/items/{n}",
            ttl=300,
            stale_ttl=300,
            vary_user=True,
            tags=["user:{user}:items"],
            invalidate_on=("POST", "DELETE"),
        )
    ]


async def run_isolation(
    first_backend: Any, second_backend: Any, *, seed: int, requests: int = 2000
) -> dict[str, int]:
    """Random reads and writes through two middleware instances; asserts as it goes."""
    state = {f"u{n}": 0 for n in range(USERS)}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        user = scope["user"].identity
        item = scope["path"].rsplit("/", 1)[1]
        if scope["method"] == "POST":
            state[user] += 1
        body = f"{user}|{item}|{state[user]}|{scope['query_string'].decode()}".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    instances = [
        CacheMiddleware(app, first_backend, rules()),
        CacheMiddleware(app, second_backend, rules()),
    ]
    chooser = random.Random(seed)
    outcomes = {"hit": 0, "miss": 0, "write": 0}
    for _ in range(requests):
        user = f"u{chooser.randrange(USERS)}"
        item = min(int(chooser.expovariate(1 / 6)), URLS - 1)  # skewed, like real traffic
        instance = chooser.choice(instances)
        query = chooser.choice(["", "", "", "page=2", "b=2&a=1"])
        headers = [("authorization", f"Bearer {user}")]
        if chooser.random() < 0.05:
            response = await call(
                instance, "POST", f"/items/{item}", headers=headers, user=User(user)
            )
            assert response.status == 200
            outcomes["write"] += 1
            continue
        response = await call(
            instance, "GET", f"/items/{item}", query=query, headers=headers, user=User(user)
        )
        owner, got_item, version, got_query = response.body.decode().split("|")
        assert owner == user, f"{user} got {owner}'s data"
        assert (got_item, got_query) == (str(item), query)
        assert int(version) == state[user], f"stale: {response.header('cache-status')}"
        outcomes["hit" if "hit" in (response.header("cache-status") or "") else "miss"] += 1
    assert outcomes["hit"] > 100
    assert outcomes["miss"] > 100
    return outcomes
