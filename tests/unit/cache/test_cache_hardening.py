"""Poisoning, leaks and stuck state the cache must resist (issue 10), on MemoryCache."""

from __future__ import annotations

from typing import Any

import pytest
from cache_helpers import RecordingApp, User, call
from starlette.authentication import BaseUser

from scalekit._clock import ManualClock
from scalekit.cache import CacheMiddleware, CacheRule, MemoryCache
from scalekit.cache.keys import entry_keys

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


def host_of(scope: Any) -> bytes:
    host = dict(scope["headers"]).get(b"host", b"")
    return b"<a href='http://" + host + b"/login'>" + scope["root_path"].encode() + b"</a>"


# -- what is in a key ------------------------------------------------------------------------


async def test_host_is_part_of_the_key() -> None:
    middleware, app, _ = cached(app=RecordingApp(body_of=host_of))
    poisoned = await call(middleware, headers=[("host", "evil.example")])
    assert poisoned.header("cache-status") == "scalekit; fwd=miss; stored"
    victim = await call(middleware, headers=[("host", "good.example")])
    assert b"evil" not in victim.body
    assert victim.header("cache-status") == "scalekit; fwd=miss; stored"
    again = await call(middleware, headers=[("Host", "good.example")])
    assert again.header("cache-status") == "scalekit; hit"
    # The app sees the Host as sent, so another spelling is another entry.
    shouted = await call(middleware, headers=[("Host", "GOOD.example")])
    assert shouted.header("cache-status") == "scalekit; fwd=miss; stored"
    assert app.runs == 3


async def test_scheme_and_root_path_are_part_of_the_key() -> None:
    middleware, app, _ = cached(app=RecordingApp(body_of=host_of))
    await call(middleware, extra={"scheme": "http"})
    https = await call(middleware, extra={"scheme": "https"})
    assert https.header("cache-status") == "scalekit; fwd=miss; stored"
    mounted = await call(middleware, extra={"root_path": "/other"})
    assert mounted.body.endswith(b"/other</a>")
    assert mounted.header("cache-status") == "scalekit; fwd=miss; stored"
    assert app.runs == 3


async def test_repeated_query_parameters_keep_their_order() -> None:
    middleware, app, _ = cached()
    first = await call(middleware, query="page=2&page=1")
    second = await call(middleware, query="page=1&page=2")
    assert second.header("cache-status") == "scalekit; fwd=miss; stored"
    assert first.body != second.body
    swapped = await call(middleware, query="x=0&page=1&page=2")
    assert swapped.header("cache-status") == "scalekit; fwd=miss; stored"
    assert (await call(middleware, query="page=1&x=0&page=2")).header("cache-status") == (
        "scalekit; hit"
    )
    assert app.runs == 3


async def test_undecodable_query_bytes_do_not_collide() -> None:
    middleware, app, _ = cached()
    await call(middleware, query="q=%FF")
    other = await call(middleware, query="q=%FE")
    assert other.header("cache-status") == "scalekit; fwd=miss; stored"
    assert app.runs == 2


# -- identity --------------------------------------------------------------------------------


async def test_authenticated_user_without_credential_headers_bypasses() -> None:
    middleware, app, backend = cached(
        app=RecordingApp(body_of=lambda scope: f"secret of {scope['user'].identity}".encode())
    )
    # An AuthenticationBackend that read X-API-Key: no Authorization, no Cookie.
    alice = await call(middleware, headers=[("x-api-key", "k1")], user=User("alice"))
    assert alice.header("cache-status") == "scalekit; fwd=bypass; detail=credentials"
    bob = await call(middleware, headers=[("x-api-key", "k2")], user=User("bob"))
    assert bob.body == b"secret of bob"
    assert len(backend) == 0
    assert app.runs == 2


async def test_custom_identity_function_counts_as_credentials() -> None:
    backend = MemoryCache()
    middleware = CacheMiddleware(
        RecordingApp(),
        backend,
        [CacheRule("/items", ttl=60)],
        identity=lambda scope: dict(scope["headers"]).get(b"x-api-key", b"").decode() or None,
    )
    response = await call(middleware, headers=[("x-api-key", "k1")])
    assert response.header("cache-status") == "scalekit; fwd=bypass; detail=credentials"
    assert len(backend) == 0
    anonymous = await call(middleware, user=User("", is_authenticated=False))
    assert anonymous.header("cache-status") == "scalekit; fwd=miss; stored"


