"""Options of the pieces :func:`scalekit.install` builds, one small value object per piece.

:class:`~scalekit.Settings` holds what differs between deployments (URLs,
proxies, the default rate); these hold how the code wants each piece to
behave, and mirror the keyword arguments of the middleware they configure,
so nothing a component offers is out of reach of ``install()``::

    install(app, settings,
            ratelimit=RateLimitOptions(strategy="fixed-window", legacy_headers=True),
            health=HealthOptions(timeout=0.5, version="1.4.2"),
            metrics=MetricsOptions(max_routes=200))

Importing this module needs no extra and imports no component.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from scalekit.errors import ConfigurationError

if TYPE_CHECKING:
    from scalekit._breaker import CircuitBreaker
    from scalekit.cache import CacheBackend
    from scalekit.ratelimit import RateLimitBackend

__all__ = [
    "DEFAULT_METRICS_BUCKETS",
    "CacheOptions",
    "DefaultLimit",
    "HealthOptions",
    "MetricsOptions",
    "RateLimitOptions",
    "RequestContextOptions",
]

DEFAULT_METRICS_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Request-duration buckets of ``install()``, in seconds: from 1 ms (a cache hit) to 10 s."""


class DefaultLimit(enum.StrEnum):
    """Where ``Settings.rate_limit`` (the default rule) applies.

    ``FALLBACK`` (the default): on every request that no route-level rule (a
    rule with a ``path``, or a limit declared on the route) covers, so a route
    can be given a looser limit than the default. ``EVERYWHERE``: on every
    request, on top of the route's own rules (a route can only be tightened).
    """

    FALLBACK = "fallback"
    EVERYWHERE = "everywhere"


def _check_path(owner: str, name: str, value: str) -> None:
    if not isinstance(value, str) or not value.startswith("/") or "{" in value:
        raise ConfigurationError(
            f"{owner}.{name} must be a fixed path starting with '/' (no parameters), got {value!r}"
        )


