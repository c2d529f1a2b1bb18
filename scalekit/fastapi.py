"""Per-route limits and caching, declared where the route is written.

FastAPI::

    from fastapi import APIRouter, Depends
    from scalekit.fastapi import cached, limit

    router = APIRouter(prefix="/api")

    @router.get("/search", dependencies=[Depends(limit("5/minute"))])
    async def search(q: str) -> dict[str, list[str]]: ...

    @router.get("/tasks")
    @cached(ttl=60, vary_user=True, tags=["user:{user}:tasks"])
    async def tasks() -> list[dict[str, str]]: ...

Starlette (the decorators work on FastAPI endpoints too)::

    from scalekit.fastapi import cached, limited

    @limited("5/minute")
    async def search(request): ...

    routes = [Route("/api/search", search)]

Nothing here checks or stores anything per request: :func:`scalekit.install`
reads the declarations from the app's routes when the app starts and turns
each into a rule of the same middleware an explicit ``Rule``/``CacheRule``
feeds, with the route's full template (router prefixes and mounts included;
``root_path`` is stripped at match time) and the route's methods. So a
declared limit has the headers, counters and the one-Redis-round-trip
budget of any other rule, and replaces the default rule on its route.

This module imports neither FastAPI nor a component: it only describes.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import Scope

from scalekit._rates import RateSyntaxError, parse_rates
from scalekit._routes import walk_routes
from scalekit.errors import ConfigurationError

if TYPE_CHECKING:
    from scalekit.ratelimit import Count, OnBackendError

__all__ = [
    "Credential",
    "Declared",
    "KeyFunction",
    "RateSource",
    "RouteCache",
    "RouteLimit",
    "Shadow",
    "TagSource",
    "cached",
    "declarations",
    "limit",
    "limited",
    "route_templates",
]

F = TypeVar("F", bound=Callable[..., Any])

RateSource = str | Callable[[Request], str]
"""A limit: ``"5/minute"``, or a callable of the request returning one (a plan tier)."""

KeyFunction = Callable[[Scope], "str | None"]
"""Whom a request counts against: ``scalekit.ratelimit.user``, ``header(...)``, your own."""

TagSource = Iterable[str] | Callable[[Request], Iterable[str]] | None
"""Cache tags: strings with ``{param}``/``{user}`` placeholders, or a callable of the request."""

_LIMITS_ATTRIBUTE = "__scalekit_limits__"
_CACHE_ATTRIBUTE = "__scalekit_cache__"


@dataclasses.dataclass(frozen=True, eq=False)
class RouteLimit:
    """A rate limit declared on a route; see :func:`limit`.

    Also a FastAPI dependency that does nothing: the middleware already
    checked the limit before the route ran.
    """

    rate: RateSource
    key: KeyFunction | None = None
    count: Count | str = "all"
    cost: int = 1
    name: str | None = None
    on_backend_error: OnBackendError | str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.rate, str):
            try:
                parse_rates(self.rate)
            except RateSyntaxError as exc:
                raise ConfigurationError(f"limit({self.rate!r}): {exc}") from None
        elif not callable(self.rate):
            raise ConfigurationError(
                f"limit() takes a rate such as '5/minute' or a callable of the request "
                f"returning one, got {self.rate!r}"
            )
        # Every other argument is checked where it is written, by the rule it becomes.
        from scalekit.ratelimit.rules import RateLimitRule

        options: dict[str, Any] = {"key": self.key} if self.key is not None else {}
        try:
            RateLimitRule(
                self.rate,
                count=self.count,
                cost=self.cost,
                on_backend_error=self.on_backend_error,
                name=self.name,
                **options,
            )
        except ValueError as exc:
            raise ConfigurationError(
                f"limit({self.rate!r}): {str(exc).removeprefix('Rule ')}"
            ) from None

    def __call__(self) -> None:
        """FastAPI calls this per request; the limit was checked before the route ran."""


@dataclasses.dataclass(frozen=True, eq=False)
class RouteCache:
    """A cache rule declared on a route; see :func:`cached`."""

    ttl: float
    stale_ttl: float = 0
    vary_user: bool = False
    vary_headers: tuple[str, ...] = ()
    tags: TagSource = None
    statuses: tuple[int, ...] = (200,)
    max_body: int = 1024 * 1024
    invalidate_on: tuple[str, ...] = ()
    name: str = ""


def limit(
    rate: RateSource,
    *,
    key: KeyFunction | None = None,
    count: Count | str = "all",
    cost: int = 1,
    name: str | None = None,
    on_backend_error: OnBackendError | str | None = None,
) -> RouteLimit:
    """A rate limit for the route it is a dependency of: ``Depends(limit("5/minute"))``.

    Args:
        rate: ``"5/minute"``, ``"10/second;100/hour"``, or a callable taking
            the Starlette ``Request`` and returning such a string (a plan tier
            read from a JWT claim, a per-API-key quota). The headers carry the
            limit that applied.
        key: whom a request counts against, as ``Rule(key=...)``: the client
            IP (default), ``scalekit.ratelimit.user``, ``header("X-API-Key")``
            or a callable of the ASGI scope.
        count: ``"all"`` or ``"failures"`` (only responses with status >= 400).
        cost: how much one request uses up.
        name: the policy name in the headers (default: the route's template).
        on_backend_error: ``"allow"`` or ``"deny"`` (default: the limiter's).

    Raises:
        ConfigurationError: a rate that does not parse.
    """
    return RouteLimit(rate, key, count, cost, name, on_backend_error)


def limited(
    rate: RateSource,
    *,
    key: KeyFunction | None = None,
    count: Count | str = "all",
    cost: int = 1,
    name: str | None = None,
    on_backend_error: OnBackendError | str | None = None,
) -> Callable[[F], F]:
    """:func:`limit` as a decorator of the endpoint (Starlette routes, or FastAPI ones)."""
    declared = limit(
        rate, key=key, count=count, cost=cost, name=name, on_backend_error=on_backend_error
    )

    def decorate(endpoint: F) -> F:
        found: tuple[RouteLimit, ...] = getattr(endpoint, _LIMITS_ATTRIBUTE, ())
        setattr(endpoint, _LIMITS_ATTRIBUTE, (*found, declared))
        return endpoint

    return decorate


def cached(
    ttl: float,
    *,
    stale_ttl: float = 0,
    vary_user: bool = False,
    vary_headers: Iterable[str] = (),
    tags: TagSource = None,
    statuses: Iterable[int] = (200,),
    max_body: int = 1024 * 1024,
    invalidate_on: Iterable[str] = (),
    name: str = "",
) -> Callable[[F], F]:
    """Cache the responses of the decorated endpoint: ``@cached(ttl=60, vary_user=True)``.

    The arguments are :class:`~scalekit.cache.CacheRule`'s; the path is the
    route's, and ``{param}`` in ``tags`` names its path parameters.
    """
    declared = RouteCache(
        ttl,
        stale_ttl,
        vary_user,
        tuple(vary_headers),
        tags,
        tuple(statuses),
        max_body,
        tuple(invalidate_on),
        name,
    )

    # Checked where it is written (the path and its {param} tags only once the route is known).
    from scalekit.cache.rules import CacheRule

    try:
        CacheRule(
            "/",
            ttl=declared.ttl,
            stale_ttl=declared.stale_ttl,
            statuses=declared.statuses,
            vary_user=declared.vary_user,
            vary_headers=declared.vary_headers,
            max_body=declared.max_body,
            name=declared.name,
        )
    except ValueError as exc:
        raise ConfigurationError("@cached: " + str(exc).replace("CacheRule('/'): ", "")) from None

    def decorate(endpoint: F) -> F:
        if getattr(endpoint, _CACHE_ATTRIBUTE, None) is not None:
            raise ConfigurationError(f"{endpoint!r} is already @cached")
        setattr(endpoint, _CACHE_ATTRIBUTE, declared)
        return endpoint

    return decorate


Shadow = tuple[str, "frozenset[str] | None"]
"""A route in front of a declaring one: its full template and methods (None: any method)."""


@dataclasses.dataclass(frozen=True)
class Credential:
    """A credential a FastAPI security scheme in a route's dependencies reads.

    ``location`` is ``"header"``, ``"cookie"`` or ``"query"``; ``name`` the
    header (lower case), cookie or parameter; ``required`` whether the scheme
    refuses a request without it (``auto_error``).
    """

    scheme: str
    location: str
    name: str
    required: bool


@dataclasses.dataclass(frozen=True)
class Declared:
    """What one route declares, with where it is: its full template and methods.

    ``shadows`` are the routes the router tries first whose paths may overlap
    this route's (``/users/me`` in front of ``/users/{user_id}``): a request
    one of them takes never reaches this route, so its rules must not cover it.
    """

    template: str
    methods: frozenset[str] | None
    limits: tuple[RouteLimit, ...]
    cache: RouteCache | None
    route: BaseRoute
    shadows: tuple[Shadow, ...] = ()
    credentials: tuple[Credential, ...] = ()


def _dependency_limits(dependant: Any, depth: int = 0) -> Iterator[RouteLimit]:
    """The ``limit()`` dependencies anywhere in a FastAPI route's dependency tree."""
    if dependant is None or depth > 32:
        return
    if isinstance(getattr(dependant, "call", None), RouteLimit):
        yield dependant.call
    for child in getattr(dependant, "dependencies", ()) or ():
        yield from _dependency_limits(child, depth + 1)


def _text(value: object) -> str:
    return str(getattr(value, "value", value))


def _credentials(dependant: Any, depth: int = 0) -> Iterator[Credential]:
    """The security schemes (``APIKeyHeader``, ``OAuth2PasswordBearer``, ...) a route depends on."""
    if dependant is None or depth > 32:
        return
    call = getattr(dependant, "call", None)
    model = getattr(call, "model", None)
    if model is not None and hasattr(call, "scheme_name"):  # a fastapi.security scheme
        kind = _text(getattr(model, "type_", ""))
        required = bool(getattr(call, "auto_error", True))
        scheme = str(getattr(call, "scheme_name", type(call).__name__))
        if kind == "apiKey":
            location = _text(getattr(model, "in_", ""))
            name = str(getattr(model, "name", ""))
            if location == "header":
                name = name.lower()
            yield Credential(scheme, location, name, required)
        elif kind in ("http", "oauth2", "openIdConnect"):
            yield Credential(scheme, "header", "authorization", required)
    for child in getattr(dependant, "dependencies", ()) or ():
        yield from _credentials(child, depth + 1)


def route_templates(routes: Sequence[BaseRoute]) -> Iterator[tuple[str, BaseRoute]]:
    """Every route with its full template (mount and router prefixes included), depth first.

    The walk of :func:`scalekit._routes.walk_routes` (the one the metrics route
    label uses): FastAPI's lazily included routers yield their effective routes,
    which carry the prefixes and the router's dependencies.
    """
    for entry in walk_routes(routes):
        yield entry.template, entry.route


def _segments_may_overlap(first: str, second: str) -> bool:
    """Whether two route templates might match one path (conservative: unsure is yes)."""
    left, right = first.split("/"), second.split("/")
    for index in range(max(len(left), len(right))):
        a = left[index] if index < len(left) else None
        b = right[index] if index < len(right) else None
        if (a is not None and ":path}" in a) or (b is not None and ":path}" in b):
            return True
        if a is None or b is None:
            return False
        if a != b and "{" not in a and "{" not in b:
            return False
    return True


def _methods_of(route: BaseRoute) -> frozenset[str] | None:
    methods = getattr(route, "methods", None)
    if not methods:
        return None
    upper = {method.upper() for method in methods}
    return frozenset(upper | {"HEAD"} if "GET" in upper else upper)


_HANDLERS = ("get", "head", "post", "put", "patch", "delete", "options")


def _targets(route: BaseRoute) -> Iterator[tuple[object, frozenset[str] | None]]:
    """What may carry declarations, with the methods it serves.

    The endpoint (a function, or a class for all its methods), and for a
    Starlette ``HTTPEndpoint`` class each of its handlers (``get`` serves
    GET and, without a ``head``, HEAD).
    """
    endpoint = getattr(route, "endpoint", None)
    methods = getattr(route, "methods", None)
    yield endpoint, frozenset(methods) if methods else None
    if not inspect.isclass(endpoint):
        return
    for name in _HANDLERS:
        handler = getattr(endpoint, name, None)
        if handler is None:
            continue
        served = {name.upper()}
        if name == "get" and getattr(endpoint, "head", None) is None:
            served.add("HEAD")
        yield handler, frozenset(served)


def declarations(routes: Sequence[BaseRoute]) -> list[Declared]:
    """The limits and cache rules declared on ``routes`` (an app's ``router.routes``)."""
    found: list[Declared] = []
    before: list[Shadow] = []
    for template, route in route_templates(routes):
        earlier = tuple(before)
        before.append((template, _methods_of(route)))
        dependant = getattr(route, "dependant", None)
        shadows = tuple(shadow for shadow in earlier if _segments_may_overlap(shadow[0], template))
        credentials = tuple(dict.fromkeys(_credentials(dependant)))
        for index, (target, methods) in enumerate(_targets(route)):
            limits: list[RouteLimit] = list(getattr(target, _LIMITS_ATTRIBUTE, ()))
            seen = {id(item) for item in limits}
            for item in _dependency_limits(dependant) if index == 0 else ():
                if id(item) not in seen:  # one limit object reached twice counts once
                    seen.add(id(item))
                    limits.append(item)
            cache = getattr(target, _CACHE_ATTRIBUTE, None)
            if limits or cache is not None:
                found.append(
                    Declared(
                        template,
                        methods,
                        tuple(limits),
                        cache if isinstance(cache, RouteCache) else None,
                        getattr(route, "original_route", route),
                        shadows,
                        credentials,
                    )
                )
    return found
