"""Cache rules: which responses are cached, for how long, keyed on what."""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.routing import compile_path

from scalekit._routes import RouteTemplate, RouteTemplateError
from scalekit.cache.errors import CacheConfigError

__all__ = ["CacheRule", "TagSource"]

TagSource = Callable[[Request], Iterable[str]] | Iterable[str] | None
"""A rule's tags: strings (``{name}`` is filled from the path parameters and
``{user}`` from the identity), or a callable taking a Starlette ``Request``."""

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _check_placeholders(path: str, tags: tuple[str, ...]) -> None:
    """Every ``{name}`` in a tag is a path parameter of ``path`` or ``{user}``."""
    params = set(compile_path(path)[2])
    for tag in tags:
        if not isinstance(tag, str) or not tag:
            raise CacheConfigError(
                f"CacheRule({path!r}): tags must be non-empty strings, got {tag!r}"
            )
        try:
            fields = [
                (name, spec, conversion)
                for _, name, spec, conversion in string.Formatter().parse(tag)
                if name is not None
            ]
        except ValueError as exc:
            raise CacheConfigError(
                f"CacheRule({path!r}): tag {tag!r} does not parse ({exc}); write literal "
                "braces as {{ and }}"
            ) from None
        for name, spec, conversion in fields:
            if name in params or name == "user":
                if spec or conversion:
                    raise CacheConfigError(
                        f"CacheRule({path!r}): tag {tag!r}: write {{{name}}} without a "
                        "format spec or conversion"
                    )
                continue
            known = ", ".join(f"{{{param}}}" for param in sorted(params | {"user"}))
            raise CacheConfigError(
                f"CacheRule({path!r}): tag {tag!r} uses {{{name}}}, which is not a path "
                f"parameter of the rule; use one of {known}"
            )


@dataclass(frozen=True)
class CacheRule:
    """One cacheable route.

    Args:
        path: a route template, e.g. ``/api/v1/tasks/{id}``; it covers exactly
            the requests a Starlette ``Route`` with this path would route
            (converters ``str``, ``path``, ``int``, ``float``, ``uuid`` or
            registered ones; ``root_path`` stripped as Starlette strips it).
        ttl: seconds a stored response is fresh.
        stale_ttl: seconds after ``ttl`` during which the stale response is
            still served while one request refreshes it (stale-while-revalidate).
        statuses: response statuses that may be stored.
        vary_user: key on the request's identity; requests with no identity
            bypass the rule. Required for responses to credentialed requests.
        vary_headers: request headers added to the key (an absent header and
            an empty one give different keys).
        tags: invalidation tags of an entry: strings with ``{param}`` /
            ``{user}`` placeholders, or ``callable(request) -> iterable of str``.
            The first tag chooses the Redis Cluster slot of the entry.
        max_body: responses larger than this many bytes stream through uncached.
        invalidate_on: unsafe methods (``"POST"``, ``"PUT"``, ``"PATCH"``,
            ``"DELETE"``) whose non-error response (2xx, or 3xx as in
            Post/Redirect/Get) on this path invalidates the tags.
        name: the rule's name in keys, events and metrics (default: ``path``).
        honor_request_directives: let a request's ``Cache-Control: no-cache``
            (or ``max-age=0``, ``Pragma: no-cache``) fetch a fresh response and
            overwrite the stored one, and ``no-store`` skip the cache. Off by
            default: like a shared cache behind nginx or a CDN, no client can
            refill or overwrite an entry on demand.

    Raises:
        CacheConfigError: a value is out of range (the message names it).
    """

    path: str
    ttl: float
    stale_ttl: float = 0
    statuses: frozenset[int] | Iterable[int] = frozenset({200})
    vary_user: bool = False
    vary_headers: tuple[str, ...] | Iterable[str] = ()
    tags: TagSource = None
    max_body: int = 1024 * 1024
    invalidate_on: tuple[str, ...] | Iterable[str] = ()
    name: str = ""
    honor_request_directives: bool = False
    pattern: RouteTemplate = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name, value, least in (("ttl", self.ttl, 0), ("stale_ttl", self.stale_ttl, -1)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or not value > least
            ):
                bound = "> 0" if least == 0 else ">= 0"
                raise CacheConfigError(
                    f"CacheRule({self.path!r}): {name} must be {bound} seconds (a number), "
                    f"got {value!r}"
                )
        if (
            isinstance(self.max_body, bool)
            or not isinstance(self.max_body, int)
            or self.max_body < 0
        ):
            raise CacheConfigError(
                f"CacheRule({self.path!r}): max_body must be a whole number of bytes >= 0, "
                f"got {self.max_body!r}"
            )
        for flag in ("vary_user", "honor_request_directives"):
            if not isinstance(getattr(self, flag), bool):
                raise CacheConfigError(
                    f"CacheRule({self.path!r}): {flag} must be True or False, "
                    f"got {getattr(self, flag)!r}"
                )
        statuses = frozenset(int(status) for status in self.statuses)
        if not statuses or any(not 200 <= status <= 599 for status in statuses):
            raise CacheConfigError(
                f"CacheRule({self.path!r}): statuses must be HTTP statuses 200-599, "
                f"got {sorted(statuses)}"
            )
        set_(self, "statuses", statuses)
        headers = self.vary_headers
        if isinstance(headers, str):
            headers = (headers,)
        set_(self, "vary_headers", tuple(sorted({header.lower() for header in headers})))
        methods = self.invalidate_on
        if isinstance(methods, str):
            methods = (methods,)
        methods = tuple(method.upper() for method in methods)
        unknown = set(methods) - UNSAFE_METHODS
        if unknown:
            raise CacheConfigError(
                f"CacheRule({self.path!r}): invalidate_on takes POST, PUT, PATCH or DELETE, "
                f"got {sorted(unknown)}"
            )
        if methods and self.tags is None:
            raise CacheConfigError(
                f"CacheRule({self.path!r}): invalidate_on needs tags to invalidate; "
                "add tags=(...) to the rule"
            )
        set_(self, "invalidate_on", methods)
        try:
            set_(self, "pattern", RouteTemplate(self.path))
        except RouteTemplateError as exc:
            raise CacheConfigError(f"CacheRule path: {exc}") from exc
        if self.tags is not None and not callable(self.tags):
            tags = (self.tags,) if isinstance(self.tags, str) else tuple(self.tags)
            if not tags:
                raise CacheConfigError(f"CacheRule({self.path!r}): tags must not be empty")
            _check_placeholders(self.path, tags)
            if "{user}" in "".join(tags) and not self.vary_user:
                raise CacheConfigError(
                    f"CacheRule({self.path!r}): a tag uses {{user}}; set vary_user=True"
                )
            set_(self, "tags", tags)
        set_(self, "name", self.name or self.path)

    def match(self, path: str, root_path: str = "") -> dict[str, Any] | None:
        """The converted path parameters if the rule covers ``path``, else ``None``."""
        return self.pattern.match(path, root_path)

    def tags_for(
        self, params: Mapping[str, Any], user: str | None, request: Callable[[], Any]
    ) -> tuple[str, ...]:
        """The tags of a request; ``request()`` builds a Starlette Request when needed."""
        if self.tags is None:
            return ()
        if callable(self.tags):
            return tuple(str(tag) for tag in self.tags(request()))
        values = dict(params, user=user or "")
        return tuple(tag.format_map(values) for tag in self.tags)
