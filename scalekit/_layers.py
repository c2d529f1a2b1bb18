"""The layers :func:`scalekit.install` puts between the metrics and the app.

Authentication → identity → rate limit → cache → the app, built from what
``install()`` was given plus what the app's routes declare
(:mod:`scalekit.fastapi`). Routes are only all known when the app starts
(``include_router`` may come after ``install()``), so :class:`Layers`
builds the chain once at start-up (or at the first request, when nothing
ran the lifespan), checks that every explicit path rule matches a route,
and keeps scalekit's own paths out of it. Part of the stack: like
``stack.py`` it knows every component.

This module holds :class:`Chain`, :class:`Layers` and their middleware; the
route checks are in :mod:`scalekit._route_checks` (``check_paths_free`` and
``check_not_shadowed`` are re-exported here) and the conversion of
declarations into rules in :mod:`scalekit._declarations`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog
from starlette.requests import Request
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from scalekit._declarations import Shadowed, declared_cache_rules, declared_rules
from scalekit._identity import IDENTITY_SCOPE_KEY, identity_of
from scalekit._route_checks import check_not_shadowed, check_paths_free, check_rule_paths
from scalekit.fastapi import Declared, declarations
from scalekit.options import CacheOptions, DefaultLimit, RateLimitOptions
from scalekit.settings import Settings

if TYPE_CHECKING:
    from starlette.authentication import AuthenticationBackend

    from scalekit._clock import Clock
    from scalekit.cache import CacheBackend, CacheRule
    from scalekit.ratelimit import RateLimitBackend, Rule

__all__ = ["Chain", "IdentityFunction", "Layers", "check_not_shadowed", "check_paths_free"]

_logger = structlog.get_logger("scalekit.stack")

IdentityFunction = Callable[[Request], "str | Awaitable[str | None] | None"]
"""``install(identity=...)``: the request in, a user id (or None for anonymous) out."""


# -- the chain -----------------------------------------------------------------


class _Identity:
    """Computes ``install(identity=...)`` once per request into the scope.

    A hook that raises (``jwt.decode`` on an expired or malformed token, a
    FastAPI dependency raising ``HTTPException(401)``) makes the request
    anonymous here: the cache bypasses it and the limiter keys it by IP,
    and the app's own authentication answers it (401), not a 500 from us.
    """

    def __init__(self, app: ASGIApp, identity: IdentityFunction) -> None:
        self.app = app
        self.identity = identity
        self._reported: set[type[BaseException]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                found = self.identity(Request(scope, receive))
                if inspect.isawaitable(found):
                    found = await found
            except Exception as exc:
                found = None
                self._report(exc)
            scope[IDENTITY_SCOPE_KEY] = None if found in (None, "") else str(found)
        await self.app(scope, receive, send)

    def _report(self, exc: Exception) -> None:
        # Once per exception class at warning (a bug in the hook shows), then debug
        # (expired tokens are routine). Never the message: it may quote the token.
        kind = type(exc)
        level = "debug" if kind in self._reported else "warning"
        self._reported.add(kind)
        getattr(_logger, level)(
            "identity hook raised; the request counts as anonymous", error=kind.__name__
        )


def _fallback_exemption(route_rules: Sequence[Rule]) -> Callable[[Scope], bool]:
    """The default rule's ``exempt``: a request some route-level rule covers.

    A declared rule does not cover what an earlier route takes (its
    ``exempt`` says so), so such a request keeps the default rule.
    """

    def covered(scope: Scope) -> bool:
        method, path, root_path = scope["method"], scope["path"], scope.get("root_path", "")
        return any(
            rule.matches(method, path, root_path)
            and not (isinstance(rule.exempt, Shadowed) and rule.exempt(scope))
            for rule in route_rules
        )

    return covered


@dataclasses.dataclass
class Chain:
    """Everything the chain is built from; :meth:`build` makes it (again, with declarations)."""

    settings: Settings
    cache_backend: CacheBackend
    cache_rules: Sequence[CacheRule]
    cache: CacheOptions
    rate_rules: Sequence[Rule]
    ratelimit: RateLimitOptions
    storage: RateLimitBackend | None
    auth_backend: AuthenticationBackend | None
    identity: IdentityFunction | None
    clock: Clock | None

    def build(self, below: ASGIApp, declared: Sequence[Declared] = ()) -> ASGIApp:
        """Auth → identity → rate limit → cache → ``below``.

        Raises:
            ConfigurationError: a declaration makes an invalid rule (the message
                names the route).
        """
        cache_rules = [*declared_cache_rules(declared), *self.cache_rules]
        chain = below
        cached = None
        if cache_rules:
            from scalekit.cache import CacheMiddleware

            chain = cached = CacheMiddleware(
                chain,
                backend=self.cache_backend,
                rules=cache_rules,
                identity=identity_of,
                lock=self.cache.lock,
                lock_timeout=self.cache.lock_timeout,
                lock_wait=self.cache.lock_wait,
                poll_interval=self.cache.poll_interval,
                clock=self.clock,
            )
        limited = self._rate_limited(chain, [*declared_rules(declared), *self.rate_rules])
        if cached is not None and limited is not chain and self._one_redis():
            from scalekit.ratelimit import RateLimitMiddleware

            if isinstance(limited, RateLimitMiddleware):
                # one round trip for a limited, cached hit: the limiter carries the lookup
                limited.prefetch_with(cached.prefetch)
        chain = limited
        if self.identity is not None:
            chain = _Identity(chain, self.identity)
        if self.auth_backend is not None:
            from starlette.middleware.authentication import AuthenticationMiddleware

            chain = AuthenticationMiddleware(chain, backend=self.auth_backend)
        return chain

    def _one_redis(self) -> bool:
        """Whether the limiter's checks can carry the cache's lookups.

        Both on one standalone Redis (same server, database and client
        settings; not Sentinel, not Cluster), the limiter batching on its held
        connection and the cache looking up on its own.
        """
        from scalekit.cache import RedisCache
        from scalekit.ratelimit import RedisRateLimitBackend

        cache, storage = self.cache_backend, self.storage
        if not isinstance(cache, RedisCache) or not isinstance(storage, RedisRateLimitBackend):
            return False
        if not storage.can_prefetch:
            return False
        first: Any = getattr(cache.client, "connection_pool", None)
        second: Any = getattr(storage.client, "connection_pool", None)
        if type(first).__name__ != "ConnectionPool" or type(second).__name__ != "ConnectionPool":
            return False  # Sentinel, Cluster or something else: keep the two calls
        same = ("host", "port", "path", "db", "username", "decode_responses", "protocol")
        ours, theirs = first.connection_kwargs, second.connection_kwargs
        return first.connection_class is second.connection_class and all(
            ours.get(name) == theirs.get(name) for name in same
        )

    def _rate_limited(self, app: ASGIApp, rules: list[Rule]) -> ASGIApp:
        if self.settings.rate_limit:
            from scalekit.ratelimit import Rule

            route_rules = [rule for rule in rules if rule.path is not None]
            fallback = self.ratelimit.default_limit is DefaultLimit.FALLBACK and route_rules
            exempt = _fallback_exemption(route_rules) if fallback else None
            rules.insert(0, Rule(self.settings.rate_limit, name="default", exempt=exempt))
        if not rules or self.storage is None:
            return app
        from scalekit.ratelimit import RateLimitMiddleware

        options = self.ratelimit
        return RateLimitMiddleware(
            app,
            storage=self.storage,
            rules=rules,
            strategy=options.strategy,
            trusted_proxies=self.settings.trusted_proxies,
            forwarded_header=self.settings.forwarded_header,
            on_backend_error=options.on_backend_error,
            headers=options.headers,
            legacy_headers=options.legacy_headers,
            ipv6_prefix=options.ipv6_prefix,
            clock=self.clock,
            key_prefix=options.key_prefix,
        )


class _Below:
    """The app under scalekit's layers, known once Starlette builds its middleware stack."""

    def __init__(self) -> None:
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.app is None:  # pragma: no cover - Starlette always builds before calling
            raise RuntimeError("scalekit's layers were called before the app was built")
        await self.app(scope, receive, send)


