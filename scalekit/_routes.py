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

The rest of the module finds, after the app ran, the full template of the
route that handled a request (``/api/v1/users/{user_id}`` under mounts), for
the metrics ``route`` label and the access log.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, MutableMapping
from functools import lru_cache
from typing import Any

from starlette.convertors import CONVERTOR_TYPES
from starlette.routing import PARAM_REGEX, Match, Route
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
    "RouteNames",
    "RouteTemplate",
    "RouteTemplateError",
    "normalise_method",
    "route_methods",
    "route_path",
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
    """The template a ``Mount`` adds in front of its routes (``/api/{version}``)."""
    path_format = str(getattr(route, "path_format", ""))
    return path_format.removesuffix("/{path}")


def _walk(routes: Any, prefix: str, target: Any, depth: int = 0) -> Iterator[str]:
    """Every full template under which ``target`` appears in ``routes``."""
    if depth > 32:  # a router mounted inside itself
        return
    for route in routes or ():
        if route is target:
            yield prefix + str(getattr(route, "path_format", ""))
        children = getattr(route, "routes", None)
        if children:
            yield from _walk(children, prefix + _mount_prefix(route), target, depth + 1)


def _match(routes: Any, scope: Scope, depth: int = 0) -> Any:
    """The route Starlette's router would pick for ``scope`` (None if none)."""
    if depth > 32:
        return None
    partial = None
    for route in routes or ():
        match, child_scope = route.matches(scope)
        if match is Match.NONE:
            continue
        children = getattr(route, "routes", None)
        if children:
            if match is Match.FULL:
                found = _match(children, {**scope, **child_scope}, depth + 1)
                if found is not None:
                    return found
            continue
        if match is Match.FULL:
            return route
        partial = partial or route  # the method differs: the router would answer 405
    return partial


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
            # The router never ran: a middleware inside this one answered (a
            # cache hit, a 429). Match the app's routes so it still counts
            # under its template.
            router = getattr(scope.get("app"), "router", None)
            route = _match(getattr(router, "routes", ()), scope)
        if route is None or getattr(route, "routes", None):
            # No route, or a Mount/Host whose own router then matched nothing.
            return UNMATCHED_ROUTE
        cached = self._templates.get(id(route))
        if cached is not None and cached[0] is route:
            return cached[1]
        return self._resolve(route, router, scope)

    def _resolve(self, route: Any, router: Any, scope: Scope) -> str:
        candidates = list(dict.fromkeys(_walk(getattr(router, "routes", ()), "", route)))
        if len(candidates) == 1:
            template = candidates[0]
        elif candidates:
            # One route object mounted at several places: ask each full template.
            return self._admit(self._pick(candidates, scope))
        else:
            template = str(getattr(route, "path_format", "")) or UNMATCHED_ROUTE
        template = self._admit(template)
        with self._lock:
            self._templates[id(route)] = (route, template)
        return template

    @staticmethod
    def _pick(candidates: list[str], scope: Scope) -> str:
        path = str(scope.get("path", ""))
        # The router rewrote root_path while descending into mounts; the
        # request's own root_path is kept as app_root_path.
        root_path = str(scope.get("app_root_path", scope.get("root_path", "")))
        for template in candidates:
            try:
                matcher = _compiled(template)
            except RouteTemplateError:
                continue
            if matcher.match(path, root_path) is not None:
                return template
        return candidates[0]

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
