"""What a rate-limit backend is: the checks it runs and what it answers.

:class:`RateLimitBackend` is the protocol every backend follows (see
:mod:`scalekit.ratelimit.backends` for the algorithm they share); a call
passes :class:`LimitCheck` values and gets a :class:`Verdict` back.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Protocol

__all__ = ["LimitCheck", "LimitResult", "Mode", "RateLimitBackend", "Strategy", "Verdict"]


class Strategy(enum.StrEnum):
    """How a limit counts, with the meanings of the ``limits`` package.

    Also accepts the short names (``"fixed"``, ``"sliding"``, ``"moving"``)
    that counter keys and the Lua script use.
    """

    FIXED_WINDOW = "fixed-window"
    SLIDING_WINDOW_COUNTER = "sliding-window-counter"
    MOVING_WINDOW = "moving-window"

    @property
    def short(self) -> str:
        """``"fixed"``, ``"sliding"`` or ``"moving"``: the name in keys and in the script."""
        return _SHORT_NAMES[self]

    @classmethod
    def _missing_(cls, value: object) -> Strategy | None:
        return next((member for member, short in _SHORT_NAMES.items() if short == value), None)


_SHORT_NAMES = {member: member.value.split("-", 1)[0] for member in Strategy}


class Mode(enum.StrEnum):
    """What a check does to its counter."""

    HIT = "hit"
    """LimitCheck, and consume if every check of the call passes."""
    PEEK = "peek"
    """LimitCheck only (``count="failures"`` before the response)."""
    ADD = "add"
    """Consume without checking (a failure is counted after the response)."""
    REFUND = "refund"
    """Give back a hit made at the call's timestamp."""


@dataclasses.dataclass(frozen=True, slots=True)
class LimitCheck:
    """One limit to check for one request: ``limit`` per ``window`` seconds on ``key``.

    ``strategy`` and ``mode`` take a :class:`Strategy` / :class:`Mode` or
    their string values.

    Raises:
        ValueError: an unknown strategy or mode.
    """

    key: str
    strategy: Strategy
    limit: int
    window: int
    cost: int = 1
    mode: Mode = Mode.HIT

    def __post_init__(self) -> None:
        if type(self.strategy) is not Strategy:
            object.__setattr__(self, "strategy", Strategy(self.strategy))
        if type(self.mode) is not Mode:
            object.__setattr__(self, "mode", Mode(self.mode))


@dataclasses.dataclass(frozen=True, slots=True)
class LimitResult:
    """What one check found: passed or not, what is left, seconds until it resets.

    For a failed check ``reset`` is how long until the request could pass.
    """

    ok: bool
    remaining: int
    reset: float


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one backend call: ``allowed`` if every check passed.

    ``at`` is the backend's timestamp of the call (pass it back to refund).
    """

    allowed: bool
    at: float
    results: tuple[LimitResult, ...]


class RateLimitBackend(Protocol):
    """A counter store."""

    async def check(self, checks: Sequence[LimitCheck], at: float | None = None) -> Verdict:
        """Run ``checks`` atomically; write only if every check passes."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
