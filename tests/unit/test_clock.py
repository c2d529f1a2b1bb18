"""The injectable clock (scalekit._clock)."""

from __future__ import annotations

import time

import pytest

from scalekit._clock import Clock, ManualClock, SystemClock, get_clock, set_clock


def test_manual_clock_moves_only_when_advanced() -> None:
    clock = ManualClock(start=5.0, wall=100.0)
    assert (clock.monotonic(), clock.time()) == (5.0, 100.0)
    clock.advance(2.5)
    assert (clock.monotonic(), clock.time()) == (7.5, 102.5)


def test_manual_clock_cannot_go_back() -> None:
    with pytest.raises(ValueError, match="backwards"):
        ManualClock().advance(-1)


def test_system_clock_reads_time() -> None:
    clock = SystemClock()
    assert abs(clock.time() - time.time()) < 5
    assert isinstance(clock, Clock)


def test_set_clock_replaces_the_default_and_returns_the_previous() -> None:
    manual = ManualClock()
    previous = set_clock(manual)
    try:
        assert get_clock() is manual
    finally:
        set_clock(previous)
    assert get_clock() is previous
