"""The layers :func:`scalekit.install` puts between the metrics and the app.

Authentication → identity → rate limit → cache → the app, built from what
``install()`` was given plus what the app's routes declare
(:mod:`scalekit.fastapi`). Routes are only all known when the app starts
(``include_router`` may come after ``install()``), so :class:`Layers`
builds the chain once at start-up (or at the first request, when nothing
ran the lifespan), checks that every explicit path rule matches a route,
and keeps scalekit's own paths out of it. Part of the stack: like
``stack.py`` it knows every component.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog
from starlette.requests import Request
from starlette.routing import BaseRoute, Match, Mount, Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from scalekit._identity import IDENTITY_SCOPE_KEY, identity_of
from scalekit._routes import RouteTemplate
from scalekit.errors import ConfigurationError
from scalekit.fastapi import Declared, Shadow, declarations, route_templates
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


# -- scalekit's own routes ------------------------------------------------


def describe(route: BaseRoute) -> str:
    """A route as a message names it: ``Route('/x', name='spa')``."""
    path = getattr(route, "path", None)
    name = getattr(route, "name", None)
    return f"{type(route).__name__}({path!r}, name={name!r})"


def first_full_match(routes: Sequence[BaseRoute], path: str) -> BaseRoute | None:
    """The route Starlette's router gives a GET of ``path`` (the first full match)."""
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": []}
    for route in routes:
        try:
            match, _ = route.matches(scope)
        except Exception:  # a custom converter that raises: the router would fail too
            continue
        if match is Match.FULL:
            return route
    return None


def _probe_path() -> str:
    return f"/scalekit-probe-{uuid.uuid4().hex}/{uuid.uuid4().hex}"


def _culprit(route: BaseRoute, path: str) -> str:
    """``route`` as a message names it, or the route inside it (an included router) at ``path``."""
    for template, leaf in route_templates([route]):
        if template == path and leaf is not route:
            return describe(getattr(leaf, "original_route", leaf))
    return describe(route)


def check_paths_free(routes: Sequence[BaseRoute], paths: Sequence[str]) -> None:
    """Refuse to mount over a route of the app meant for one of ``paths``.

    A catch-all (``/{path:path}``, a ``Mount("/")``) is expected and is
    shadowed on purpose; a route that answers our path but not an arbitrary
    one is the app's own health or metrics route, and one would hide the other.
    """
    probe = _probe_path()
    for path in paths:
        for route in routes:
            if (
                first_full_match([route], path) is route
                and first_full_match([route], probe) is None
            ):
                raise ConfigurationError(
                    f"the app already has {_culprit(route, path)} answering {path!r}, where "
                    "install() "
                    "mounts scalekit's endpoint: remove it, or mount scalekit's elsewhere "
                    "(HealthOptions(live_path=..., ready_path=...), Settings(metrics_path=...))"
                )


def check_not_shadowed(routes: Sequence[BaseRoute], ours: Sequence[Route]) -> None:
    """Fail start-up when a route added in front of ours answers one of our paths."""
    for route in ours:
        winner = first_full_match(routes, route.path)
        if winner is not route:
            by = "no route" if winner is None else describe(winner)
            raise ConfigurationError(
                f"{route.path!r} is answered by {by} instead of scalekit's endpoint: routes were "
                "put in front of the ones install() mounts; add them with app.add_route or "
                "include_router (which append) instead of inserting them first"
            )


# -- path rules must match a route ------------------------------------------

_SAMPLES = {
    "str": "x1",
    "int": "1",
    "float": "1.5",
    "uuid": "00000000-0000-4000-8000-000000000001",
    "path": "x1/y2",
}


def _sample(template: str) -> str | None:
    """A path the template matches (None when it uses a converter we cannot fill)."""
    from starlette.routing import PARAM_REGEX

    unknown = False

    def fill(found: Any) -> str:
        nonlocal unknown
        converter = (found.group(2) or ":str")[1:]
        if converter not in _SAMPLES:
            unknown = True
            return ""
        return _SAMPLES[converter]

    sample = PARAM_REGEX.sub(fill, template)
    return None if unknown else sample


