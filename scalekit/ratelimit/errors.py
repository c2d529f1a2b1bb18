"""Rate-limiter errors.

::

    RateLimitError
    ├── RateLimitConfigError (also a ValueError): invalid rules or settings
    └── BackendUnavailable: the counter store failed or timed out
"""

from __future__ import annotations

__all__ = ["BackendUnavailable", "RateLimitConfigError", "RateLimitError"]


class RateLimitError(Exception):
    """Base class of the rate limiter's errors."""


class RateLimitConfigError(RateLimitError, ValueError):
    """A rule or a middleware argument is invalid; the message says how to fix it."""


class BackendUnavailable(RateLimitError):
    """The counter store (Redis) failed or timed out; the rule's on_backend_error decides."""
