"""Shard strategies: reference outputs, stability, spread, movement properties."""

from __future__ import annotations

import enum
import hashlib
import json
import math
import os
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.db import BucketMap, ConfigError, JumpHash, Modulo, plan
from scalekit.db.shards import hash_key, jump_hash

UINT64 = st.integers(min_value=0, max_value=2**64 - 1)
KEYS = st.one_of(UINT64, st.integers(), st.text(max_size=40), st.binary(max_size=40))

# Reference outputs of jump consistent hash from independent implementations:
# dgryski/go-jump jump_test.go ("generated from the reference C++ code" of the
# paper), Hash(key, buckets) for buckets = 1..19 ...
GO_JUMP_VECTORS = {
    0: [0] * 19,
    1: [0, 0, 0, 0, 0, 0, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 17, 17],
    0xDEADBEEF: [0, 1, 2, 3, 3, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 16, 16, 16],
    0x0DDC0FFEEBADF00D: [0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 15, 15, 15, 15],
}
# ... and Guava's HashingTest.testConsistentHash_linearCongruentialGeneratorCompatibility
# (Hashing.consistentHash(key, 100), "compatible with the c++ implementation").
GUAVA_VECTORS = {1: 55, 2: 62, 3: 8, 4: 45, 5: 59}


@pytest.mark.parametrize("key", sorted(GO_JUMP_VECTORS))
def test_jump_hash_matches_go_jump_reference_vectors(key: int) -> None:
    expected = GO_JUMP_VECTORS[key]
    assert [JumpHash(n).shard_for(key) for n in range(1, 20)] == expected
    assert [JumpHash(n).shard_for_many([key])[0] for n in range(1, 20)] == expected


def test_jump_hash_matches_guava_consistent_hash_vectors() -> None:
    assert {key: JumpHash(100).shard_for(key) for key in GUAVA_VECTORS} == GUAVA_VECTORS


def test_jump_hash_of_extreme_keys_stays_in_range() -> None:
    for n in (1, 2, 7, 1000, 2**31 - 1):
        for key in (0, 1, 2**63 - 1, 2**63, 2**64 - 1):
            assert 0 <= jump_hash(key, n) < n


def test_hash_key_is_sha256_prefix_big_endian() -> None:
    # sha256(b"42") starts with 73475cb40a568e8d: the documented definition.
    assert hash_key(42) == hash_key("42") == hash_key(b"42") == 0x73475CB40A568E8D
    assert hash_key("é") == int.from_bytes(hashlib.sha256("é".encode()).digest()[:8], "big")


_PROBE = """
import json, sys
from scalekit.db import BucketMap, JumpHash, Modulo
keys = [0, 1, 41, 2**40 + 7, "user-42", "é", b"\\x00\\xff"]
out = {}
strategies = [("jump", JumpHash(7)), ("mod", Modulo(7)), ("bucket", BucketMap(64, shards=7))]
for name, strategy in strategies:
    out[name] = [strategy.shard_for(key) for key in keys]
print(json.dumps(out))
"""


def test_same_shards_across_processes_and_hash_seeds() -> None:
    results = set()
    for seed in ("0", "1", "12345", "random"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                              text=True, check=True, timeout=60)  # fmt: skip
        results.add(done.stdout.strip())
    assert len(results) == 1
    # And the same as in this process.
    here = json.loads(results.pop())
    assert here["jump"][1] == JumpHash(7).shard_for(1)
    assert here["bucket"][4] == BucketMap(64, shards=7).shard_for("user-42")


@pytest.mark.parametrize("n", [4, 5, 16])
def test_million_sequential_ids_spread_within_two_percent(n: int) -> None:
    ids = range(1_000_000)
    for strategy in (JumpHash(n), BucketMap(1024, shards=n)):
        counts = Counter(strategy.shard_for_many(ids))
        assert sorted(counts) == list(range(n))
        expected = 1_000_000 / n
        worst = max(abs(count - expected) / expected for count in counts.values())
        assert worst <= 0.02, (strategy, counts)


@given(key=KEYS, n=st.integers(min_value=1, max_value=2000))
def test_every_strategy_returns_a_shard_in_range(key: object, n: int) -> None:
    for strategy in (JumpHash(n), Modulo(n), BucketMap(64, shards=n)):
        assert 0 <= strategy.shard_for(key) < n


@given(keys=st.lists(KEYS, max_size=20), n=st.integers(min_value=1, max_value=50))
def test_shard_for_many_equals_shard_for(keys: list[object], n: int) -> None:
    for strategy in (JumpHash(n), Modulo(n), BucketMap(128, shards=n)):
        assert strategy.shard_for_many(keys) == [strategy.shard_for(key) for key in keys]


@given(key=KEYS, n=st.integers(min_value=1, max_value=1000))
def test_jump_growing_moves_keys_only_to_the_new_shard(key: object, n: int) -> None:
    before, after = JumpHash(n).shard_for(key), JumpHash(n + 1).shard_for(key)
    assert after in (before, n)