def _first_route_for(routes: Sequence[BaseRoute], path: str) -> BaseRoute | None:
    """The first route whose path matches ``path``, whatever its methods."""
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": []}
    for route in routes:
        try:
            match, _ = route.matches(scope)
        except Exception:  # a custom converter that raises
            continue
        if match is not Match.NONE:
            return route
    return None


def check_rule_paths(routes: Sequence[BaseRoute], rules: Sequence[tuple[str, str]]) -> None:
    """Each ``(what, path)`` must cover a route of the app; else name the closest route.

    A rule covers a route when it matches a path of that route, or when a
    mounted sub-app whose routes cannot be seen (static files, another ASGI
    app) would receive the rule's path. A catch-all route does not count:
    a typo behind an SPA's ``/{path:path}`` would otherwise pass silently.
    """
    from scalekit._routes import RouteTemplate

    templates = list(route_templates(routes))
    samples = [_sample(template) for template, _ in templates]
    probe = _probe_path()
    for what, path in rules:
        template = RouteTemplate(path)
        if any(sample is not None and template.match(sample) is not None for sample in samples):
            continue
        own = _sample(path)
        if own is None:
            continue  # a custom converter: we cannot tell
        owner = _first_route_for(routes, own)
        if isinstance(owner, Mount) and not owner.routes:
            continue
        if owner is not None and _first_route_for([owner], probe) is None:
            continue  # a route answers it (one our samples did not reach)
        known = sorted({t for t, _ in templates})
        closest = difflib.get_close_matches(path, known, n=1, cutoff=0.0)
        hint = f"; the closest route is {closest[0]!r}" if closest else ""
        raise ConfigurationError(
            f"{what} path {path!r} matches no route of the app{hint} (router prefixes and "
            "mounts count; root_path does not)"
        )


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


class _Shadowed:
    """A declared rule's ``exempt``: the request goes to a route in front of the declaring one.

    A rule declared on ``/users/{user_id}`` must not cover ``GET /users/me``
    when a ``/users/me`` route comes first: the router sends that request
    there, so neither the limit nor the cache of the other route applies.
    Matched as the router matches: the earlier route's full template and its
    methods (HEAD with GET).
    """

    __slots__ = ("shadows",)

    def __init__(self, shadows: Sequence[Shadow]) -> None:
        self.shadows = tuple((RouteTemplate(template), methods) for template, methods in shadows)

    def taken(self, method: str, path: str, root_path: str) -> bool:
        """Whether an earlier route takes a ``method`` request for ``path``."""
        return any(
            (methods is None or method in methods) and template.match(path, root_path) is not None
            for template, methods in self.shadows
        )

    def __call__(self, scope: Scope) -> bool:
        return self.taken(scope["method"], scope["path"], scope.get("root_path", ""))


class _DeclaredTemplate(RouteTemplate):
    """A declared cache rule's matcher: its route's template, minus what earlier routes take."""

    __slots__ = ("shadowed",)

    def __init__(self, template: str, shadowed: _Shadowed) -> None:
        super().__init__(template)
        self.shadowed = shadowed

    def match(self, path: str, root_path: str = "") -> dict[str, Any] | None:
        params = super().match(path, root_path)
        if params is None or self.shadowed.taken("GET", path, root_path):
            return None
        return params


