"""A response cache for Starlette and FastAPI that is safe by default.

Opt in per route with :class:`CacheRule`; wrap the app in
:class:`CacheMiddleware` with a backend (:class:`RedisCache` for several
instances, :class:`MemoryCache` for one process and tests)::

    from scalekit.cache import CacheMiddleware, CacheRule, MemoryCache

    backend = MemoryCache()
    app = CacheMiddleware(app, backend=backend, rules=[
        CacheRule("/api/v1/tasks", ttl=300, vary_user=True, tags=["user:{user}:tasks"])])
    await backend.invalidate("user:42:tasks")   # O(1): no KEYS, no SCAN

Errors::

    CacheError
    ├── CacheConfigError      a rule, middleware or backend argument is invalid
    └── CacheBackendError     the backend failed (requests bypass; invalidations raise)
        └── CacheUnavailable  the circuit breaker is open

Decisions are reported as :class:`scalekit.events.CacheEvent` and backend
failures as :class:`scalekit.events.BackendError`.
"""

from __future__ import annotations

from scalekit.cache.backends import CacheBackend, Lookup, MemoryCache, RedisCache
from scalekit.cache.entry import Entry
from scalekit.cache.errors import CacheBackendError, CacheConfigError, CacheError, CacheUnavailable
from scalekit.cache.keys import EntryKeys
from scalekit.cache.middleware import CacheMiddleware
from scalekit.cache.plan import IdentityFunction, user_identity
from scalekit.cache.rules import CacheRule

__all__ = [
    "CacheBackend",
    "CacheBackendError",
    "CacheConfigError",
    "CacheError",
    "CacheMiddleware",
    "CacheRule",
    "CacheUnavailable",
    "Entry",
    "EntryKeys",
    "IdentityFunction",
    "Lookup",
    "MemoryCache",
    "RedisCache",
    "user_identity",
]