async def test_authentication_inside_the_cache_never_stores_a_users_answer() -> None:
    # AuthenticationMiddleware listed after CacheMiddleware runs inside it: the
    # cache planned Alice's X-API-Key request as anonymous, stored her answer
    # and served it to Bob and to anonymous requests.
    inner = RecordingApp(
        body_of=lambda scope: (
            f"secret of {scope['user'].identity}".encode() if "user" in scope else b"public"
        )
    )

    async def authenticate_then_app(scope: Any, receive: Any, send: Any) -> None:
        key = dict(scope["headers"]).get(b"x-api-key")
        if key:
            scope["user"] = User(key.decode())
        await inner(scope, receive, send)

    backend = MemoryCache(clock=ManualClock())
    middleware = CacheMiddleware(authenticate_then_app, backend, [CacheRule("/items", ttl=60)])
    alice = await call(middleware, headers=[("x-api-key", "alice")])
    assert alice.body == b"secret of alice"
    assert alice.header("cache-status") == "scalekit; fwd=miss; detail=credentials"
    assert len(backend) == 0
    for headers in ([], [("x-api-key", "bob")]):
        assert b"alice" not in (await call(middleware, headers=headers)).body


class _DocsUser(BaseUser):
    """A user as Starlette's docs describe one: is_authenticated and display_name only."""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.name


@pytest.mark.parametrize("vary_user", [True, False])
async def test_a_user_class_without_identity_bypasses_instead_of_a_500(vary_user: bool) -> None:
    # BaseUser.identity raises NotImplementedError: every authenticated request
    # to a vary_user rule was a 500. Without an identity there is nothing to key
    # on (a display name may be shared), so the rule stays out of it.
    middleware, _, backend = cached(vary_user=vary_user)
    response = await call(middleware, user=_DocsUser("alice"))
    assert response.status == 200
    reason = "no-identity" if vary_user else "credentials"
    assert response.header("cache-status") == f"scalekit; fwd=bypass; detail={reason}"
    assert len(backend) == 0


# -- request directives ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        [("Cache-Control", "no-cache")],
        [("cache-control", "max-age=0")],
        [("pragma", "no-cache")],
        [("cache-control", "no-store")],
    ],
)
async def test_request_directives_never_overwrite_an_entry_by_default(
    headers: list[tuple[str, str]],
) -> None:
    middleware, app, _ = cached()
    first = await call(middleware)
    forced = await call(middleware, headers=headers)
    assert forced.header("cache-status") == "scalekit; hit"
    assert forced.body == first.body
    assert app.runs == 1


async def test_request_directives_are_honoured_when_the_rule_opts_in() -> None:
    middleware, app, _ = cached(honor_request_directives=True)
    await call(middleware)
    refreshed = await call(middleware, headers=[("Cache-Control", "max-age=0")])
    assert refreshed.header("cache-status") == "scalekit; fwd=request; stored"
    assert (await call(middleware)).body == refreshed.body
    assert app.runs == 2


# -- the response's own Cache-Control --------------------------------------------------------


@pytest.mark.parametrize(
    ("directives", "reason"),
    [("no-cache", "no-cache"), ('no-cache="set-cookie"', "no-cache"), ("max-age=0", "max-age")],
)
async def test_response_directives_prevent_storage(directives: str, reason: str) -> None:
    middleware, app, backend = cached(app=RecordingApp(headers=[("cache-control", directives)]))
    first = await call(middleware)
    assert first.header("cache-status") == f"scalekit; fwd=miss; detail={reason}"
    await call(middleware)
    assert app.runs == 2
    assert len(backend) == 0