def _fallback_exemption(route_rules: Sequence[Rule]) -> Callable[[Scope], bool]:
    """The default rule's ``exempt``: a request some route-level rule covers.

    A declared rule does not cover what an earlier route takes (its
    ``exempt`` says so), so such a request keeps the default rule.
    """

    def covered(scope: Scope) -> bool:
        method, path, root_path = scope["method"], scope["path"], scope.get("root_path", "")
        return any(
            rule.matches(method, path, root_path)
            and not (isinstance(rule.exempt, _Shadowed) and rule.exempt(scope))
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
        cache_rules = [*_declared_cache_rules(declared), *self.cache_rules]
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
        limited = self._rate_limited(chain, [*_declared_rules(declared), *self.rate_rules])
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


def _rule_name(item: Declared, explicit: str | None, clashes: set[str]) -> str:
    if explicit:
        return explicit
    if item.template in clashes and item.methods:
        return f"{','.join(sorted(item.methods - {'HEAD'}) or ['HEAD'])} {item.template}"
    return item.template


def _check_http(item: Declared, what: str) -> None:
    """Refuse a declaration on a WebSocket route, which the limiter and the cache never see."""
    if isinstance(item.route, WebSocketRoute):
        raise ConfigurationError(
            f"{what} on {describe(item.route)}: scalekit limits and caches HTTP requests, and a "
            "WebSocket connection is not one; limit the HTTP route that hands out its URL or "
            "token instead"
        )


def _declared_rules(declared: Sequence[Declared]) -> list[Rule]:
    from scalekit.ratelimit import Rule, client_ip

    counts: dict[str, int] = {}
    for item in declared:
        if item.limits:
            counts[item.template] = counts.get(item.template, 0) + 1
    clashes = {template for template, count in counts.items() if count > 1}
    rules: list[Rule] = []
    for item in declared:
        if item.limits:
            _check_http(item, "a limit")
        for index, declared_limit in enumerate(item.limits):
            name = _rule_name(item, declared_limit.name, clashes)
            if index:
                name = f"{name} #{index + 1}"
            try:
                rules.append(
                    Rule(
                        declared_limit.rate,
                        path=item.template,
                        methods=sorted(item.methods) if item.methods else None,
                        key=declared_limit.key or client_ip,
                        count=declared_limit.count,
                        cost=declared_limit.cost,
                        exempt=_Shadowed(item.shadows) if item.shadows else None,
                        on_backend_error=declared_limit.on_backend_error,
                        name=name,
                    )
                )
            except ValueError as exc:
                raise ConfigurationError(f"limit on {describe(item.route)}: {exc}") from exc
    return rules


def _declared_cache_rules(declared: Sequence[Declared]) -> list[CacheRule]:
    from scalekit.cache import CacheRule

    rules: list[CacheRule] = []
    for item in declared:
        marker = item.cache
        if marker is None:
            continue
        _check_http(item, "@cached")
        if item.methods is not None and "GET" not in item.methods:
            # Its rule would cache the GET route at the same path instead.
            served = ", ".join(sorted(item.methods))
            raise ConfigurationError(
                f"@cached on {describe(item.route)}, which serves {served}: only GET (and HEAD) "
                "responses are cached; put @cached on the GET route (use invalidate_on=... there "
                "for writes to the path)"
            )
        try:
            rule = CacheRule(
                item.template,
                ttl=marker.ttl,
                stale_ttl=marker.stale_ttl,
                statuses=marker.statuses,
                vary_user=marker.vary_user,
                vary_headers=marker.vary_headers,
                tags=marker.tags,
                max_body=marker.max_body,
                invalidate_on=marker.invalidate_on,
                name=marker.name,
            )
        except ValueError as exc:
            raise ConfigurationError(f"@cached on {describe(item.route)}: {exc}") from exc
        if not rule.vary_user:
            _check_credentials(item, rule)
        if item.shadows:
            # Only what the router sends to this route: not /users/me for /users/{user_id}.
            matcher = _DeclaredTemplate(rule.path, _Shadowed(item.shadows))
            object.__setattr__(rule, "pattern", matcher)
        rules.append(rule)
    return rules


def _check_credentials(item: Declared, rule: CacheRule) -> None:
    """A rule without ``vary_user`` on a route whose security scheme reads credentials.

    ``Authorization`` and ``Cookie`` make the cache bypass the request, so a
    route that requires them would never be cached; any other header would
    not, so one caller's response would be served to the next.

    Raises:
        ConfigurationError: naming the route, the scheme and the fix.
    """
    for credential in item.credentials:
        where = f"{credential.scheme} reads the {credential.name!r} {credential.location}"
        if credential.location == "header" and credential.name != "authorization":
            if credential.name in rule.vary_headers:
                continue
            raise ConfigurationError(
                f"@cached on {describe(item.route)}: {where}, which the cache does not see: "
                "without vary_user it would serve one caller's response to the next. Set "
                "vary_user=True and tell install(identity=...) who the caller is, or "
                f"vary_headers=[{credential.name!r}] to keep one entry per credential"
            )
        if credential.location != "query" and credential.required:
            raise ConfigurationError(
                f"@cached on {describe(item.route)}: {where}, which every request must carry, "
                "and a rule without vary_user never caches a request with credentials: set "
                "vary_user=True (install(identity=...) or auth_backend=... says who calls)"
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
