"""The root of every error scalekit raises.

::

    ScalekitError
    └── ConfigurationError (also a ValueError)   Settings, install() and per-route declarations

Each component keeps its own tree (``CacheError``, ``RateLimitError``,
``DatabaseError``); configuration errors name the bad value and, when it came
from the environment, the ``SCALEKIT_*`` variable.
"""

from __future__ import annotations

__all__ = ["ConfigurationError", "ScalekitError"]


class ScalekitError(Exception):
    """Base class of scalekit's errors."""


class ConfigurationError(ScalekitError, ValueError):
    """A setting, an ``install()`` argument or a route declaration is invalid.

    The message names the value and how to fix it.
    """