@pytest.mark.parametrize("directives", ["max-age=5", "public, s-maxage=5, max-age=600"])
async def test_response_max_age_caps_freshness(directives: str) -> None:
    clock = ManualClock()
    middleware, app, _ = cached(
        app=RecordingApp(headers=[("cache-control", directives)]), clock=clock
    )
    await call(middleware)
    clock.advance(4)
    assert (await call(middleware)).header("cache-status") == "scalekit; hit"
    clock.advance(2)
    assert (await call(middleware)).header("cache-status") == "scalekit; fwd=miss; stored"
    assert app.runs == 2


@pytest.mark.parametrize("directives", ["must-revalidate", "proxy-revalidate", "s-maxage=60"])
async def test_revalidation_directives_forbid_serving_stale(directives: str) -> None:
    clock = ManualClock()
    middleware, app, _ = cached(
        app=RecordingApp(headers=[("cache-control", directives)]), clock=clock, ttl=10, stale_ttl=60
    )
    await call(middleware)
    clock.advance(15)
    assert (await call(middleware)).header("cache-status") == "scalekit; fwd=miss; stored"
    assert app.runs == 2


# -- preconditions ---------------------------------------------------------------------------


async def test_cached_404_never_answers_304() -> None:
    middleware, _, _ = cached(app=RecordingApp(status=404), statuses={200, 404})
    first = await call(middleware)
    for header in ("*", first.header("etag") or ""):
        response = await call(middleware, headers=[("if-none-match", header)])
        assert response.status == 404
        assert response.header("cache-status") == "scalekit; hit"


# -- locks and memory ------------------------------------------------------------------------


async def test_head_on_a_stale_entry_leaves_the_refresh_to_a_get() -> None:
    clock = ManualClock()
    middleware, app, _ = cached(clock=clock, ttl=10, stale_ttl=60)
    await call(middleware)
    clock.advance(15)
    head = await call(middleware, method="HEAD")
    assert head.header("cache-status") == "scalekit; hit; ttl=-5"
    stale = await call(middleware)
    assert stale.header("cache-status") == "scalekit; hit; ttl=-5"
    assert app.runs == 2  # the GET refreshed: the HEAD did not keep the fill lock
    assert (await call(middleware)).header("cache-status") == "scalekit; hit"


async def test_memory_cache_prunes_expired_locks() -> None:
    clock = ManualClock()
    backend = MemoryCache(clock=clock)
    for n in range(1000):
        keys = entry_keys(f"d{n}", (), (), [])
        found = await backend.lookup(keys, (), now=clock.time(), lock_ttl=5)
        assert found.lock_token is not None  # taken, never released (a crashed filler)
    clock.advance(6)
    await backend.lookup(entry_keys("last", (), (), []), (), now=clock.time(), lock_ttl=5)
    assert len(backend._locks) == 1


async def test_memory_cache_keeps_to_its_byte_budget() -> None:
    middleware, app, backend = cached(app=RecordingApp(body_of=lambda scope: b"x" * 1000))
    backend = MemoryCache(max_bytes=4000)
    middleware = CacheMiddleware(app, backend, [CacheRule("/items", ttl=60)])
    for n in range(10):
        await call(middleware, query=f"n={n}")
        assert backend.stored_bytes <= 4000
    assert 1 <= len(backend) <= 3
    assert (await call(middleware, query="n=9")).header("cache-status") == "scalekit; hit"
    assert (await call(middleware, query="n=0")).header("cache-status") == (
        "scalekit; fwd=miss; stored"
    )


def test_memory_cache_byte_budget_must_be_positive() -> None:
    from scalekit.cache import CacheConfigError

    with pytest.raises(CacheConfigError, match="max_bytes"):
        MemoryCache(max_bytes=0)


@pytest.mark.parametrize(
    "data", [b"", b"\x00\x00\x00\x09not json!", b"\xff\xff\xff\xffgarbage", b"\x00\x00\x00\x02[]"]
)
async def test_a_corrupt_entry_is_a_miss(data: bytes) -> None:
    middleware, app, backend = cached()
    await call(middleware)
    for _, _, fields in backend._entries.values():
        if "d" in fields:
            fields["d"] = data
    response = await call(middleware)
    assert response.status == 200
    assert response.header("cache-status") == "scalekit; fwd=miss; stored"
    assert (await call(middleware)).header("cache-status") == "scalekit; hit"
    assert app.runs == 2
