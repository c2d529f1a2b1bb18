"""scalekit: scale a Starlette or FastAPI service out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

__all__ = ["Settings", "Stack", "__version__", "install"]

if TYPE_CHECKING:
    from scalekit.settings import Settings
    from scalekit.stack import Stack, install


def __getattr__(name: str) -> Any:
    # Lazy, so that ``import scalekit`` stays light (no starlette, no prometheus).
    if name == "Settings":
        from scalekit.settings import Settings

        return Settings
    if name in ("Stack", "install"):
        from scalekit import stack

        return getattr(stack, name)
    raise AttributeError(f"module 'scalekit' has no attribute {name!r}")
