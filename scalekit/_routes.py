"""The one route matcher: a rule covers a request exactly when Starlette would route it.

Cache rules, rate-limit rules and the metrics route lookup all ask
:class:`RouteTemplate`. It does not re-implement Starlette's matching: each
template becomes a real :class:`starlette.routing.Route`, and a request is
matched the way ``Route.matches`` does it, with that route's own compiled
pattern and converters and Starlette's own ``get_route_path``. So the
anchoring (``compile_path``'s ``^...$``, where ``$`` also matches before a
trailing newline, i.e. ``/login%0A``), the converters (``str``, ``path``,
``int``, ``float``, ``uuid`` and any registered with
``starlette.convertors.register_url_convertor``) and the stripping of
``root_path`` are those of the installed Starlette; a hypothesis test checks
the result against ``Route.matches`` itself. Methods follow Starlette too:
a rule for ``GET`` also covers ``HEAD``.

The rest of the module walks an app's route tree (:func:`walk_routes`:
Starlette mounts and hosts, FastAPI's lazily included routers, nested ones)
and finds, after the app ran, the full template of the route that handled a
request (``/api/v1/users/{user_id}`` under mounts and ``include_router``
prefixes), for the metrics ``route`` label and the access log; the
declarations of :mod:`scalekit.fastapi` read the same walk.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, MutableMapping
from functools import lru_cache
from typing import Any, NamedTuple

from starlette.convertors import CONVERTOR_TYPES
from starlette.routing import PARAM_REGEX, Match, Mount, Route
from starlette.types import Receive, Scope, Send

from scalekit.errors import ConfigurationError

try:  # the router's own function, so exact-path checks strip root_path as it does
    from starlette._utils import get_route_path as _get_route_path
except ImportError:  # pragma: no cover - a Starlette that moved it

    def _get_route_path(scope: Scope) -> str:
        path: str = scope["path"]
        root_path: str = scope.get("root_path", "")
        if not root_path or not path.startswith(root_path):
            return path
        if path == root_path:
            return ""
        return path[len(root_path) :] if path[len(root_path)] == "/" else path


__all__ = [
    "KNOWN_METHODS",
    "OTHER_METHOD",
    "OVERFLOW_ROUTE",
    "UNMATCHED_ROUTE",
    "RouteEntry",
    "RouteNames",
    "RouteTemplate",
    "RouteTemplateError",
    "normalise_method",
    "route_methods",
    "route_path",
    "walk_routes",
]

UNMATCHED_ROUTE = "<unmatched>"
"""The ``route`` value of every request no route matched (404s, redirects, scans)."""

OVERFLOW_ROUTE = "<overflow>"
"""The ``route`` value once ``max_routes`` distinct templates have been seen."""

OTHER_METHOD = "OTHER"
"""The ``method`` value of every request whose method is not a standard HTTP method."""

KNOWN_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
)


class RouteTemplateError(ConfigurationError):
    """A route template Starlette would reject (components re-raise it as their config error)."""


class _Endpoint:
    """An ASGI class endpoint, so the ``Route`` has no methods of its own (we check them)."""

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send
    ) -> None:  # pragma: no cover
        raise RuntimeError("a RouteTemplate only matches; it never handles a request")


_ENDPOINT = _Endpoint()


class RouteTemplate:
    """A route template (``/users/{id:int}``) matched exactly as a Starlette ``Route`` matches.

    Args:
        template: the path a ``Route`` would be declared with.

    Raises:
        RouteTemplateError: the template does not start with ``/``, names a
            converter Starlette does not know, or repeats a parameter.
    """

    __slots__ = ("_convertors", "_regex", "template")

    def __init__(self, template: str) -> None:
        if not isinstance(template, str) or not template.startswith("/"):
            raise RouteTemplateError(f"a route template must start with '/', got {template!r}")
        for found in PARAM_REGEX.finditer(template):
            converter = (found.group(2) or ":str")[1:]
            if converter not in CONVERTOR_TYPES:
                known = ", ".join(sorted(CONVERTOR_TYPES))
                raise RouteTemplateError(
                    f"route template {template!r} uses the unknown converter {converter!r}; "
                    f"use one of {known} or register it with "
                    "starlette.convertors.register_url_convertor first"
                )
        try:
            route = Route(template, _ENDPOINT)
        except (AssertionError, ValueError) as exc:
            raise RouteTemplateError(f"route template {template!r} is invalid: {exc}") from exc
        self._regex = route.path_regex
        self._convertors = route.param_convertors
        self.template = template

    def match(self, path: str, root_path: str = "") -> dict[str, Any] | None:
        """The converted path parameters if the router would route ``path`` here, else None.

        Args:
            path: the ASGI scope's ``path`` (percent-decoded, ``root_path`` included
                when the server puts it there).
            root_path: the scope's ``root_path``; stripped as Starlette strips it.

        A path whose parameter a custom converter fails to convert is not
        covered: Starlette's router raises on it, so no endpoint runs.
        """
        if root_path:
            path = _get_route_path({"path": path, "root_path": root_path})
        found = self._regex.match(path)
        if found is None:
            return None
        try:
            return {
                name: self._convertors[name].convert(value)
                for name, value in found.groupdict().items()
            }
        except Exception:  # a custom converter's convert() raised
            return None

    def __repr__(self) -> str:
        return f"RouteTemplate({self.template!r})"


def route_path(scope: Scope) -> str:
    """The path the router matches: ``path`` with ``root_path`` stripped as Starlette strips it.

    For exact-path checks (excluded or quiet paths); templates use :class:`RouteTemplate`.
    """
    return _get_route_path(scope)


def route_methods(methods: Iterable[str] | None) -> frozenset[str] | None:
    """The methods a rule covers, as Starlette routes them: upper case, HEAD with GET."""
    if methods is None:
        return None
    normalised = {method.upper() for method in methods}
    if "GET" in normalised:
        normalised.add("HEAD")
    return frozenset(normalised)


def normalise_method(method: str) -> str:
    """``method`` if it is a standard HTTP method, else :data:`OTHER_METHOD`."""
    return method if method in KNOWN_METHODS else OTHER_METHOD


@lru_cache(maxsize=256)
def _compiled(template: str) -> RouteTemplate:
    return RouteTemplate(template)


def _mount_prefix(route: Any) -> str:
    """The label a ``Mount`` adds in front of its routes (``/api/{version}``)."""
    path_format = str(getattr(route, "path_format", ""))
    return path_format.removesuffix("/{path}")


class RouteEntry(NamedTuple):
    """One route of an app's tree, with its full path (mount and router prefixes included)."""

    template: str
    """The matchable template (``/api/{version:int}/users/{id:int}``; an opaque mount ends
    in ``/{path:path}``)."""
    label: str
    """The metrics ``route`` label (``/api/{version}/users/{id}``)."""
    route: Any
    """The object the router matches: for a route of a FastAPI included router, the
    effective route carrying the prefixes and the router's dependencies."""
    original: Any
    """The route as the app declared it (``route`` itself unless included by FastAPI)."""


