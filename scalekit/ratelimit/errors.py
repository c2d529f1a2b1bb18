"""Rate-limiter errors.

::

    ScalekitError
    └── RateLimitError
        ├── RateLimitConfigError (also a ConfigurationError and a ValueError):
        │   invalid rules or settings
        └── RateLimitUnavailable: the counter store failed or timed out
"""

from __future__ import annotations

import enum
from typing import TypeVar

from scalekit.errors import ConfigurationError, ScalekitError

__all__ = ["RateLimitConfigError", "RateLimitError", "RateLimitUnavailable", "choice"]

_Choice = TypeVar("_Choice", bound=enum.StrEnum)


class RateLimitError(ScalekitError):
    """Base class of the rate limiter's errors."""


class RateLimitConfigError(RateLimitError, ConfigurationError):
    """A rule or a middleware argument is invalid; the message says how to fix it."""


class RateLimitUnavailable(RateLimitError):
    """The counter store (Redis) failed or timed out; the rule's on_backend_error decides."""


def choice(kind: type[_Choice], value: object, setting: str, *, none: bool = False) -> _Choice:
    """``value`` as a member of the StrEnum ``kind``, or an error naming the choices.

    Raises:
        RateLimitConfigError: ``value`` is none of ``kind``'s values.
    """
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            pass
    names = [repr(member.value) for member in kind] + (["None"] if none else [])
    listed = ", ".join(names[:-1]) + " or " + names[-1]
    raise RateLimitConfigError(f"{setting} must be {listed}, got {value!r}")
