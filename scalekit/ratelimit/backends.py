"""Where rate-limit counters live: in this process (``memory://``) or in Redis.

The middleware decides *what* to check; a backend knows *how* the counters
are stored. Both backends run the same algorithm: every check of one call is
evaluated first, and counters change only when all of them pass, so a
rejected request consumes nothing. The Redis backend does this in one Lua
script (``lua/check.lua``) per call, reading Redis' clock (``TIME``) so every
instance counts on one clock — or the injected clock, when one is given
(tests: windows move when the test advances it, never with the wall clock);
the memory backend does it under a lock, reading the injected clock.

Strategies, with the meanings of the ``limits`` package:

- ``fixed-window``: a counter that starts with the first hit and expires one
  window later.
- ``sliding-window-counter``: windows aligned to the epoch; the previous
  window's count is weighted by how much of it still overlaps the sliding
  window. O(1) memory per key.
- ``moving-window``: a log of hit timestamps (exact, O(limit) per key).
"""

from __future__ import annotations

from scalekit._breaker import CircuitBreaker
from scalekit._clock import Clock
from scalekit.ratelimit.errors import RateLimitConfigError
from scalekit.ratelimit.memory import MemoryRateLimitBackend
from scalekit.ratelimit.protocol import (
    LimitCheck,
    LimitResult,
    Mode,
    RateLimitBackend,
    Strategy,
    Verdict,
)
from scalekit.ratelimit.redis_backend import RedisRateLimitBackend

__all__ = [
    "LimitCheck",
    "LimitResult",
    "MemoryRateLimitBackend",
    "Mode",
    "RateLimitBackend",
    "RedisRateLimitBackend",
    "Strategy",
    "Verdict",
    "backend_from_url",
]


def backend_from_url(
    storage: str, *, clock: Clock | None = None, breaker: CircuitBreaker | None = None
) -> MemoryRateLimitBackend | RedisRateLimitBackend:
    """The backend for ``storage``: ``memory://`` or a Redis URL.

    ``memory://`` gives a :class:`MemoryRateLimitBackend`, a Redis URL a
    :class:`RedisRateLimitBackend`.

    Args:
        storage: the URL.
        clock: the clock the windows and the Redis breaker read (Redis' ``TIME``
            when None).
        breaker: the Redis backend's circuit breaker (ignored for ``memory://``).

    Raises:
        RateLimitConfigError: the URL is neither.
    """
    if storage.startswith("memory://"):
        return MemoryRateLimitBackend(clock=clock)
    try:
        return RedisRateLimitBackend(storage, breaker=breaker, clock=clock)
    except ValueError as exc:
        raise RateLimitConfigError(
            f"storage must be 'memory://' or a Redis URL (redis://, redis+sentinel://, "
            f"redis+cluster://): {exc}"
        ) from exc