def _included(route: Any) -> list[tuple[Any, Any]] | None:
    """The routes of a lazily included FastAPI router as ``(route, original)``, else None.

    FastAPI >= 0.120 keeps ``include_router(router, prefix=...)`` as one
    ``_IncludedRouter`` route with no ``routes`` of its own; its effective route
    contexts (nested includes flattened, in the order it tries them) carry each
    route's full path, methods and dependencies. Plain Starlette routes, mounts
    and hosts under it come as prefixed copies (``starlette_route``).
    """
    contexts = getattr(route, "effective_route_contexts", None)
    if not callable(contexts):
        return None
    found = []
    for context in contexts():
        effective = getattr(context, "starlette_route", None) or context
        found.append((effective, getattr(context, "original_route", effective)))
    return found


def walk_routes(routes: Iterable[Any]) -> Iterator[RouteEntry]:
    """Every route of ``routes`` (an app's ``router.routes``) with its full path, depth first.

    The one walk of an app's route tree: the metrics route label and the
    declarations of :mod:`scalekit.fastapi` both read it. It descends into
    Starlette ``Mount``/``Host`` routers and FastAPI's included routers
    (nested ones and mounts under them too); a mounted app it cannot see into
    is one entry covering everything under it.
    """

    def walk(routes: Iterable[Any], prefix: str, label: str, depth: int) -> Iterator[RouteEntry]:
        if depth > 32:  # a router mounted inside itself
            return
        for route in routes or ():
            included = _included(route)
            pairs = included if included is not None else [(route, route)]
            for leaf, original in pairs:
                path = str(getattr(leaf, "path", ""))
                children = getattr(leaf, "routes", None)
                if children:
                    yield from walk(children, prefix + path, label + _mount_prefix(leaf), depth + 1)
                    continue
                path_format = str(getattr(leaf, "path_format", ""))
                if isinstance(leaf, Mount):  # a mounted app we cannot see into: all under it
                    yield RouteEntry(
                        prefix + path + "/{path:path}", label + path_format, leaf, leaf
                    )
                else:
                    yield RouteEntry(prefix + path, label + path_format, leaf, original)

    yield from walk(routes, "", "", 0)


