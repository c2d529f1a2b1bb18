"""Rate strings (``"100/15 minutes"``, ``"10/second;100/hour"``) in the ``limits`` grammar.

The grammar is ``limits``' own (``parse_many``), so a string means the same
here and there: rates separated by one of ``,``, ``;`` or ``|``; each is an
amount, ``/`` or ``per``, an optional multiple and a unit (``second``,
``minute``, ``hour``, ``day``, ``month`` = 30 days, ``year`` = 360 days,
with or without a plural ``s``, any case). Parsing needs no extra, so
``Settings`` checks ``SCALEKIT_RATE_LIMIT`` and the in-memory limiter runs
on a core install. Unlike ``limits``, a rate that admits nothing (``0/minute``)
or has no window (``5/0 minutes``) is an error rather than a silent surprise.
"""

from __future__ import annotations

import dataclasses
import re

from scalekit.errors import ConfigurationError

__all__ = ["UNITS", "Rate", "RateSyntaxError", "parse_rates"]

UNITS: dict[str, int] = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86_400,
    "month": 30 * 86_400,
    "year": 12 * 30 * 86_400,
}
"""Seconds per unit, as ``limits`` counts them."""

_SEPARATORS = re.compile(r"[,;|]")
_RATE = re.compile(r"\s*([0-9]+)\s*(?:/|per)\s*([0-9]+)?\s*([a-z]+)\s*", re.IGNORECASE)


class RateSyntaxError(ConfigurationError):
    """A rate string that does not parse; components re-raise it as their config error."""


@dataclasses.dataclass(frozen=True, slots=True)
class Rate:
    """One parsed rate: ``amount`` requests per ``window`` seconds."""

    amount: int
    window: int
    text: str


def _unit(word: str) -> str | None:
    word = word.lower()
    singular = word[:-1] if word.endswith("s") else word
    return singular if singular in UNITS else None


def parse_rates(limit: str) -> tuple[Rate, ...]:
    """Parse ``"100/15 minutes"`` or ``"10/second;100/15 minutes"``.

    Raises:
        RateSyntaxError: the text is not a rate, or a rate admits nothing.
    """
    example = "write e.g. '100/15 minutes' or '10/second;100/hour'"
    if not isinstance(limit, str):
        raise RateSyntaxError(f"a rate must be a string; {example}, got {limit!r}")
    rates: list[Rate] = []
    for part in _SEPARATORS.split(limit):
        found = _RATE.fullmatch(part)
        unit = _unit(found.group(3)) if found else None
        if found is None or unit is None:
            raise RateSyntaxError(f"rate {limit!r} does not parse; {example}")
        amount = int(found.group(1))
        multiple = int(found.group(2)) if found.group(2) is not None else 1
        if amount == 0 or multiple == 0:
            raise RateSyntaxError(f"rate {limit!r} admits nothing ({part.strip()!r}); {example}")
        per = unit if multiple == 1 else f"{multiple} {unit}s"
        rates.append(Rate(amount, multiple * UNITS[unit], f"{amount}/{per}"))
    return tuple(rates)
