"""The start-up checks of the app's routes: scalekit's own paths and explicit path rules.

:class:`scalekit._layers.Layers` runs them once the app's routes are all known:
scalekit's endpoints (health, metrics) must be reachable and must not hide
a route of the app (:func:`check_not_shadowed`, :func:`check_paths_free`),
and every explicit ``Rule``/``CacheRule`` path must match a route
(:func:`check_rule_paths`). :func:`describe` names a route in messages.
"""

from __future__ import annotations

import difflib
import uuid
from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute, Match, Mount, Route

from scalekit.errors import ConfigurationError
from scalekit.fastapi import route_templates

__all__ = [
    "check_not_shadowed",
    "check_paths_free",
    "check_rule_paths",
    "describe",
    "first_full_match",
]


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
