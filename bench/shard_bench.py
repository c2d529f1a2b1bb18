"""Shard lookups per second for each strategy, and the keys each resize moves.

No server needed: the strategies are pure. Prints lookups/s for integer and
string keys (``shard_for`` one at a time and ``shard_for_many`` in bulk, plus
``ShardSet.for_key``), then the movement table of docs/shards.md: the share of
100,000 sequential ids that change shard when N shards grow to N+1.

    .venv/bin/python bench/shard_bench.py            # 5 rounds
    .venv/bin/python bench/shard_bench.py --quick    # 2 rounds, smaller batches
    .venv/bin/python bench/shard_bench.py --table    # only the movement table
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from scalekit.db import BucketMap, JumpHash, Modulo, Pool, ReplicaSet, ShardSet, plan

MOVEMENT_SIZES = [(2, 3), (4, 5), (8, 9), (16, 17), (4, 8)]
MOVEMENT_KEYS = 100_000


def movement_table(keys: int = MOVEMENT_KEYS) -> list[tuple[str, float, float, float]]:
    """(resize, Modulo, JumpHash, BucketMap) fractions of ``keys`` sequential ids that move."""
    ids = range(keys)
    rows = []
    for before, after in MOVEMENT_SIZES:
        bucket_map = BucketMap.uniform(before)
        rows.append(
            (
                f"{before} → {after}",
                plan(Modulo(before), Modulo(after), ids).fraction,
                plan(JumpHash(before), JumpHash(after), ids).fraction,
                plan(bucket_map, bucket_map.rebalance(after), ids).fraction,
            )
        )
    return rows


def print_movement_table() -> None:
    print(f"Share of {MOVEMENT_KEYS:,} sequential ids that change shard (ideal: (M-N)/M)")
    print("| Shards | Modulo | JumpHash | BucketMap (rebalance) | Ideal |")
    print("|---|---|---|---|---|")
    for (label, modulo, jump, bucket), (before, after) in zip(
        movement_table(), MOVEMENT_SIZES, strict=True
    ):
        ideal = (after - before) / after
        print(f"| {label} | {modulo:.1%} | {jump:.1%} | {bucket:.1%} | {ideal:.1%} |")


def _rate(call: Callable[[], int], seconds: float) -> float:
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        done += call()
    return done / (time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 0.2 s per variant")
    parser.add_argument("--table", action="store_true", help="only print the movement table")
    args = parser.parse_args(argv)
    if args.table:
        print_movement_table()
        return 0
    rounds, seconds = (2, 0.2) if args.quick else (5, 0.5)
    batch = 1_000
    int_keys = list(range(10_000_000, 10_000_000 + batch))
    str_keys = [f"user-{key}" for key in int_keys]
    shard_set = ShardSet(
        [ReplicaSet(Pool.from_url("sqlite:///:memory:", name=f"s{i}")) for i in range(16)],
        strategy=JumpHash(16),
    )
    strategies: list[tuple[str, Any]] = [
        ("Modulo(16)", Modulo(16)),
        ("JumpHash(16)", JumpHash(16)),
        ("JumpHash(1024)", JumpHash(1024)),
        ("BucketMap(1024 buckets, 16)", BucketMap.uniform(16)),
    ]
    variants: list[tuple[str, Callable[[], int]]] = []
    for name, strategy in strategies:
        for kind, keys in (("int", int_keys), ("str", str_keys)):

            def one(strategy: Any = strategy, keys: list[Any] = keys) -> int:
                lookup = strategy.shard_for
                for key in keys:
                    lookup(key)
                return len(keys)

            def many(strategy: Any = strategy, keys: list[Any] = keys) -> int:
                return len(strategy.shard_for_many(keys))

            variants.append((f"{name} shard_for {kind}", one))
            variants.append((f"{name} shard_for_many {kind}", many))

    def for_key() -> int:
        lookup = shard_set.for_key
        for key in int_keys:
            lookup(key)
        return len(int_keys)

    variants.append(("ShardSet(JumpHash(16)).for_key int", for_key))
    results: dict[str, list[float]] = {name: [] for name, _ in variants}
    for _ in range(rounds):  # interleaved so machine noise hits every variant alike
        for name, call in variants:
            results[name].append(_rate(call, seconds))
    print(f"python {sys.version.split()[0]}, {rounds} rounds x {seconds}s, median lookups/s")
    baseline = statistics.median(results["Modulo(16) shard_for int"])
    for name, _ in variants:
        median = statistics.median(results[name])
        print(f"  {name:<45} {median:>12,.0f}/s  ({median / baseline:.2f}x Modulo int)")
    shard_set.close()
    print()
    print_movement_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
