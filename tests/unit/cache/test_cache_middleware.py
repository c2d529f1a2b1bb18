"""CacheMiddleware on MemoryCache: what is stored, served, bypassed and invalidated."""

from __future__ import annotations

import hashlib
from typing import Any

import anyio
import pytest
from cache_helpers import RecordingApp, Response, User, call
from isolation import run_isolation

from scalekit import events
from scalekit._clock import ManualClock
from scalekit.cache import CacheMiddleware, CacheRule, MemoryCache

pytestmark = pytest.mark.anyio


def cached(
    app: Any = None, clock: ManualClock | None = None, **rule: Any
) -> tuple[CacheMiddleware, RecordingApp, MemoryCache]:
    inner = app or RecordingApp()
    clock = clock or ManualClock()
    backend = MemoryCache(clock=clock)
    rule.setdefault("ttl", 60)
    middleware = CacheMiddleware(inner, backend, [CacheRule("/items", **rule)], clock=clock)
    return middleware, inner, backend


async def twice(middleware: CacheMiddleware, **request: Any) -> tuple[Response, Response]:
    return await call(middleware, **request), await call(middleware, **request)


async def test_hit_after_miss_with_cache_status_age_and_etag() -> None:
    clock = ManualClock()
    middleware, app, _ = cached(clock=clock)
    first = await call(middleware)
    clock.advance(7)
    second = await call(middleware)
    assert app.runs == 1
    assert first.header("cache-status") == "scalekit; fwd=miss; stored"
    assert second.header("cache-status") == "scalekit; hit"
    assert second.header("age") == "7"
    assert second.body == first.body
    expected = '"' + hashlib.sha256(first.body).hexdigest()[:32] + '"'
    assert first.header("etag") == second.header("etag") == expected


async def test_expired_entry_is_a_miss() -> None:
    clock = ManualClock()
    middleware, app, _ = cached(clock=clock, ttl=10)
    await call(middleware)
    clock.advance(10.5)
    assert (await call(middleware)).header("cache-status") == "scalekit; fwd=miss; stored"
    assert app.runs == 2


async def test_query_is_part_of_the_key_and_sorted() -> None:
    middleware, app, _ = cached()
    plain = await call(middleware)
    foo = await call(middleware, query="foo=bar")
    assert plain.body != foo.body  # fastapi-cache2 served /items for /items?foo=bar
    assert app.runs == 2
    await call(middleware, query="a=1&b=2")
    swapped = await call(middleware, query="b=2&a=1")
    assert swapped.header("cache-status") == "scalekit; hit"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([("set-cookie", "session=1")], "set-cookie"),
        ([("Cache-Control", "public, NO-STORE")], "no-store"),
        ([("cache-control", "max-age=5"), ("cache-control", "private")], "private"),
        ([("vary", "Accept, *")], "vary-star"),
    ],
)
async def test_never_stored(headers: list[tuple[str, str]], reason: str) -> None:
    middleware, app, _ = cached(app=RecordingApp(headers=headers))
    first, second = await twice(middleware)
    assert app.runs == 2
    assert first.header("cache-status") == f"scalekit; fwd=miss; detail={reason}"
    assert second.header("cache-status") == f"scalekit; fwd=miss; detail={reason}"


async def test_no_store_is_never_stored_even_when_varying_on_user() -> None:
    middleware, app, _ = cached(
        app=RecordingApp(headers=[("cache-control", "no-store")]), vary_user=True
    )
    await twice(middleware, user=User("1"))
    assert app.runs == 2


async def test_private_is_stored_when_the_rule_varies_on_the_user() -> None:
    middleware, app, _ = cached(
        app=RecordingApp(headers=[("cache-control", "private, max-age=60")]), vary_user=True
    )
    _, second = await twice(middleware, user=User("1"))
    assert app.runs == 1
    assert second.header("cache-status") == "scalekit; hit"
    other = await call(middleware, user=User("2"))
    assert other.header("cache-status") == "scalekit; fwd=miss; stored"


async def test_status_outside_the_rule_is_not_stored() -> None:
    middleware, app, _ = cached(app=RecordingApp(status=500))
    first, _ = await twice(middleware)
    assert app.runs == 2
    assert first.header("cache-status") == "scalekit; fwd=miss; detail=status"
    allowed, _, _ = cached(app=RecordingApp(status=404), statuses={200, 404})
    assert (await twice(allowed))[1].header("cache-status") == "scalekit; hit"


async def test_body_over_max_body_streams_through_untouched() -> None:
    chunks = [bytes([65 + n]) * 40 for n in range(10)]
    middleware, app, _ = cached(app=RecordingApp(chunks=chunks), max_body=100)
    first, _second = await twice(middleware)
    assert app.runs == 2
    assert first.body == b"".join(chunks)
    assert first.header("cache-status") == "scalekit; fwd=miss; detail=too-large"
    # The part buffered before the limit goes as one message, the rest as it came.
    assert first.body_messages == 1 + 7


