"""BucketMap: construction, versions, JSON and database round trips, rebalancing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from shard_sqlite import control_pool

from scalekit.db import BucketMap, ConfigError


def test_assignment_forms_and_errors() -> None:
    assert BucketMap(4, [0, 1, 1, 0]).assignment == (0, 1, 1, 0)
    assert BucketMap(4, {0: 1, 1: 0, 2: 0, 3: 1}).shard_count == 2
    assert BucketMap(4, [0, 0, 0, 0], shards=3).shard_count == 3  # an empty new shard
    assert BucketMap(6, shards=3).assignment == (0, 1, 2, 0, 1, 2)
    with pytest.raises(ConfigError, match="one shard per bucket"):
        BucketMap(4, [0, 1])
    with pytest.raises(ConfigError, match="every bucket"):
        BucketMap(4, {0: 1})
    with pytest.raises(ConfigError, match=r"outside 0\.\.1"):
        BucketMap(2, [0, 2], shards=2)
    with pytest.raises(ConfigError, match=r"assignment= .* or shards="):
        BucketMap(8)
    with pytest.raises(ConfigError, match="buckets=0"):
        BucketMap(0, shards=1)


def test_reassign_makes_a_new_version() -> None:
    first = BucketMap(8, shards=2)
    second = first.reassign({3: 0})
    assert (first.version, second.version) == (1, 2)
    assert second.shard_of_bucket(3) == 0
    assert first.shard_of_bucket(3) == 1
    assert second.buckets_of(1) == [1, 5, 7]


@given(buckets=st.integers(1, 300), before=st.integers(1, 12), after=st.integers(1, 12))
def test_rebalance_is_even_and_moves_as_little_as_needed(
    buckets: int, before: int, after: int
) -> None:
    current = BucketMap(buckets, shards=before)
    proposed = current.rebalance(after)
    counts = Counter(proposed.assignment)
    assert proposed.shard_count == after
    assert all(0 <= shard < after for shard in proposed.assignment)
    assert max(counts.values()) - min(counts.get(s, 0) for s in range(after)) <= 1
    moved = sum(a != b for a, b in zip(current.assignment, proposed.assignment, strict=True))
    if after > before:  # growing: only the new shards receive buckets
        assert all(new >= before for old, new in zip(current.assignment, proposed.assignment,
                                                     strict=True) if old != new)  # fmt: skip
        assert moved == sum(counts[s] for s in range(before, after))


def test_json_round_trip(tmp_path: Path) -> None:
    bucket_map = BucketMap(64, shards=3).reassign({5: 0})
    path = tmp_path / "map.json"
    bucket_map.save(path)
    loaded = BucketMap.load(path)
    assert loaded == bucket_map
    assert loaded.version == 2
    assert BucketMap.from_json(bucket_map.to_json()).assignment == bucket_map.assignment
    with pytest.raises(ConfigError, match="not a scalekit bucket map"):
        BucketMap.from_dict({"format": "other"})


def test_database_round_trip_and_stale_saves_refused(tmp_path: Path) -> None:
    control = control_pool(tmp_path)
    with pytest.raises(Exception, match=r"has no table|holds no bucket map"):
        BucketMap.load_db(control)
    first = BucketMap(32, [0] * 16 + [1] * 16, shards=3)
    first.save_db(control)
    assert BucketMap.load_db(control) == first
    second = first.reassign({0: 2})
    second.save_db(control)
    loaded = BucketMap.load_db(control)
    assert (loaded.version, loaded.shard_count, loaded.shard_of_bucket(0)) == (2, 3, 2)
    with pytest.raises(ConfigError, match="refusing to overwrite it with version 1"):
        first.save_db(control)
    second.save_db(control)  # saving the same map again is a no-op
    control.close()


def test_a_map_derived_from_an_old_version_cannot_undo_a_newer_one(tmp_path: Path) -> None:
    # Issue 11 point 12: save_db accepted v3 derived from v1 over a stored v2.
    control = control_pool(tmp_path)
    BucketMap(32, shards=2).save_db(control)
    stale = BucketMap.load_db(control)
    moved = stale.reassign({3: 0})  # what a mover's flip stores
    moved.save_db(control)
    derived = stale.reassign({5: 0}).reassign({7: 0})  # version 3, derived from version 1
    assert derived.derived_from == (1, stale.digest)
    with pytest.raises(ConfigError, match=r"derived from version 1 .*load the stored map"):
        derived.save_db(control)
    with pytest.raises(ConfigError, match="not derived from it"):
        BucketMap(32, shards=2, version=9).save_db(control)
    assert BucketMap.load_db(control) == moved
    assert BucketMap.load_db(control).shard_of_bucket(3) == 0

    fresh = BucketMap.load_db(control).reassign({5: 0}).reassign({7: 0})  # a chain from v2
    assert fresh.derived_from == (2, moved.digest)
    fresh.save_db(control)
    then = fresh.reassign({9: 0})  # saved in between: derives from what it saved
    then.save_db(control)
    stored = BucketMap.load_db(control)
    assert (stored.version, [stored.shard_of_bucket(b) for b in (3, 5, 7, 9)]) == (5, [0] * 4)
    control.close()


def test_derived_from_survives_json(tmp_path: Path) -> None:
    control = control_pool(tmp_path)
    current = BucketMap.uniform(4, buckets=64)
    current.save_db(control)
    path = tmp_path / "next.json"
    current.rebalance(5).save(path)  # what `scalekit shards plan --save` writes
    planned = BucketMap.load(path)
    assert planned.derived_from == (1, current.digest)
    planned.save_db(control)
    assert BucketMap.load_db(control).shard_count == 5
    control.close()
