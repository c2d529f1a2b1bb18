"""The route template a request matched, read after the app handled it.

Starlette's router writes the route it matched into ``scope["route"]`` (the
innermost one, when routers are nested under ``Mount``) and the top-level
router into ``scope["router"]``. The middleware reads both after calling the
app, so nothing is matched twice. The full template of a route under mounts
(``/api/v1/users/{user_id}``) is found once per route object by walking the
router's tree, then cached: the per-request cost is one dictionary lookup.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, MutableMapping
from typing import Any

__all__ = ["KNOWN_METHODS", "OTHER_METHOD", "OVERFLOW_ROUTE", "UNMATCHED_ROUTE", "RouteNames"]

UNMATCHED_ROUTE = "<unmatched>"
"""The ``route`` value of every request no route matched (404s, redirects, scans)."""

OVERFLOW_ROUTE = "<overflow>"
"""The ``route`` value once ``max_routes`` distinct templates have been seen."""

OTHER_METHOD = "OTHER"
"""The ``method`` value of every request whose method is not a standard HTTP method."""

KNOWN_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
)


def normalise_method(method: str) -> str:
    """``method`` if it is a standard HTTP method, else :data:`OTHER_METHOD`."""
    return method if method in KNOWN_METHODS else OTHER_METHOD


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


def _match(routes: Any, scope: MutableMapping[str, Any], depth: int = 0) -> Any:
    """The route Starlette's router would pick for ``scope`` (None if none)."""
    from starlette.routing import Match

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

    Args:
        max_routes: at most this many distinct templates are reported; later
            new ones become :data:`OVERFLOW_ROUTE`. None means no cap.
    """

    def __init__(self, *, max_routes: int | None = None) -> None:
        if max_routes is not None and max_routes < 1:
            raise ValueError(
                f"max_routes must be at least 1 (or None for no cap), got {max_routes}"
            )
        self.max_routes = max_routes
        self._templates: MutableMapping[int, tuple[Any, str]] = {}
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, scope: MutableMapping[str, Any]) -> str:
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

    def _resolve(self, route: Any, router: Any, scope: MutableMapping[str, Any]) -> str:
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
    def _pick(candidates: list[str], scope: MutableMapping[str, Any]) -> str:
        from starlette.routing import compile_path

        path = str(scope.get("path", ""))
        app_root = str(scope.get("app_root_path", ""))
        if app_root and path.startswith(app_root):
            path = path[len(app_root) :]
        for template in candidates:
            regex, _, _ = compile_path(template)
            if regex.match(path):
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