class Layers:
    """The chain for one app, prepared once its routes are known.

    Args:
        chain: what the chain is built from.
        routes: the app's routes (its router's list, read when preparing).
        exempt_paths: scalekit's own paths, which skip the chain.
        check_paths: check at start-up that every explicit path rule matches a route.
    """

    def __init__(
        self,
        chain: Chain,
        routes: list[BaseRoute],
        exempt_paths: frozenset[str],
        *,
        check_paths: bool = True,
    ) -> None:
        self.spec = chain
        self.routes = routes
        self.exempt_paths = exempt_paths
        self.check_paths = check_paths
        self.below = _Below()
        self.chain = chain.build(self.below)  # validates the explicit configuration now
        self.own_routes: Sequence[Route] = ()
        """scalekit's endpoints (health, metrics), checked against the app's routes."""
        self._prepared = False
        self._error: Exception | None = None

    def prepare(self) -> None:
        """Check the routes, read their declarations and path rules (once; errors are kept)."""
        if self._error is not None:
            raise self._error
        if self._prepared:
            return
        try:
            if self.own_routes:
                # A route put in front of ours would answer probes; one added after
                # install() at one of our paths would never be reached.
                check_not_shadowed(self.routes, self.own_routes)
                others = [r for r in self.routes if all(r is not o for o in self.own_routes)]
                check_paths_free(others, [route.path for route in self.own_routes])
            declared = declarations(self.routes)
            if self.check_paths:
                check_rule_paths(
                    self.routes,
                    [("Rule", rule.path) for rule in self.spec.rate_rules if rule.path]
                    + [("CacheRule", rule.path) for rule in self.spec.cache_rules],
                )
            if declared:
                self.chain = self.spec.build(self.below, declared)
        except Exception as exc:
            self._error = exc
            raise
        self._prepared = True

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """The ASGI middleware Starlette builds around the app (``add_middleware``)."""
        self.below.app = app
        return _LayersMiddleware(app, self)


class _LayersMiddleware:
    """Routes a request through the chain, or straight to the app for scalekit's paths."""

    def __init__(self, app: ASGIApp, layers: Layers) -> None:
        self.app = app
        self.layers = layers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        layers = self.layers
        if scope["type"] == "lifespan" or (
            scope["type"] == "http" and _route_path(scope) in layers.exempt_paths
        ):
            await self.app(scope, receive, send)
            return
        if not layers._prepared:
            layers.prepare()
        await layers.chain(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path the router matches, for fixed paths only.

    ``root_path`` is stripped as Starlette strips it, and one trailing newline
    is dropped because the router's ``^/path$`` also matches ``/path\\n``: the
    exemption covers exactly the requests our routes answer.
    """
    from scalekit._routes import route_path

    return route_path(scope).removesuffix("\n")
