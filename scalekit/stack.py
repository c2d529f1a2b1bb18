"""``install()``: every scalekit piece on one app, in the right order.

This is the only module that knows all the components. Outermost first:
request context (id, access log) → metrics → authentication (your backend,
so ``scope["user"]`` is known) → rate limit → cache → your app. It mounts
``/health/live``, ``/health/ready`` and the metrics endpoint in front of the
app's own routes (so a catch-all route cannot answer a probe), keeps those
paths out of every rate-limit rule, the cache and the request metrics,
subscribes the component metrics to :mod:`scalekit.events`, and closes pools
and Redis clients when the app shuts down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog
from starlette.applications import Starlette
from starlette.requests import HTTPConnection
from starlette.routing import Route

from scalekit._extras import require
from scalekit._layers import (
    Chain,
    IdentityFunction,
    Layers,
    check_paths_free,
)
from scalekit.errors import ConfigurationError
from scalekit.options import (
    CacheOptions,
    HealthOptions,
    MetricsOptions,
    RateLimitOptions,
    RequestContextOptions,
)
from scalekit.settings import Settings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from starlette.authentication import AuthenticationBackend

    from scalekit._clock import Clock
    from scalekit.cache import CacheBackend, CacheRule
    from scalekit.db import ReplicaSet, ShardSet
    from scalekit.observability import Check, Health
    from scalekit.ratelimit import RateLimitBackend, RateLimitRule

__all__ = ["Stack", "install"]

_logger = structlog.get_logger("scalekit.stack")


@dataclasses.dataclass
class Stack:
    """What :func:`install` built, for the app to use.

    ``install()`` also leaves it on ``app.state.scalekit``; :meth:`of` reads it
    back, typed, from a request or the app::

        await Stack.of(request).invalidate("user:42:tasks")
    """

    settings: Settings
    health: Health
    """The ``Health`` behind the liveness and readiness endpoints."""
    cache: CacheBackend
    """The cache backend, for ``invalidate``: ``RedisCache`` when ``redis_url`` is
    set, else ``MemoryCache``. It exists even with no cache rules (another
    service may cache what this one invalidates)."""
    db: ReplicaSet | None = None
    """The ``ReplicaSet`` over ``database_url`` and ``replica_urls``, or None."""
    shards: ShardSet | None = None
    """The ``ShardSet`` over ``shard_urls`` (one ``ReplicaSet`` per shard), or None."""
    ratelimit: RateLimitBackend | None = None
    """The rate-limit backend (in memory, or Redis with ``redis_url``): the counters of
    ``Settings.rate_limit``, ``rate_rules`` and the limits routes declare."""
    _closers: list[Callable[[], object]] = dataclasses.field(default_factory=list, repr=False)

    @staticmethod
    def of(where: HTTPConnection | Starlette) -> Stack:
        """The stack ``install()`` put on an app, from a request (or websocket) or the app.

        Raises:
            ConfigurationError: ``install()`` was not called on this app.
        """
        app = where.app if isinstance(where, HTTPConnection) else where
        stack = getattr(app.state, "scalekit", None)
        if not isinstance(stack, Stack):
            raise ConfigurationError("this app has no scalekit Stack: call install(app, ...)")
        return stack

    async def invalidate(self, *tags: str) -> bool:
        """Invalidate the cache entries tagged ``tags`` on every instance; never raises.

        For a handler after its write: ``await Stack.of(request).invalidate("notes")``.
        When the cache backend cannot be reached (Redis down, its breaker open)
        the failure is logged (``cache invalidation failed``) and the request
        goes on, as the cache's own ``invalidate_on`` does: the write stands,
        reads bypass the cache while it is down, and an entry stored before
        the outage is served until its rule's ``ttl`` at the latest. Call
        ``stack.cache.invalidate(...)`` to handle the error yourself.

        Returns:
            Whether the backend took the invalidation.
        """
        from scalekit.cache import CacheBackendError

        try:
            await self.cache.invalidate(*tags)
        except CacheBackendError as exc:
            _logger.warning("cache invalidation failed", tags=list(tags), error=str(exc))
            return False
        return True

    async def aclose(self) -> None:
        """Close what ``install`` opened (the lifespan calls this on shutdown)."""
        while self._closers:
            result = self._closers.pop()()
            if inspect.isawaitable(result):
                await result


def install(
    app: Starlette,
    settings: Settings | None = None,
    *,
    auth_backend: AuthenticationBackend | None = None,
    cache_rules: Sequence[CacheRule] = (),
    rate_rules: Sequence[RateLimitRule] = (),
    health_checks: Sequence[Check] = (),
    registry: CollectorRegistry | None = None,
    ratelimit: RateLimitOptions | None = None,
    cache: CacheOptions | None = None,
    metrics: MetricsOptions | None = None,
    health: HealthOptions | None = None,
    request_context: RequestContextOptions | None = None,
    identity: IdentityFunction | None = None,
    clock: Clock | None = None,
    check_paths: bool = True,
) -> Stack:
    """Add scalekit's middleware, endpoints and lifespan to a Starlette or FastAPI app.

    Args:
        app: the ``Starlette`` (or ``FastAPI``) application, before it starts.
        settings: what to connect to; ``Settings()`` (everything in process) if None.
        auth_backend: a Starlette ``AuthenticationBackend``; installed between
            metrics and the rate limiter so rules can key on the user.
        cache_rules: ``CacheRule``\\ s; no cache middleware when empty.
        rate_rules: ``RateLimitRule``\\ s (``Rule`` is the same class).
            ``settings.rate_limit`` adds a default rule that covers the
            requests no rule with a ``path`` covers (see
            :class:`~scalekit.options.DefaultLimit` to make it cover all).
        health_checks: extra checks for the readiness endpoint.
        registry: a Prometheus ``CollectorRegistry`` (the default one if None).
        ratelimit: options of the rate limiter (strategy, headers, ...).
        cache: options of the cache middleware.
        metrics: options of the request metrics (buckets, max_routes, ...).
        health: where health is mounted and how readiness runs.
        request_context: options of the request id and access log.
        identity: who a request is, for the cache (``vary_user``, the
            credentialed bypass) and the limiter's ``user`` key alike: a
            callable of the Starlette ``Request`` returning a user id or None
            (sync or async), e.g. the decoder your JWT dependency uses. Default:
            an authenticated ``scope["user"]`` (from ``auth_backend``).
        clock: the clock every time-based rule reads (tests pass a ``ManualClock``).
        check_paths: at start-up, fail when a ``Rule`` or ``CacheRule`` path
            matches no route of the app (a typo, a forgotten prefix), naming the
            closest route.

    Returns:
        The :class:`Stack` (also on ``app.state.scalekit``).

    Raises:
        ConfigurationError: an app route already answers a path scalekit mounts,
            or an option is invalid (component errors are ``ValueError``\\ s too).
        MissingExtraError: a setting needs an extra that is not installed
            (``redis_url`` without ``scalekit[redis]``, a MySQL URL without
            ``scalekit[mysql]``).
    """
    from prometheus_client import REGISTRY

    from scalekit.cache import MemoryCache, RedisCache
    from scalekit.observability import (
        Health,
        PoolCheck,
        RedisCheck,
        ReplicaSetCheck,
        RequestContextMiddleware,
        RequestMetrics,
        metrics_endpoint_for,
        subscribe_component_metrics,
    )
    from scalekit.observability.state_metrics import StateMetrics

    if isinstance(getattr(app.state, "scalekit", None), Stack):
        # A second stack would limit, cache and count every request twice.
        raise ConfigurationError(
            "install() was already called on this app: call it once (Stack.of(app) returns "
            "what it built)"
        )
    settings = settings or Settings()
    if settings.redis_url:
        # Fail the start-up, not the first request (or a health warn nobody reads).
        require("redis.asyncio", "redis", feature="Settings.redis_url (SCALEKIT_REDIS_URL)")
    ratelimit = ratelimit or RateLimitOptions()
    cache = cache or CacheOptions()
    metrics = metrics or MetricsOptions()
    health = health or HealthOptions()
    request_context = request_context or RequestContextOptions()
    scalekit_paths = (health.live_path, health.ready_path, settings.metrics_path)
    if len(set(scalekit_paths)) != len(scalekit_paths):
        raise ConfigurationError(
            f"Settings.metrics_path {settings.metrics_path!r} is also a health path"
        )
    check_paths_free(app.router.routes, scalekit_paths)

    checks = list(health_checks)
    closers: list[Callable[[], object]] = []
    db = None
    if settings.database_url:
        from scalekit.db import Pool, ReplicaSet

        primary = Pool.from_url(settings.database_url, name="primary")
        replicas = [
            Pool.from_url(url, name=f"replica{index}")
            for index, url in enumerate(settings.replica_urls)
        ]
        db = ReplicaSet(
            primary,
            replicas,
            max_lag=settings.max_lag,
            pin_after_write=settings.pin_after_write,
            marks=settings.redis_url,
        )
        closers.append(db.close)
        checks.append(PoolCheck("db", primary, critical=True))
        if replicas:
            checks.append(ReplicaSetCheck("db-replicas", db, critical=False))
    shards = None
    if settings.shard_urls:
        shards = _build_shards(settings)
        closers.append(shards.close)
        for index, replica_set in enumerate(shards.shards):
            checks.append(PoolCheck(f"shard{index}", replica_set.primary, critical=True))
            if replica_set.replicas:
                checks.append(
                    ReplicaSetCheck(f"shard{index}-replicas", replica_set, critical=False)
                )
    if settings.redis_url:
        checks.append(RedisCheck("redis", settings.redis_url, critical=False))

    cache_backend: CacheBackend
    if cache.backend is not None:
        cache_backend = cache.backend
    elif settings.redis_url:
        cache_backend = RedisCache.from_url(settings.redis_url, clock=clock)
    else:
        cache_backend = MemoryCache(clock=clock)
    closers.append(cache_backend.aclose)

    stack = Stack(
        settings,
        Health(
            checks,
            timeout=health.timeout,
            cache_ttl=health.cache_ttl,
            clock=clock,
            service_id=health.service_id,
            version=health.version,
            description=health.description,
        ),
        cache_backend,
        db,
        shards,
        _closers=closers,
    )

    storage: RateLimitBackend | str | None = ratelimit.storage
    if storage is None or isinstance(storage, str):
        from scalekit.ratelimit import backend_from_url

        storage = backend_from_url(
            storage or settings.redis_url or "memory://", clock=clock, breaker=ratelimit.breaker
        )
        stack._closers.append(storage.aclose)
    stack.ratelimit = storage
    layers = Layers(
        Chain(
            settings,
            cache_backend,
            tuple(cache_rules),
            cache,
            tuple(rate_rules),
            ratelimit,
            storage,
            auth_backend,
            identity,
            clock,
        ),
        app.router.routes,
        frozenset(scalekit_paths),
        check_paths=check_paths,
    )
    state = StateMetrics.for_registry(registry if registry is not None else REGISTRY)
    watched: list[object] = [stack.health]
    state.watch_health(stack.health)
    for backend, owner in (("ratelimit", storage), ("cache", cache_backend)):
        breaker = getattr(owner, "breaker", None)
        if breaker is not None:
            state.watch_breaker(backend, breaker)
            watched.append(breaker)

    def forget_state() -> None:
        for source in watched:
            state.forget(source)

    stack._closers.append(forget_state)

    # add_middleware puts each new one outside the previous: innermost first.
    if db is not None or shards is not None:
        from scalekit.db import RequestScopeMiddleware

        app.add_middleware(RequestScopeMiddleware)  # read-your-writes pins: one request each
    app.add_middleware(layers.middleware)
    context_options: dict[str, Any] = {}
    if request_context.id_factory is not None:
        context_options["id_factory"] = request_context.id_factory
    app.add_middleware(
        RequestContextMiddleware,
        trusted_proxies=settings.trusted_proxies,
        forwarded_header=settings.forwarded_header,
        access_log=settings.access_log,
        header=request_context.header,
        logger_name=request_context.logger_name,
        quiet_paths=(
            scalekit_paths if request_context.quiet_paths is None else request_context.quiet_paths
        ),
        # request metrics in the same layer: what MetricsMiddleware behind it would count
        metrics=RequestMetrics(
            registry=registry,
            buckets=metrics.buckets,
            exclude_paths=(*scalekit_paths, *metrics.exclude_paths),
            max_routes=metrics.max_routes,
        ),
        **context_options,
    )

    ours = [
        Route(health.live_path, stack.health.live),
        Route(health.ready_path, stack.health.ready),
        Route(
            settings.metrics_path,
            metrics_endpoint_for(
                registry, created_series=metrics.created_series, process_collectors=[state]
            ),
        ),
    ]
    # In front of the app's routes: a catch-all (an SPA's /{path:path}) must not answer probes.
    app.router.routes[0:0] = ours
    layers.own_routes = ours
    stack._closers.insert(0, subscribe_component_metrics(registry))
    app.state.scalekit = stack

    inner_lifespan = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(scope_app: Any) -> AsyncIterator[Any]:
        try:
            layers.prepare()
            async with inner_lifespan(scope_app) as state:
                yield state
        finally:
            await stack.aclose()

    app.router.lifespan_context = lifespan
    return stack


def _build_shards(settings: Settings) -> ShardSet:
    """A ``ShardSet`` with one ``ReplicaSet`` per entry of ``settings.shard_urls``."""
    from scalekit.db import JumpHash, Modulo, Pool, ReplicaSet, ShardSet
    from scalekit.settings import ShardStrategyName

    sets = []
    for index, (primary_url, *replica_urls) in enumerate(settings.shard_urls):
        primary = Pool.from_url(primary_url, name=f"shard{index}")
        replicas = [
            Pool.from_url(url, name=f"shard{index}-replica{number}")
            for number, url in enumerate(replica_urls)
        ]
        sets.append(
            ReplicaSet(
                primary,
                replicas,
                max_lag=settings.max_lag,
                pin_after_write=settings.pin_after_write,
                marks=settings.redis_url,
                name=f"shard{index}",
            )
        )
    count = len(sets)
    strategy = (
        Modulo(count) if settings.shard_strategy is ShardStrategyName.MODULO else JumpHash(count)
    )
    return ShardSet(sets, strategy=strategy)
