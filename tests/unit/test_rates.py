"""Rate strings: scalekit's parser agrees with ``limits``' on every string both accept."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit._rates import Rate, RateSyntaxError, parse_rates

limits_util = pytest.importorskip("limits.util")

UNIT_WORDS = ["second", "minute", "hour", "day", "month", "year"]


@st.composite
def rate_strings(draw: st.DrawFn) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        amount = draw(st.integers(0, 10_000))
        multiple = draw(st.one_of(st.none(), st.integers(0, 60)))
        unit = draw(st.sampled_from(UNIT_WORDS))
        unit = draw(st.sampled_from([unit, unit + "s", unit.upper(), unit.title(), unit + "x"]))
        per = draw(st.sampled_from(["/", " per ", "per", " / "]))
        space = draw(st.sampled_from(["", " ", "  "]))
        parts.append(f"{space}{amount}{per}{'' if multiple is None else multiple}{space}{unit}")
    return draw(st.sampled_from([";", ",", "|", "; "])).join(parts)


@given(st.one_of(rate_strings(), st.text(max_size=30)))
@settings(max_examples=500)
def test_every_rate_scalekit_accepts_limits_reads_the_same(text: str) -> None:
    try:
        ours = parse_rates(text)
    except RateSyntaxError:
        return
    theirs = limits_util.parse_many(text)
    assert [(rate.amount, rate.window) for rate in ours] == [
        (int(item.amount), int(item.get_expiry())) for item in theirs
    ]
    for rate, item in zip(ours, theirs, strict=True):
        multiple, unit = int(item.multiples), item.GRANULARITY.name
        per = unit if multiple == 1 else f"{multiple} {unit}s"
        assert rate.text == f"{item.amount}/{per}"


@given(rate_strings())
@settings(max_examples=300)
def test_scalekit_accepts_what_limits_accepts_unless_it_admits_nothing(text: str) -> None:
    try:
        theirs = limits_util.parse_many(text)
    except ValueError:
        return
    admits_nothing = any(item.amount == 0 for item in theirs) or "/0" in text.replace(" ", "")
    if admits_nothing or "per0" in text.replace(" ", ""):
        with pytest.raises(RateSyntaxError, match="admits nothing"):
            parse_rates(text)
    else:
        assert len(parse_rates(text)) == len(theirs)


def test_examples() -> None:
    assert parse_rates("100/15 minutes") == (Rate(100, 900, "100/15 minutes"),)
    assert parse_rates("3 per minute")[0].text == "3/minute"
    assert [r.window for r in parse_rates("10/second;100/hour")] == [1, 3600]
    for bad in ("100/fortnight", "", "5/minute;", "five/minute", "0/minute", "5/0 seconds"):
        with pytest.raises(RateSyntaxError):
            parse_rates(bad)
