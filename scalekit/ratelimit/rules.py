"""Rate-limit rules: which requests a limit covers and whom it counts against."""

from __future__ import annotations

import difflib
import enum
import functools
from collections.abc import Callable, Iterable

from starlette.requests import Request
from starlette.types import Scope

from scalekit._rates import Rate, RateSyntaxError
from scalekit._rates import parse_rates as _parse_rates
from scalekit._routes import KNOWN_METHODS, RouteTemplate, RouteTemplateError, route_methods
from scalekit.ratelimit.errors import RateLimitConfigError, choice
from scalekit.ratelimit.keys import KeyFunction, client_ip

__all__ = ["Count", "LimitSource", "OnBackendError", "Rate", "RateLimitRule", "Rule", "parse_rates"]


class Count(enum.StrEnum):
    """Which requests a rule counts."""

    ALL = "all"
    """Every request it admits."""
    FAILURES = "failures"
    """Only responses with status >= 400 (or an exception); successes are free."""


class OnBackendError(enum.StrEnum):
    """What a rule does when its counters cannot be reached."""

    ALLOW = "allow"
    """Fail open: the request goes through, unlimited and without headers."""
    DENY = "deny"
    """Fail closed: 503 with ``Retry-After``."""


def parse_rates(limit: str) -> tuple[Rate, ...]:
    """Parse ``"100/15 minutes"`` or ``"10/second;100/15 minutes"`` (``limits``' grammar).

    Raises:
        RateLimitConfigError: the text is not a rate, or a rate admits nothing.
    """
    try:
        return _parse_rates(limit)
    except RateSyntaxError as exc:
        raise RateLimitConfigError(f"Rule limit: {exc}") from None


LimitSource = str | Callable[[Request], str]
"""A rule's limit: ``"100/minute"``, or a callable of the request returning one."""


@functools.lru_cache(maxsize=512)  # a limit callable returns a few distinct strings (tiers)
def _checked_rates(limit: str, cost: int) -> tuple[Rate, ...]:
    rates = parse_rates(limit)
    for rate in rates:
        if cost > rate.amount:
            raise RateLimitConfigError(
                f"Rule cost {cost} is more than the limit {rate.text}: no request could pass"
            )
    return rates


