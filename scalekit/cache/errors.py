"""Errors of :mod:`scalekit.cache`.

::

    CacheError
    ├── CacheConfigError    a rule or backend argument is invalid (also a ValueError)
    └── CacheBackendError   the backend failed (Redis down, timeout)
        └── CacheUnavailable  the circuit breaker is open: the backend was not called
"""

from __future__ import annotations

from scalekit.errors import ConfigurationError, ScalekitError

__all__ = ["CacheBackendError", "CacheConfigError", "CacheError", "CacheUnavailable"]


class CacheError(ScalekitError):
    """Base class of every scalekit.cache error."""


class CacheConfigError(CacheError, ConfigurationError):
    """A rule, middleware or backend argument is invalid."""


class CacheBackendError(CacheError):
    """The cache backend failed; requests bypass it, invalidations raise it."""


class CacheUnavailable(CacheBackendError):
    """The backend's circuit breaker is open, so the call was not attempted."""