def _check_seconds(owner: str, name: str, value: float, *, zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigurationError(f"{owner}.{name} must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not zero) or math.isinf(value):
        bound = ">= 0" if zero else "> 0"
        raise ConfigurationError(
            f"{owner}.{name} must be finite and {bound} seconds, got {value!r}"
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class RateLimitOptions:
    """How ``install()`` builds the :class:`~scalekit.ratelimit.RateLimitMiddleware`.

    Args:
        strategy: ``"sliding-window-counter"`` (default), ``"fixed-window"`` or
            ``"moving-window"``.
        on_backend_error: ``"allow"`` (fail open, the default) or ``"deny"``.
        headers: send ``RateLimit-Policy`` and ``RateLimit``.
        legacy_headers: also send ``X-RateLimit-Limit``, ``-Remaining``, ``-Reset``.
        ipv6_prefix: IPv6 clients are keyed by this prefix length.
        key_prefix: prefix of every Redis key.
        breaker: the circuit breaker in front of the backend.
        storage: a backend (or ``"memory://"`` / a Redis URL) instead of the one
            ``install()`` builds from ``Settings.redis_url``.
        default_limit: where ``Settings.rate_limit`` applies (see :class:`DefaultLimit`).
    """

    strategy: str = "sliding-window-counter"
    on_backend_error: str = "allow"
    headers: bool = True
    legacy_headers: bool = False
    ipv6_prefix: int | None = 64
    key_prefix: str = "rl"
    breaker: CircuitBreaker | None = None
    storage: str | RateLimitBackend | None = None
    default_limit: DefaultLimit = DefaultLimit.FALLBACK

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "default_limit", DefaultLimit(self.default_limit))
        except ValueError:
            raise ConfigurationError(
                "RateLimitOptions.default_limit must be 'fallback' or 'everywhere', "
                f"got {self.default_limit!r}"
            ) from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class CacheOptions:
    """How ``install()`` builds the :class:`~scalekit.cache.CacheMiddleware`.

    Args:
        lock: take a short backend lock on a miss so one instance fills a key.
        lock_timeout: seconds the fill lock lives.
        lock_wait: seconds another instance waits for the filler's result.
        poll_interval: seconds between looks while waiting.
        backend: a backend instead of the one ``install()`` builds from
            ``Settings.redis_url`` (``RedisCache.from_url(url, prefix=...)``,
            ``MemoryCache(max_entries=...)``).
    """

    lock: bool = True
    lock_timeout: float = 5.0
    lock_wait: float = 2.0
    poll_interval: float = 0.02
    backend: CacheBackend | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class MetricsOptions:
    """How ``install()`` builds the :class:`~scalekit.observability.MetricsMiddleware`.

    Args:
        buckets: request-duration histogram buckets in seconds.
        exclude_paths: paths not counted, on top of the health and metrics
            paths ``install()`` mounts (which are never counted).
        max_routes: a hard cap on distinct ``route`` label values; None for none.
        created_series: export the ``*_created`` samples of counters and
            histograms (off: they are a quarter of all samples and rarely queried).
    """

    buckets: Sequence[float] = DEFAULT_METRICS_BUCKETS
    exclude_paths: Sequence[str] = ()
    max_routes: int | None = None
    created_series: bool = False

    def __post_init__(self) -> None:
        buckets = tuple(self.buckets)
        if not buckets or any(
            isinstance(b, bool) or not isinstance(b, int | float) or not b > 0 for b in buckets
        ):
            raise ConfigurationError(
                f"MetricsOptions.buckets must be positive seconds, got {self.buckets!r}"
            )
        if list(buckets) != sorted(set(buckets)):
            raise ConfigurationError(
                f"MetricsOptions.buckets must be increasing, got {self.buckets!r}"
            )
        object.__setattr__(self, "buckets", buckets)
        if isinstance(self.exclude_paths, str):
            raise ConfigurationError(
                "MetricsOptions.exclude_paths must be a list of paths, got the string "
                f"{self.exclude_paths!r}"
            )
        for path in self.exclude_paths:
            _check_path("MetricsOptions", "exclude_paths", path)
        object.__setattr__(self, "exclude_paths", tuple(self.exclude_paths))
        if self.max_routes is not None and (
            isinstance(self.max_routes, bool)
            or not isinstance(self.max_routes, int)
            or self.max_routes < 1
        ):
            raise ConfigurationError(
                f"MetricsOptions.max_routes must be a whole number >= 1 or None, "
                f"got {self.max_routes!r}"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class HealthOptions:
    """Where ``install()`` mounts health and how :class:`~scalekit.observability.Health` runs.

    Args:
        live_path: the liveness endpoint.
        ready_path: the readiness endpoint.
        timeout: seconds each readiness check may take.
        cache_ttl: seconds a readiness result is reused by later probes.
        service_id: ``serviceId`` in the body.
        version: ``version`` in the body.
        description: ``description`` in the body.
    """

    live_path: str = "/health/live"
    ready_path: str = "/health/ready"
    timeout: float = 1.0
    cache_ttl: float = 1.0
    service_id: str | None = None
    version: str | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        _check_path("HealthOptions", "live_path", self.live_path)
        _check_path("HealthOptions", "ready_path", self.ready_path)
        if self.live_path == self.ready_path:
            raise ConfigurationError(
                f"HealthOptions: live_path and ready_path are both {self.live_path!r}"
            )
        _check_seconds("HealthOptions", "timeout", self.timeout)
        _check_seconds("HealthOptions", "cache_ttl", self.cache_ttl, zero=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RequestContextOptions:
    """How ``install()`` builds the :class:`~scalekit.observability.RequestContextMiddleware`.

    Args:
        header: the request and response header carrying the request id.
        logger_name: the structlog logger of the access line.
        id_factory: makes new request ids.
        quiet_paths: paths whose access line is logged at debug level; None
            (the default) means the health and metrics paths ``install()``
            mounts, ``()`` logs every request at info.
    """

    header: str = "X-Request-ID"
    logger_name: str = "scalekit.access"
    id_factory: Callable[[], str] | None = None
    quiet_paths: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if self.quiet_paths is not None:
            if isinstance(self.quiet_paths, str):
                raise ConfigurationError(
                    "RequestContextOptions.quiet_paths must be a list of paths, got the string "
                    f"{self.quiet_paths!r}"
                )
            for path in self.quiet_paths:
                _check_path("RequestContextOptions", "quiet_paths", path)
            object.__setattr__(self, "quiet_paths", tuple(self.quiet_paths))
