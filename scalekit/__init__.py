"""scalekit: scale a Starlette or FastAPI service out."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "CacheOptions",
    "ConfigurationError",
    "DefaultLimit",
    "HealthOptions",
    "MetricsOptions",
    "RateLimitOptions",
    "RequestContextOptions",
    "ScalekitError",
    "Settings",
    "Stack",
    "__version__",
    "install",
]

if TYPE_CHECKING:
    from scalekit.errors import ConfigurationError, ScalekitError
    from scalekit.options import (
        CacheOptions,
        DefaultLimit,
        HealthOptions,
        MetricsOptions,
        RateLimitOptions,
        RequestContextOptions,
    )
    from scalekit.settings import Settings
    from scalekit.stack import Stack, install

# Lazy, so that ``import scalekit`` stays light (no starlette, no prometheus).
_HOMES = {
    "CacheOptions": "scalekit.options",
    "ConfigurationError": "scalekit.errors",
    "DefaultLimit": "scalekit.options",
    "HealthOptions": "scalekit.options",
    "MetricsOptions": "scalekit.options",
    "RateLimitOptions": "scalekit.options",
    "RequestContextOptions": "scalekit.options",
    "ScalekitError": "scalekit.errors",
    "Settings": "scalekit.settings",
    "Stack": "scalekit.stack",
    "install": "scalekit.stack",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'scalekit' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
