"""``install()``: every scalekit piece on one app, in the right order.

This is the only module that knows all the components. Outermost first:
request context (id, access log) → metrics → authentication (your backend,
so ``scope["user"]`` is known) → rate limit → cache → your app. It mounts
``/health/live``, ``/health/ready`` and the metrics endpoint, subscribes the
component metrics to :mod:`scalekit.events`, and closes pools and Redis
clients when the app shuts down.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from scalekit.settings import Settings

__all__ = ["Stack", "install"]


@dataclasses.dataclass
class Stack:
    """What :func:`install` built, for the app to use (``stack.db.query(...)``)."""

    settings: Settings
    db: Any = None
    """The ``ReplicaSet`` over ``database_url`` and ``replica_urls``, or None."""
    shards: Any = None
    """The ``ShardSet`` over ``shard_urls`` (one ``ReplicaSet`` per shard), or None."""
    cache: Any = None
    """The cache backend (``RedisCache`` or ``MemoryCache``), for ``invalidate``."""
    ratelimit: Any = None
    """The rate-limit backend, or None when no rule is installed."""
    health: Any = None
    """The ``Health`` behind ``/health/live`` and ``/health/ready``."""
    _closers: list[Callable[[], Any]] = dataclasses.field(default_factory=list, repr=False)

    async def aclose(self) -> None:
        """Close what ``install`` opened (the lifespan calls this on shutdown)."""
        while self._closers:
            result = self._closers.pop()()
            if hasattr(result, "__await__"):
                await result


def install(
    app: Any,
    settings: Settings | None = None,
    *,
    auth_backend: Any = None,
    cache_rules: Sequence[Any] = (),
    rate_rules: Sequence[Any] = (),
    health_checks: Sequence[Any] = (),
    registry: Any = None,
) -> Stack:
    """Add scalekit's middleware, endpoints and lifespan to a Starlette or FastAPI app.

    Args:
        app: the ``Starlette`` (or ``FastAPI``) application, before it starts.
        settings: what to connect to; ``Settings()`` (everything in process) if None.
        auth_backend: a Starlette ``AuthenticationBackend``; installed between
            metrics and the rate limiter so rules can key on the user.
        cache_rules: ``CacheRule``\\ s; no cache middleware when empty.
        rate_rules: ``Rule``\\ s, added to ``settings.rate_limit``'s default rule.
        health_checks: extra checks for ``/health/ready``.
        registry: a Prometheus ``CollectorRegistry`` (the default one if None).

    Returns:
        The :class:`Stack`, holding the database, cache backend and health.
    """
    from starlette.middleware.authentication import AuthenticationMiddleware
    from starlette.routing import Route

    from scalekit.observability import (
        Health,
        MetricsMiddleware,
        PoolCheck,
        RedisCheck,
        ReplicaSetCheck,
        RequestContextMiddleware,
        metrics_endpoint_for,
        subscribe_component_metrics,
    )

    settings = settings or Settings()
    stack = Stack(settings)
    checks = list(health_checks)

    if settings.database_url:
        from scalekit.db import Pool, ReplicaSet

        primary = Pool.from_url(settings.database_url, name="primary")
        replicas = [
            Pool.from_url(url, name=f"replica{index}")
            for index, url in enumerate(settings.replica_urls)
        ]
        stack.db = ReplicaSet(
            primary,
            replicas,
            max_lag=settings.max_lag,
            pin_after_write=settings.pin_after_write,
            marks=settings.redis_url,
        )
        stack._closers.append(stack.db.close)
        checks.append(PoolCheck("db", primary, critical=True))
        if replicas:
            checks.append(ReplicaSetCheck("db-replicas", stack.db, critical=False))
    if settings.shard_urls:
        stack.shards = _build_shards(settings)
        stack._closers.append(stack.shards.close)
        for index, replica_set in enumerate(stack.shards.shards):
            checks.append(PoolCheck(f"shard{index}", replica_set.primary, critical=True))
            if replica_set.replicas:
                checks.append(
                    ReplicaSetCheck(f"shard{index}-replicas", replica_set, critical=False)
                )
    if settings.redis_url:
        checks.append(RedisCheck("redis", settings.redis_url, critical=False))

    rules = list(rate_rules)
    if settings.rate_limit:
        from scalekit.ratelimit import Rule

        rules.insert(0, Rule(settings.rate_limit, name="default"))

    # add_middleware puts each new one outside the previous: innermost first.
    if cache_rules:
        from scalekit.cache import CacheMiddleware, MemoryCache, RedisCache

        stack.cache = (
            RedisCache.from_url(settings.redis_url) if settings.redis_url else MemoryCache()
        )
        stack._closers.append(getattr(stack.cache, "aclose", lambda: None))
        app.add_middleware(CacheMiddleware, backend=stack.cache, rules=cache_rules)
    if rules:
        from scalekit.ratelimit import RateLimitMiddleware, backend_from_url

        stack.ratelimit = backend_from_url(settings.redis_url or "memory://")
        stack._closers.append(stack.ratelimit.aclose)
        app.add_middleware(
            RateLimitMiddleware,
            storage=stack.ratelimit,
            rules=rules,
            trusted_proxies=settings.trusted_proxies,
        )
    if auth_backend is not None:
        app.add_middleware(AuthenticationMiddleware, backend=auth_backend)
    app.add_middleware(MetricsMiddleware, registry=registry)
    app.add_middleware(
        RequestContextMiddleware,
        trusted_proxies=settings.trusted_proxies,
        access_log=settings.access_log,
    )

    stack.health = Health(checks)
    app.router.routes.extend(
        [
            Route("/health/live", stack.health.live),
            Route("/health/ready", stack.health.ready),
            Route(settings.metrics_path, metrics_endpoint_for(registry)),
        ]
    )
    stack._closers.insert(0, subscribe_component_metrics(registry))

    inner_lifespan = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(scope_app: Any) -> AsyncIterator[Any]:
        try:
            async with inner_lifespan(scope_app) as state:
                yield state
        finally:
            await stack.aclose()

    app.router.lifespan_context = lifespan
    return stack


def _build_shards(settings: Settings) -> Any:
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
