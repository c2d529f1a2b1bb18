"""For every combination of response headers: stored exactly when nothing forbids it."""

from __future__ import annotations

import anyio
from cache_helpers import RecordingApp, User, call
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.cache import CacheMiddleware, CacheRule, MemoryCache

HEADERS = st.lists(
    st.sampled_from(
        [
            ("Set-Cookie", "a=b"),
            ("Cache-Control", "no-store"),
            ("Cache-Control", "no-cache"),
            ("cache-control", "PRIVATE"),
            ("Cache-Control", "max-age=60, public"),
            ("Vary", "*"),
            ("vary", "Accept"),
            ("ETag", '"v"'),
        ]
    ),
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(
    headers=HEADERS,
    status=st.sampled_from([200, 201, 404, 500]),
    vary_user=st.booleans(),
    credentials=st.booleans(),
)
def test_stored_iff_allowed(
    headers: list[tuple[str, str]], status: int, vary_user: bool, credentials: bool
) -> None:
    names = {(name.lower(), value.lower()) for name, value in headers}
    forbidden = (
        status != 200
        or any(name == "set-cookie" for name, _ in names)
        or ("cache-control", "no-store") in names
        or ("cache-control", "no-cache") in names
        or (("cache-control", "private") in names and not vary_user)
        or ("vary", "*") in names
        or (credentials and not vary_user)
    )
    app = RecordingApp(status=status, headers=headers)
    backend = MemoryCache()
    middleware = CacheMiddleware(app, backend, [CacheRule("/items", ttl=60, vary_user=vary_user)])
    request_headers = [("authorization", "token")] if credentials else []

    async def twice() -> None:
        for _ in range(2):
            # The identity the vary_user rules key on; other rules see an anonymous request.
            await call(middleware, headers=request_headers, user=User("u1") if vary_user else None)

    anyio.run(twice)
    assert app.runs == (2 if forbidden else 1)
    assert (len(backend) == 0) is forbidden
