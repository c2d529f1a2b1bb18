"""Lazy imports of optional dependencies, with an error that names the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from scalekit.errors import ScalekitError

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ScalekitError, ImportError):
    """An optional dependency of scalekit is not installed."""


def require(module: str, extra: str, *, feature: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``extra``.

    Args:
        module: the module to import, e.g. ``"redis.asyncio"``.
        extra: the scalekit extra that installs it, e.g. ``"redis"``.
        feature: what needs it, for the message (defaults to ``module``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what = feature or module
        raise MissingExtraError(
            f"{what} needs the optional dependency {module.split('.')[0]!r}, which is not "
            f'installed: pip install "scalekit[{extra}]"'
        ) from exc
