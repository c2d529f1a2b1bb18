"""MemoryCache tag version counters: bounded, and a dropped counter never makes an
entry stored before an invalidation current again."""

from __future__ import annotations

import pytest
from cache_helpers import RecordingApp, call

from scalekit.cache import CacheConfigError, CacheMiddleware, CacheRule, MemoryCache

pytestmark = pytest.mark.anyio


async def test_a_counter_dropped_after_an_invalidation_never_serves_the_old_body() -> None:
    backend = MemoryCache()
    app = RecordingApp()
    middleware = CacheMiddleware(app, backend, [CacheRule("/items", ttl=300, tags=["items"])])
    first = await call(middleware, path="/items")
    assert (await call(middleware, path="/items")).header("cache-status") == "scalekit; hit"
    await backend.invalidate("items")
    del backend._versions["items"]  # lost, as an evicted Redis counter is
    again = await call(middleware, path="/items")
    assert again.header("cache-status") == "scalekit; fwd=miss; stored"
    assert again.body != first.body


async def test_counters_evicted_by_pressure_never_make_old_entries_current() -> None:
    backend = MemoryCache(max_tags=2)
    app = RecordingApp()
    rule = CacheRule("/items/{n}", ttl=300, tags=["items:{n}"])
    middleware = CacheMiddleware(app, backend, [rule])
    first = await call(middleware, path="/items/1")
    await backend.invalidate("items:1")
    for n in range(2, 6):  # other tags push items:1's counter out
        await call(middleware, path=f"/items/{n}")
    assert "items:1" not in backend._versions
    assert len(backend._versions) == 2
    again = await call(middleware, path="/items/1")
    assert again.header("cache-status") == "scalekit; fwd=miss; stored"
    assert again.body != first.body
    assert (await call(middleware, path="/items/1")).header("cache-status") == "scalekit; hit"


async def test_a_counter_dropped_during_a_fill_refuses_the_store() -> None:
    from scalekit.cache.keys import entry_keys

    backend = MemoryCache()
    keys = entry_keys("d", ["t"], (), [])
    found = await backend.lookup(keys, ["t"], now=0, lock_ttl=5)
    del backend._versions["t"]
    stored = await backend.store(
        keys,
        ["t"],
        data=b"x",
        versions=found.versions,
        fresh_until=10.0,
        expire=60,
        lock_token=found.lock_token,
    )
    assert not stored


def test_max_tags_must_be_positive() -> None:
    with pytest.raises(CacheConfigError, match="max_tags"):
        MemoryCache(max_tags=0)
