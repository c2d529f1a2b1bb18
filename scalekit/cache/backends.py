"""Where cache entries live: Redis (standalone, Sentinel, Cluster) or memory.

The middleware decides *what* to cache; a backend only knows *how* entries,
tag versions and fill locks are stored. Every backend answers a lookup (the
entry, the current versions of its tags, and optionally the fill lock) in one
round trip, and invalidates a tag by bumping its version counter: never KEYS,
never SCAN, whatever the number of entries.

A version counter that is absent (never used, expired, evicted under memory
pressure, lost in a failover) is created with a value it never held before
(a random epoch on Redis, a process-wide sequence in memory), never read as
``0``: an entry records the exact values it was stored under, so an entry
stored before a lost counter's last invalidation can never become current.
"""

from __future__ import annotations

from scalekit.cache.memory import MemoryCache
from scalekit.cache.protocol import CacheBackend, Lookup
from scalekit.cache.redis_backend import COUNTER_TTL as COUNTER_TTL
from scalekit.cache.redis_backend import RedisCache

__all__ = ["CacheBackend", "Lookup", "MemoryCache", "RedisCache"]