@settings(max_examples=3, deadline=None)
@given(start=st.integers(0, 2**63), stride=st.integers(1, 2**20), strings=st.booleans())
def test_growing_four_to_five_moves_a_fifth_with_jump_and_most_with_modulo(
    start: int, stride: int, strings: bool
) -> None:
    numbers = range(start, start + 100_000 * stride, stride)
    keys = [f"user-{number}" for number in numbers] if strings else numbers
    jump = plan(JumpHash(4), JumpHash(5), keys)
    assert 0.195 <= jump.fraction <= 0.205
    assert {new for _, new in jump.keys.values()} == {4}
    modulo = plan(Modulo(4), Modulo(5), keys)
    if strings or math.gcd(stride, 20) == 1:
        # Integer keys in a stride sharing a factor with 4 or 5 fall on few residues.
        assert modulo.fraction >= 0.75


@settings(max_examples=50, deadline=None)
@given(
    moves=st.dictionaries(st.integers(0, 255), st.integers(0, 5), max_size=40),
    keys=st.lists(KEYS, min_size=1, max_size=200, unique_by=repr),
)
def test_bucket_map_moves_exactly_the_reassigned_buckets(
    moves: dict[int, int], keys: list[object]
) -> None:
    current = BucketMap(256, shards=6)
    proposed = current.reassign(moves)
    reassigned = {bucket for bucket, shard in moves.items() if current.assignment[bucket] != shard}
    result = plan(current, proposed, keys)
    assert set(result.buckets) == reassigned
    for key in keys:
        moved = current.bucket_for(key) in reassigned
        assert (key in result.keys) == moved


def test_bucket_plan_without_keys_is_exact_buckets() -> None:
    current = BucketMap.uniform(4)
    proposed = current.rebalance(5)
    result = plan(current, proposed)
    assert result.key_count == 0
    assert len(result.buckets) == 1024 // 5  # only what the new shard needs
    assert {new for _, new in result.buckets.values()} == {4}
    assert result.fraction == len(result.buckets) / 1024
    assert Counter(proposed.assignment).most_common()[-1][1] >= 1024 // 5


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "4"])
def test_bad_shard_counts_are_config_errors(bad: object) -> None:
    for strategy in (JumpHash, Modulo):
        with pytest.raises(ConfigError, match="shard count"):
            strategy(bad)  # type: ignore[arg-type]


def test_bad_keys_raise_typed_errors_with_advice() -> None:
    with pytest.raises(TypeError, match="str"):
        JumpHash(4).shard_for(1.5)
    with pytest.raises(TypeError, match="bool"):
        BucketMap(8, shards=2).shard_for(True)


def test_integers_outside_64_bits_are_hashed_like_their_text() -> None:
    for key in (-1, -(2**70), 2**64, 2**100):
        assert JumpHash(9).shard_for(key) == jump_hash(hash_key(str(key)), 9)


def test_shard_counts() -> None:
    for strategy in (JumpHash(5), Modulo(5), BucketMap(64, shards=5)):
        assert strategy.shard_count == strategy.shards == 5
    assert (
        plan(JumpHash(2), JumpHash(3), range(10)).moved
        == plan(JumpHash(2), JumpHash(3), range(10)).keys
    )


def test_modulo_keeps_the_original_rule_for_integers() -> None:
    assert [Modulo(4).shard_for(user_id) for user_id in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]


class _Number(enum.IntEnum):
    SMALL = 5
    LARGE = 2**63 + 11


class _Text(int):
    """An int subclass whose text is not its decimal value."""

    def __str__(self) -> str:
        return "not a number"


@given(value=st.integers(), n=st.integers(min_value=1, max_value=500))
def test_int_subclasses_route_by_their_value(value: int, n: int) -> None:
    # Issue 11 point 15: JumpHash sent IntEnum(5) and 5 to different shards.
    key = _Text(value)
    for strategy in (JumpHash(n), Modulo(n), BucketMap(64, shards=n)):
        assert strategy.shard_for(key) == strategy.shard_for(value)
        assert strategy.shard_for_many([key]) == [strategy.shard_for(value)]
    assert hash_key(key) == hash_key(value)


def test_int_enums_route_like_their_value_and_bools_are_refused() -> None:
    for member in _Number:
        for strategy in (JumpHash(7), Modulo(7), BucketMap(64, shards=7)):
            assert strategy.shard_for(member) == strategy.shard_for(member.value)
            assert strategy.shard_for_many([member]) == [strategy.shard_for(member.value)]
    for strategy in (JumpHash(7), Modulo(7), BucketMap(64, shards=7)):
        with pytest.raises(TypeError, match="bool"):
            strategy.shard_for(True)
        with pytest.raises(TypeError, match="bool"):
            strategy.shard_for_many([False])