async def test_content_length_over_max_body_passes_through_at_once() -> None:
    app = RecordingApp(headers=[("content-length", "500")], chunks=[b"x" * 500])
    middleware, _, _ = cached(app=app, max_body=100)
    response = await call(middleware)
    assert response.header("cache-status") == "scalekit; fwd=miss; detail=too-large"
    assert response.body_messages == 1


@pytest.mark.parametrize("header", ["Authorization", "Cookie"])
async def test_credentials_bypass_rules_that_do_not_vary_on_user(header: str) -> None:
    middleware, app, backend = cached()
    response = await call(middleware, headers=[(header, "secret")])
    assert response.header("cache-status") == "scalekit; fwd=bypass; detail=credentials"
    assert len(backend) == 0
    await call(middleware)
    assert (await call(middleware, headers=[(header, "x")])).body != b""
    assert app.runs == 3


async def test_vary_user_without_identity_bypasses() -> None:
    middleware, _app, backend = cached(vary_user=True)
    anonymous = await call(middleware, user=User("", is_authenticated=False))
    assert anonymous.header("cache-status") == "scalekit; fwd=bypass; detail=no-identity"
    assert len(backend) == 0


async def test_vary_user_keys_on_identity_and_identity_is_configurable() -> None:
    app = RecordingApp(body_of=lambda scope: f"data of {scope['user'].identity}".encode())
    middleware, _, _ = cached(app=app, vary_user=True)
    one = await call(middleware, user=User("1"), headers=[("authorization", "t1")])
    two = await call(middleware, user=User("2"), headers=[("authorization", "t2")])
    again = await call(middleware, user=User("1"), headers=[("authorization", "t1")])
    assert (one.body, two.body, again.body) == (b"data of 1", b"data of 2", b"data of 1")
    assert again.header("cache-status") == "scalekit; hit"
    custom = CacheMiddleware(
        RecordingApp(),
        MemoryCache(),
        [CacheRule("/items", ttl=60, vary_user=True)],
        identity=lambda scope: dict(scope["headers"]).get(b"x-user", b"").decode() or None,
    )
    assert (await call(custom)).header("cache-status") == "scalekit; fwd=bypass; detail=no-identity"


async def test_absent_and_empty_vary_headers_do_not_share_an_entry() -> None:
    app = RecordingApp(body_of=lambda scope: repr(scope["headers"]).encode())
    middleware, _, _ = cached(app=app, vary_headers=("Accept-Language",))
    absent = await call(middleware)
    empty = await call(middleware, headers=[("accept-language", "")])
    assert app.runs == 2
    assert absent.body != empty.body
    assert (await call(middleware, headers=[("Accept-Language", "")])).body == empty.body


async def test_response_vary_adds_request_headers_to_the_key() -> None:
    app = RecordingApp(
        headers=[("vary", "Accept-Encoding")],
        body_of=lambda scope: repr(scope["headers"]).encode(),
    )
    middleware, _, _ = cached(app=app)
    gzip = await call(middleware, headers=[("accept-encoding", "gzip")])
    plain = await call(middleware, headers=[("accept-encoding", "identity")])
    assert gzip.body != plain.body
    assert app.runs == 2
    again = await call(middleware, headers=[("accept-encoding", "gzip")])
    assert again.body == gzip.body
    assert again.header("cache-status") == "scalekit; hit"


async def test_if_none_match_answers_304_with_validators_and_no_body() -> None:
    app = RecordingApp(
        headers=[
            ("cache-control", "max-age=60"),
            ("vary", "Accept"),
            ("content-type", "text/plain"),
        ]
    )
    middleware, _, _ = cached(app=app)
    first = await call(middleware)
    etag = first.header("etag")
    assert etag is not None
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        response = await call(middleware, headers=[("if-none-match", header)])
        assert response.status == 304
        assert response.body == b""
        assert response.header("etag") == etag
        assert response.header("cache-control") == "max-age=60"
        assert response.header("vary") == "Accept"
        assert response.header("content-type") is None
    assert (await call(middleware, headers=[("if-none-match", '"nope"')])).status == 200


async def test_app_etag_is_kept() -> None:
    middleware, _, _ = cached(app=RecordingApp(headers=[("etag", '"v1"')]))
    _, second = await twice(middleware)
    assert second.header("etag") == '"v1"'
    assert (await call(middleware, headers=[("if-none-match", '"v1"')])).status == 304


async def test_request_no_cache_goes_to_the_app_when_the_rule_honours_it() -> None:
    middleware, app, _ = cached(honor_request_directives=True)
    await call(middleware)
    refreshed = await call(middleware, headers=[("Cache-Control", "NO-CACHE")])
    assert refreshed.header("cache-status") == "scalekit; fwd=request; stored"
    assert app.runs == 2
    assert (await call(middleware)).body == refreshed.body


