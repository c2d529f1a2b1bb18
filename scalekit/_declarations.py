"""Route declarations (:mod:`scalekit.fastapi`) turned into rate-limit and cache rules.

:func:`declared_rules` makes a ``Rule`` per declared limit and
:func:`declared_cache_rules` a ``CacheRule`` per ``@cached``, refusing what
would not work (a WebSocket route, ``@cached`` on a non-GET route or on one
whose credentials the cache cannot see). A declared rule does not cover what
an earlier route takes: :class:`Shadowed` is its ``exempt``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from starlette.routing import WebSocketRoute
from starlette.types import Scope

from scalekit._route_checks import describe
from scalekit._routes import RouteTemplate
from scalekit.errors import ConfigurationError
from scalekit.fastapi import Declared, Shadow

if TYPE_CHECKING:
    from scalekit.cache import CacheRule
    from scalekit.ratelimit import Rule

__all__ = ["Shadowed", "declared_cache_rules", "declared_rules"]


class Shadowed:
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

    def __init__(self, template: str, shadowed: Shadowed) -> None:
        super().__init__(template)
        self.shadowed = shadowed

    def match(self, path: str, root_path: str = "") -> dict[str, Any] | None:
        params = super().match(path, root_path)
        if params is None or self.shadowed.taken("GET", path, root_path):
            return None
        return params


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


def declared_rules(declared: Sequence[Declared]) -> list[Rule]:
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
                        exempt=Shadowed(item.shadows) if item.shadows else None,
                        on_backend_error=declared_limit.on_backend_error,
                        name=name,
                    )
                )
            except ValueError as exc:
                raise ConfigurationError(f"limit on {describe(item.route)}: {exc}") from exc
    return rules


def declared_cache_rules(declared: Sequence[Declared]) -> list[CacheRule]:
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
            matcher = _DeclaredTemplate(rule.path, Shadowed(item.shadows))
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