def _match(routes: Iterable[Any], scope: Scope, depth: int = 0) -> tuple[Match, Any]:
    """The route Starlette's (or FastAPI's) router would pick for ``scope``, and how."""
    if depth > 32:
        return Match.NONE, None
    partial = None
    for route in routes or ():
        included = _included(route)
        if included is not None:
            # The included router matches its routes in order: a full match of
            # one of them is the router's full match, else its first partial.
            match, found = _match([leaf for leaf, _ in included], scope, depth + 1)
            if match is Match.FULL:
                return match, found
            if match is Match.PARTIAL and partial is None:
                partial = found
            continue
        try:
            match, child_scope = route.matches(scope)
        except Exception:  # a custom converter that raises: no route, as far as we can tell
            continue
        if match is Match.NONE:
            continue
        children = getattr(route, "routes", None)
        if children:
            if match is Match.FULL:
                # The mount takes the request; its router answers 404 if nothing inside matches.
                return Match.FULL, _match(children, {**scope, **child_scope}, depth + 1)[1]
            continue
        if match is Match.FULL:
            return match, route
        partial = partial or route  # the method differs: the router would answer 405
    return (Match.PARTIAL, partial) if partial is not None else (Match.NONE, None)


class RouteNames:
    """Turns a handled request's scope into a bounded ``route`` label.

    Starlette's router writes the route it matched into ``scope["route"]``
    (the innermost one under ``Mount``) and the top-level router into
    ``scope["router"]``; both are read after the app ran, so nothing is
    matched twice. The full template of a route is found once per route
    object by walking the router's tree, then cached: one dictionary lookup
    per request.

    Args:
        max_routes: at most this many distinct templates are reported; later
            new ones become :data:`OVERFLOW_ROUTE`. None means no cap.
    """

    def __init__(self, *, max_routes: int | None = None) -> None:
        if max_routes is not None and max_routes < 1:
            raise ConfigurationError(
                f"max_routes must be at least 1 (or None for no cap), got {max_routes}"
            )
        self.max_routes = max_routes
        self._templates: MutableMapping[int, tuple[Any, str]] = {}
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, scope: Scope) -> str:
        """The template of the route that handled ``scope`` (call after the app ran)."""
        route = scope.get("route")
        router = scope.get("router")
        if route is None:
            # The router never ran (a middleware inside this one answered: a
            # cache hit, a 429), or it picked a route that does not write
            # scope["route"] (FastAPI's router, for a plain Starlette route).
            # Match the app's routes so it still counts under its template,
            # against the request's own root_path (mounts rewrite root_path).
            router = getattr(scope.get("app"), "router", None)
            if "app_root_path" in scope:
                scope = {**scope, "root_path": scope["app_root_path"]}
            route = _match(getattr(router, "routes", ()), scope)[1]
        if route is None or getattr(route, "routes", None):
            # No route, or a Mount/Host whose own router then matched nothing.
            return UNMATCHED_ROUTE
        cached = self._templates.get(id(route))
        if cached is not None and cached[0] is route:
            return cached[1]
        return self._resolve(route, router, scope)

    def _resolve(self, route: Any, router: Any, scope: Scope) -> str:
        # FastAPI's router writes the route as declared (shared by every
        # include_router of its router), ours finds the effective one: both count.
        entries = [
            entry
            for entry in walk_routes(getattr(router, "routes", ()))
            if entry.route is route or entry.original is route
        ]
        candidates = list(dict.fromkeys((entry.template, entry.label) for entry in entries))
        if len(candidates) > 1:
            # One route object at several places (a router mounted or included
            # twice): ask each full template. Not cached: it depends on the path.
            return self._admit(self._pick(candidates, scope))
        template = candidates[0][1] if candidates else str(getattr(route, "path_format", ""))
        template = self._admit(template or UNMATCHED_ROUTE)
        with self._lock:
            self._templates[id(route)] = (route, template)
        return template

    @staticmethod
    def _pick(candidates: list[tuple[str, str]], scope: Scope) -> str:
        path = str(scope.get("path", ""))
        # The router rewrote root_path while descending into mounts; the
        # request's own root_path is kept as app_root_path.
        root_path = str(scope.get("app_root_path", scope.get("root_path", "")))
        for template, label in candidates:
            try:
                matcher = _compiled(template)
            except RouteTemplateError:
                continue
            if matcher.match(path, root_path) is not None:
                return label or UNMATCHED_ROUTE
        return candidates[0][1] or UNMATCHED_ROUTE

    def _admit(self, template: str) -> str:
        if self.max_routes is None or template in self._seen:
            return template
        with self._lock:
            if template in self._seen:
                return template
            if len(self._seen) >= self.max_routes:
                return OVERFLOW_ROUTE
            self._seen.add(template)
            return template
