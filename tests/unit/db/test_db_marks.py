"""Marks keep the highest GTID per domain, whatever the order writes arrive in."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from scalekit._clock import ManualClock
from scalekit.db import Mark, MemoryMarks
from scalekit.db.marks import merge_gtids

_gtid = st.tuples(st.integers(0, 3), st.integers(1, 3), st.integers(1, 10_000))


def _position(items: list[tuple[int, int, int]]) -> str:
    latest = {domain: (server, seq) for domain, server, seq in items}
    return ",".join(f"{d}-{s}-{n}" for d, (s, n) in latest.items())


@given(st.lists(st.lists(_gtid, min_size=1, max_size=3), min_size=1, max_size=6), st.randoms())
def test_merge_is_per_domain_max_and_order_free(
    writes: list[list[tuple[int, int, int]]], rng: object
) -> None:
    positions = [_position(items) for items in writes]
    shuffled = list(positions)
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    merged = merge_gtids(*positions)
    assert merged == merge_gtids(*shuffled)
    expected: dict[int, int] = {}
    for position in positions:
        for item in position.split(","):
            domain, _, seq = (int(part) for part in item.split("-"))
            expected[domain] = max(expected.get(domain, 0), seq)
    assert merged is not None
    assert {int(i.split("-")[0]): int(i.split("-")[2]) for i in merged.split(",")} == expected


def test_memory_marks_expire_on_the_clock_and_extend() -> None:
    clock = ManualClock()
    marks = MemoryMarks(clock=clock)
    marks.mark("u1", 5.0)
    clock.advance(4.0)
    marks.mark("u1", 5.0, "0-1-3")
    clock.advance(4.0)
    assert marks.lookup("u1") == Mark("0-1-3")
    clock.advance(1.0)
    assert marks.lookup("u1") is None
    assert marks.lookup("never") is None
