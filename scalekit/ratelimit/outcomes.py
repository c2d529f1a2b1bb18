"""What enforcing a :class:`~scalekit.ratelimit.plan.Plan` came to.

:class:`Admitted` (the app runs), :class:`Rejected` (429) or
:class:`Unavailable` (503): the middleware answers each its own way.
"""

from __future__ import annotations

import dataclasses

from scalekit.ratelimit.plan import IdentityLimits, Limit
from scalekit.ratelimit.protocol import LimitResult, Verdict

__all__ = ["Admitted", "Checked", "Outcome", "Rejected", "Unavailable"]


@dataclasses.dataclass(slots=True)
class Checked:
    """One identity's limits and the backend's verdict on them."""

    group: IdentityLimits
    verdict: Verdict

    def results(self) -> zip[tuple[Limit, LimitResult]]:
        """Each limit with its result."""
        return zip(self.group.limits, self.verdict.results, strict=True)


@dataclasses.dataclass(slots=True)
class Admitted:
    """Every reachable limit passed; the request goes to the app."""

    checked: tuple[Checked, ...]
    failed_open: bool
    """Some identity's check could not be made and its rules fail open."""

    def refunded_on_success(self) -> list[Checked]:
        """The identities with ``count="failures"`` rules: refunded if the response succeeds."""
        return [checked for checked in self.checked if checked.group.counts_failures]


@dataclasses.dataclass(slots=True)
class Rejected:
    """A limit was exceeded: 429. Earlier identities' hits have been refunded."""

    rejecting: Checked
    passed: tuple[Checked, ...]
    """The identities checked before, which passed."""

    def worst(self) -> tuple[Limit, LimitResult]:
        """The exceeded limit that frees up last: the one ``Retry-After`` describes."""
        failed = [(limit, result) for limit, result in self.rejecting.results() if not result.ok]
        return max(failed, key=lambda pair: pair[1].reset)


@dataclasses.dataclass(slots=True)
class Unavailable:
    """The backend failed for an identity whose rules fail closed: 503."""

    group: IdentityLimits


Outcome = Admitted | Rejected | Unavailable
