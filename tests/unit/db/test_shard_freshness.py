"""``MapFollower``: when a ShardSet polls its map, and what a failing control database costs."""

from __future__ import annotations

import pytest

from scalekit import events
from scalekit._clock import ManualClock
from scalekit.db import BucketMap, ConnectionLost
from scalekit.db.shards import freshness
from scalekit.db.shards.freshness import MapFollower
from scalekit.db.shards.strategies import ShardStrategy
from scalekit.testing import capture_events


def test_a_failed_poll_is_not_followed_by_another_at_once() -> None:
    """A poll that fails after a whole timeout left the set due again at once: every
    statement then waited for one failing poll after another (attack11)."""
    clock = ManualClock()
    bucket_map = BucketMap(8, shards=2)
    timeouts: list[float | None] = []

    def version(timeout: float | None = None) -> int:
        timeouts.append(timeout)
        clock.advance(60.0)  # a frozen control database: the poll takes its whole timeout
        raise ConnectionLost("control database frozen")

    def load() -> ShardStrategy:
        raise AssertionError("no load while the version cannot be read")

    follower = MapFollower(bucket_map, load=load, version=version, interval=1.0, clock=clock,
                           check=lambda strategy: None)  # fmt: skip
    clock.advance(1.0)
    with capture_events(events.BackendError) as seen:
        assert follower.current() is bucket_map
        assert follower.current() is bucket_map  # the next statement: no second poll
        assert follower.polls == 1
        clock.advance(1.0)
        follower.current()  # an interval after the failure: polled again
    assert follower.polls == 2
    assert timeouts == [freshness.POLL_TIMEOUT] * 2  # each poll bounded, not the pool's 60 s
    assert [event.operation for event in seen] == ["map_poll", "map_poll"]


def test_a_refresh_interval_that_is_not_a_finite_number_is_refused() -> None:
    for interval in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="finite"):
            MapFollower(BucketMap(8, shards=2), load=None, version=None, interval=interval,
                        clock=ManualClock(), check=lambda strategy: None)  # fmt: skip