async def test_head_is_served_from_a_get_entry_without_body_and_never_stored() -> None:
    middleware, app, backend = cached()
    head_miss = await call(middleware, method="HEAD")
    assert len(backend) == 0
    assert head_miss.header("cache-status") == "scalekit; fwd=bypass; detail=head"
    get = await call(middleware)
    head = await call(middleware, method="HEAD")
    assert head.header("cache-status") == "scalekit; hit"
    assert head.body == b""
    assert head.header("etag") == get.header("etag")
    assert app.runs == 2


async def test_unsafe_methods_and_unmatched_paths_pass_through() -> None:
    middleware, _app, backend = cached()
    post = await call(middleware, method="POST")
    other = await call(middleware, path="/other")
    assert post.header("cache-status") is None
    assert other.header("cache-status") is None
    assert len(backend) == 0


async def test_successful_write_invalidates_before_the_client_hears_of_it() -> None:
    clock = ManualClock()
    backend = MemoryCache(clock=clock)
    app = RecordingApp()
    rule = CacheRule("/users/{uid}/tasks", ttl=60, tags=["tasks:{uid}"], invalidate_on=("POST",))
    middleware = CacheMiddleware(app, backend, [rule], clock=clock)
    await call(middleware, path="/users/1/tasks")
    await call(middleware, path="/users/2/tasks")
    before = backend._versions["tasks:1"]
    versions_seen: list[int | None] = []

    async def write_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    writer = CacheMiddleware(write_app, backend, [rule], clock=clock)

    async def observe(scope: Any, receive: Any, send: Any) -> None:
        async def spy(message: Any) -> None:
            if message["type"] == "http.response.start":
                versions_seen.append(backend._versions.get("tasks:1"))
            await send(message)

        await writer(scope, receive, spy)

    await call(observe, method="POST", path="/users/1/tasks")
    assert len(versions_seen) == 1
    assert versions_seen[0] not in (None, before)  # invalidated before the response started
    assert (await call(middleware, path="/users/1/tasks")).header("cache-status") == (
        "scalekit; fwd=miss; stored"
    )
    assert (await call(middleware, path="/users/2/tasks")).header("cache-status") == "scalekit; hit"


@pytest.mark.parametrize("status", [201, 204, 302, 303, 307])
async def test_a_write_answered_with_a_redirect_invalidates(status: int) -> None:
    # Post/Redirect/Get: the form's POST wrote and answers 303; the browser
    # follows to the list at once and was served the list from before the write.
    backend = MemoryCache()
    items = ["a"]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["method"] == "POST":
            items.append("b")
            headers = [(b"location", b"/t")]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
        else:
            body = ",".join(items).encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})

    rule = CacheRule("/t", ttl=60, tags=["t"], invalidate_on=("POST",))
    middleware = CacheMiddleware(app, backend, [rule])
    assert (await call(middleware, path="/t")).body == b"a"
    await call(middleware, method="POST", path="/t")
    assert (await call(middleware, path="/t")).body == b"a,b"


async def test_failed_write_does_not_invalidate() -> None:
    backend = MemoryCache()
    rule = CacheRule("/t", ttl=60, tags=["t"], invalidate_on=("DELETE",))
    middleware = CacheMiddleware(RecordingApp(status=409), backend, [rule])
    await call(middleware, method="DELETE", path="/t")
    assert backend._versions == {}


async def test_stale_while_revalidate_serves_stale_and_refreshes_once() -> None:
    clock = ManualClock()
    middleware, app, _ = cached(clock=clock, ttl=10, stale_ttl=30)
    first = await call(middleware)
    clock.advance(22)
    stale = await call(middleware)
    assert stale.header("cache-status") == "scalekit; hit; ttl=-12"
    assert stale.body == first.body
    assert app.runs == 2  # refreshed after answering
    fresh = await call(middleware)
    assert fresh.header("cache-status") == "scalekit; hit"
    assert fresh.body != first.body
    clock.advance(10 + 30 + 1)
    assert (await call(middleware)).header("cache-status") == "scalekit; fwd=miss; stored"


async def test_invalidated_entry_is_never_served_stale() -> None:
    clock = ManualClock()
    middleware, _app, backend = cached(clock=clock, ttl=10, stale_ttl=300, tags=["t"])
    await call(middleware)
    clock.advance(15)
    await backend.invalidate("t")
    assert (await call(middleware)).header("cache-status") == "scalekit; fwd=miss; stored"