class RateLimitRule:
    """A limit and the requests it covers (``Rule`` is the same class, shorter).

    Args:
        limit: the rate(s), as ``limits`` writes them: ``"100/15 minutes"``,
            ``"10/second;100/15 minutes"`` (every rate must hold); or a callable
            taking the Starlette ``Request`` and returning such a string (a plan
            tier from a JWT claim, a per-API-key quota), called once per
            request the rule covers. Each distinct rate gets its own counter,
            and the headers carry the rate that applied.
        path: a route template (``"/api/v1/auth/login"``, ``"/users/{id:int}"``,
            ``"/files/{rest:path}"``); the rule covers exactly the requests a
            Starlette ``Route`` with this path would route (same converters,
            ``root_path`` stripped as Starlette strips it). ``None`` covers every path.
        methods: HTTP methods covered (``["POST"]``); ``"GET"`` also covers
            ``HEAD``, as the router runs the GET endpoint for it. ``None`` covers all.
        key: whom the request counts against: :func:`~scalekit.ratelimit.client_ip`
            (default), :func:`~scalekit.ratelimit.user`,
            :func:`~scalekit.ratelimit.header` or any callable taking the ASGI
            scope and returning a string (``None`` falls back to the client IP).
        count: :class:`Count` or its value: ``"all"`` counts every request;
            ``"failures"`` admits requests while the window has room and counts
            only responses with status >= 400.
        cost: how much one request uses up.
        exempt: a callable taking the ASGI scope; ``True`` skips this rule.
        on_backend_error: :class:`OnBackendError` or its value, ``"allow"`` or
            ``"deny"``, when the backend fails; ``None`` takes the middleware's.
        name: the policy name in the ``RateLimit`` headers and events; defaults
            to ``"default"`` for a rule without a path, else the path.

    Raises:
        RateLimitConfigError: any argument is invalid; the message says which.
    """

    __slots__ = (
        "_path_template",
        "cost",
        "count",
        "exempt",
        "key",
        "limit",
        "methods",
        "name",
        "on_backend_error",
        "path",
        "rates",
    )

    def __init__(
        self,
        limit: LimitSource,
        *,
        path: str | None = None,
        methods: Iterable[str] | None = None,
        key: KeyFunction = client_ip,
        count: Count | str = Count.ALL,
        cost: int = 1,
        exempt: Callable[[Scope], bool] | None = None,
        on_backend_error: OnBackendError | str | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(limit, str) and not callable(limit):
            raise RateLimitConfigError(
                "Rule limit must be a string like '100/minute' or a callable of the request "
                f"returning one, got {limit!r}"
            )
        try:
            path_template = RouteTemplate(path) if path is not None else None
        except RouteTemplateError as exc:
            raise RateLimitConfigError(f"Rule path: {exc}") from exc
        counted = choice(Count, count, "Rule count")
        if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
            raise RateLimitConfigError(f"Rule cost must be a whole number >= 1, got {cost!r}")
        when_down = (
            None
            if on_backend_error is None
            else choice(OnBackendError, on_backend_error, "Rule on_backend_error", none=True)
        )
        if not callable(key):
            raise RateLimitConfigError(
                f"Rule key must be client_ip, user, header(...) or a callable, got {key!r}"
            )
        if exempt is not None and not callable(exempt):
            raise RateLimitConfigError(f"Rule exempt must be a callable or None, got {exempt!r}")
        if isinstance(methods, str):
            raise RateLimitConfigError(
                f"Rule methods must be a list such as ['POST'], got the string {methods!r}"
            )
        if methods is not None:
            methods = list(methods)
            for method in methods:
                if not isinstance(method, str) or method.upper() not in KNOWN_METHODS:
                    close = difflib.get_close_matches(str(method).upper(), KNOWN_METHODS, n=1)
                    hint = f"did you mean {close[0]!r}?" if close else "use standard HTTP methods"
                    raise RateLimitConfigError(
                        f"Rule methods: {method!r} is not an HTTP method; {hint}"
                    )
        self.limit = limit
        self.rates = _checked_rates(limit, cost) if isinstance(limit, str) else ()
        self.path = path
        self.methods = route_methods(methods)
        self.key = key
        self.count = counted
        self.cost = cost
        self.exempt = exempt
        self.on_backend_error = when_down
        self.name = name or (path if path else "default")
        if (
            not (self.name.isascii() and self.name.isprintable())
            or '"' in self.name
            or "\\" in self.name
        ):
            raise RateLimitConfigError(
                f"Rule name {self.name!r} must be printable ASCII without quotes or backslashes"
            )
        self._path_template = path_template

    @property
    def dynamic(self) -> bool:
        """Whether the limit is a callable of the request (its rates vary per request)."""
        return not isinstance(self.limit, str)

    def rates_for(self, scope: Scope) -> tuple[Rate, ...]:
        """The rates that apply to this request: the rule's, or what its callable returns.

        Raises:
            RateLimitConfigError: the callable returned something that is not a rate.
        """
        if isinstance(self.limit, str):
            return self.rates
        text = self.limit(Request(scope))
        try:
            if not isinstance(text, str):
                raise RateLimitConfigError(f"returned {text!r}, not a rate like '100/minute'")
            return _checked_rates(text, self.cost)
        except RateLimitConfigError as exc:
            raise RateLimitConfigError(f"Rule {self.name!r}: its limit callable: {exc}") from None

    def matches(self, method: str, path: str, root_path: str = "") -> bool:
        """Whether this rule covers a request (exemptions aside)."""
        if self.methods is not None and method not in self.methods:
            return False
        return self._path_template is None or self._path_template.match(path, root_path) is not None

    def __repr__(self) -> str:
        return (
            f"RateLimitRule({self.limit!r}, name={self.name!r}, path={self.path!r}, "
            f"count={self.count.value!r})"
        )


Rule = RateLimitRule
"""The short name of :class:`RateLimitRule` (the same class, not deprecated)."""
