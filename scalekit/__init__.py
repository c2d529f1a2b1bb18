"""scalekit: scale a Starlette or FastAPI service out."""

from __future__ import annotations

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