async def test_stampede_of_100_concurrent_misses_runs_the_app_once() -> None:
    started = anyio.Event()
    release = anyio.Event()

    class SlowApp(RecordingApp):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            started.set()
            await release.wait()
            await super().__call__(scope, receive, send)

    app = SlowApp()
    middleware, _, _ = cached(app=app)
    responses: list[Response] = []

    async def one() -> None:
        responses.append(await call(middleware))

    async with anyio.create_task_group() as group:
        for _ in range(100):
            group.start_soon(one)
        await started.wait()
        release.set()
    assert app.runs == 1
    assert len({response.body for response in responses}) == 1
    assert len(responses) == 100


async def test_slow_fill_racing_an_invalidation_is_not_stored() -> None:
    filling = anyio.Event()
    proceed = anyio.Event()

    class SlowApp(RecordingApp):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if self.runs == 0:
                filling.set()
                await proceed.wait()
            await super().__call__(scope, receive, send)

    middleware, _app, backend = cached(app=SlowApp(), tags=["t"])
    results: list[Response] = []

    async def slow() -> None:
        results.append(await call(middleware))

    async with anyio.create_task_group() as group:
        group.start_soon(slow)
        await filling.wait()
        await backend.invalidate("t")  # returns before the fill finishes
        proceed.set()
    assert results[0].header("cache-status") == "scalekit; fwd=miss"
    after = await call(middleware)
    assert after.header("cache-status") == "scalekit; fwd=miss; stored"
    assert after.body != results[0].body


async def test_events_report_decisions() -> None:
    seen: list[events.CacheEvent] = []
    unsubscribe = events.subscribe(seen.append, events.CacheEvent)
    try:
        middleware, _, _ = cached(app=RecordingApp(headers=[("set-cookie", "a=b")]), name="items")
        await call(middleware)
        ok, _, _ = cached(name="ok")
        await twice(ok)
        await call(ok, headers=[("cookie", "c")])
    finally:
        unsubscribe()
    assert [(e.rule, e.event, e.reason) for e in seen] == [
        ("items", "miss", ""),
        ("items", "skip", "set-cookie"),
        ("ok", "miss", ""),
        ("ok", "store", ""),
        ("ok", "hit", ""),
        ("ok", "bypass", "credentials"),
    ]


async def test_memory_cache_is_a_bounded_lru() -> None:
    middleware, app, backend = cached()
    backend.max_entries = 3
    for n in range(5):
        await call(middleware, query=f"n={n}")
    assert len(backend) == 3
    await call(middleware, query="n=0")
    assert app.runs == 6


async def test_non_http_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    middleware = CacheMiddleware(app, MemoryCache(), [CacheRule("/", ttl=1)])
    await middleware({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan"]


async def test_isolation_2000_random_requests_20_users_on_memory() -> None:
    backend = MemoryCache()
    await run_isolation(backend, backend, seed=1)


class FailingBackend(MemoryCache):
    """Every call fails the way RedisCache reports Redis being down."""

    calls = 0

    async def lookup(self, *args: Any, **kwargs: Any) -> Any:
        from scalekit.cache import CacheBackendError

        self.calls += 1
        raise CacheBackendError("Redis cache lookup failed: refused")

    async def invalidate(self, *tags: str) -> None:
        from scalekit.cache import CacheBackendError

        raise CacheBackendError("Redis cache invalidate failed: refused")


async def test_backend_errors_bypass_and_never_5xx() -> None:
    backend = FailingBackend()
    app = RecordingApp()
    rule = CacheRule("/items", ttl=60, tags=["t"], invalidate_on=("POST",))
    middleware = CacheMiddleware(app, backend, [rule])
    seen: list[events.CacheEvent] = []
    unsubscribe = events.subscribe(seen.append, events.CacheEvent)
    try:
        responses = [await call(middleware) for _ in range(10)]
        write = await call(middleware, method="POST")
    finally:
        unsubscribe()
    assert {r.status for r in responses} == {200}
    assert responses[0].header("cache-status") == "scalekit; fwd=bypass; detail=backend"
    assert app.runs == 11
    assert write.status == 200
    assert ("bypass", "backend") in {(e.event, e.reason) for e in seen}
    assert ("error", "invalidate") in {(e.event, e.reason) for e in seen}


async def test_a_failing_refresh_does_not_break_the_stale_answer() -> None:
    clock = ManualClock()

    class FlakyApp(RecordingApp):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if self.runs >= 1:
                self.runs += 1
                raise RuntimeError("boom")
            await super().__call__(scope, receive, send)

    middleware, app, _ = cached(app=FlakyApp(), clock=clock, ttl=10, stale_ttl=30)
    first = await call(middleware)
    clock.advance(15)
    stale = await call(middleware)
    assert stale.body == first.body
    assert app.runs == 2


def test_memory_invalidate_sync_is_thread_safe() -> None:
    import threading

    backend = MemoryCache()
    threads = [
        threading.Thread(target=lambda: [backend.invalidate_sync("t") for _ in range(500)])
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert backend._versions["t"] == 4000
