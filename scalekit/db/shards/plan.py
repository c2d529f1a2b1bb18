"""``plan``: which keys (or buckets) a change of strategy moves, and what share."""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

from ..errors import ConfigError
from .bucket_map import BucketMap
from .strategies import ShardStrategy

__all__ = ["DEFAULT_PLAN_KEYS", "Plan", "plan"]


@dataclasses.dataclass(frozen=True)
class Plan:
    """What changing strategy would move.

    ``keys`` maps each examined key that changes shard to ``(from, to)``;
    ``buckets`` does the same for buckets when both strategies are
    ``BucketMap``s. ``fraction`` is the share of examined keys that move, or
    of buckets when no keys were examined.
    """

    keys: Mapping[Hashable, tuple[int, int]]
    key_count: int
    buckets: Mapping[int, tuple[int, int]]
    bucket_count: int
    fraction: float

    @property
    def moved(self) -> Mapping[Any, tuple[int, int]]:
        """What moves: ``keys`` if keys were examined, else ``buckets``."""
        return self.keys if self.key_count else self.buckets

    def summary(self) -> str:
        """A few lines for people: how much moves, and from where to where."""
        flows: dict[tuple[int, int], int] = {}
        moves: Mapping[Any, tuple[int, int]] = self.keys if self.key_count else self.buckets
        for pair in moves.values():
            flows[pair] = flows.get(pair, 0) + 1
        unit = "keys" if self.key_count else "buckets"
        total = self.key_count or self.bucket_count
        lines = [f"{len(moves)} of {total} {unit} move ({self.fraction:.2%})"]
        if self.buckets and self.key_count:
            lines.append(f"{len(self.buckets)} of {self.bucket_count} buckets are reassigned")
        for (source, target), count in sorted(flows.items()):
            lines.append(f"  shard {source} -> shard {target}: {count} {unit}")
        return "\n".join(lines)


DEFAULT_PLAN_KEYS = 100_000


def _many(strategy: ShardStrategy, keys: Sequence[Any]) -> list[int]:
    many = getattr(strategy, "shard_for_many", None)
    if many is not None:
        return list(many(keys))
    return [strategy.shard_for(key) for key in keys]


def plan(
    current: ShardStrategy, proposed: ShardStrategy, keys: Iterable[Any] | None = None
) -> Plan:
    """Which keys (or buckets) change shard from ``current`` to ``proposed``, and what share.

    Args:
        current: the strategy in use.
        proposed: the strategy to change to.
        keys: the keys to examine. None examines the sequential ids
            ``0..99999`` — unless both strategies are ``BucketMap``s, where
            the reassigned buckets are exact and no key is needed.
    """
    bucket_moves: dict[int, tuple[int, int]] = {}
    bucket_count = 0
    if isinstance(current, BucketMap) and isinstance(proposed, BucketMap):
        if current.buckets != proposed.buckets:
            raise ConfigError(
                f"the maps have {current.buckets} and {proposed.buckets} buckets: a bucket "
                "count is fixed for the life of the data"
            )
        bucket_count = current.buckets
        bucket_moves = {
            bucket: (old, new)
            for bucket, (old, new) in enumerate(
                zip(current.assignment, proposed.assignment, strict=True)
            )
            if old != new
        }
        if keys is None:
            fraction = len(bucket_moves) / bucket_count
            return Plan({}, 0, bucket_moves, bucket_count, fraction)
    examined = range(DEFAULT_PLAN_KEYS) if keys is None else keys
    examined = examined if isinstance(examined, Sequence) else list(examined)
    before, after = _many(current, examined), _many(proposed, examined)
    key_moves: dict[Hashable, tuple[int, int]] = {
        key: (old, new) for key, old, new in zip(examined, before, after, strict=True) if old != new
    }
    count = len(examined)
    fraction = len(key_moves) / count if count else 0.0
    return Plan(key_moves, count, bucket_moves, bucket_count, fraction)
