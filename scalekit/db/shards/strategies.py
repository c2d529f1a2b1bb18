"""Shard strategies: ``hash_key``, ``Modulo`` and ``JumpHash``.

The strategies are pure: ``shard_for(key)`` does no I/O and gives the same
answer in every process, on every Python version, whatever
``PYTHONHASHSEED`` is (the built-in ``hash()`` is never used).

Keys:

* ``JumpHash`` uses a non-negative integer key directly as the 64-bit key of
  Lamping & Veach's algorithm, so its results equal every other faithful
  implementation (Guava's ``Hashing.consistentHash``, Go's ``jump.Hash``).
* A ``str`` (UTF-8) or ``bytes`` key, or an integer outside 0..2**64-1, is
  first turned into 64 bits by :func:`hash_key`: the first 8 bytes of its
  SHA-256 digest, big-endian (integers as their decimal text).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

from ..errors import ConfigError

__all__ = ["JumpHash", "Modulo", "ShardStrategy", "hash_key", "jump_hash"]

_MASK64 = (1 << 64) - 1
_JUMP_MULTIPLIER = 2862933555777941757
_JUMP_SCALE = float(1 << 31)


def key_bytes(key: object) -> bytes:
    """The bytes :func:`hash_key` hashes: an int's decimal value, a str's UTF-8, bytes as given.

    Raises:
        TypeError: the key is a bool, or not an int, str or bytes.
    """
    if isinstance(key, bool):
        raise TypeError(f"shard key {key!r} is a bool: pass an int, str or bytes key")
    if isinstance(key, int):
        # int.__repr__, not str(): an IntEnum or another int subclass hashes by its value.
        return int.__repr__(key).encode("ascii")
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, bytes | bytearray | memoryview):
        return bytes(key)
    raise TypeError(
        f"shard key {key!r} of type {type(key).__name__} is not an int, str or bytes: "
        "pass str(key) (e.g. for a UUID)"
    )


def hash_key(key: object) -> int:
    """The stable 64-bit hash of a key: SHA-256's first 8 bytes, big-endian.

    Integers (``IntEnum`` members and other subclasses too, by value) hash as
    their decimal text (``hash_key(42) == hash_key("42")``), ``str`` as UTF-8,
    ``bytes`` as they are.

    Raises:
        TypeError: the key is not an int, str or bytes.
    """
    return int.from_bytes(hashlib.sha256(key_bytes(key)).digest()[:8], "big")


def check_count(name: str, n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"{name}={n!r}: the shard count must be an integer of at least 1")
    return n


@runtime_checkable
class ShardStrategy(Protocol):
    """What ``ShardSet`` needs of a strategy: a shard count and ``shard_for``."""

    @property
    def shard_count(self) -> int:
        """How many shards the strategy spreads keys over."""
        ...

    def shard_for(self, key: Any) -> int:
        """The shard, in ``range(shard_count)``, that holds ``key``."""
        ...


class _CountStrategy:
    """What ``Modulo`` and ``JumpHash`` share: a shard count ``n``, equality by it."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = check_count("n", n)

    @property
    def shard_count(self) -> int:
        """``n``."""
        return self.n

    @property
    def shards(self) -> int:
        """The shard count (``n``)."""
        return self.n

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.n})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.n == self.n

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.n))


class Modulo(_CountStrategy):
    """``key % n``: the rule of the original design, kept for migrating users.

    Integer keys are used as they are (so ``Modulo(4).shard_for(10) == 2``);
    str and bytes keys through :func:`hash_key`. Growing from N to N+1 shards
    moves about N/(N+1) of the keys: prefer ``JumpHash`` for new data.

    Raises:
        ConfigError: ``n`` is not an integer of at least 1.
    """

    __slots__ = ()

    def shard_for(self, key: Any) -> int:
        """``key % n`` for an int, ``hash_key(key) % n`` otherwise."""
        if isinstance(key, int) and not isinstance(key, bool):
            return int(key) % self.n
        return hash_key(key) % self.n

    def shard_for_many(self, keys: Iterable[Any]) -> list[int]:
        """``[shard_for(key) for key in keys]``."""
        n = self.n
        return [key % n if type(key) is int else self.shard_for(key) for key in keys]


def jump_hash(key: int, n: int) -> int:
    """Lamping & Veach's jump consistent hash of a 64-bit ``key`` into ``n`` buckets.

    A line-by-line transcription of the paper's C++ (arXiv:1406.2294, fig. 1),
    including its double-precision division, so the results are bit-exact.
    """
    b, j = -1, 0
    while j < n:
        b = j
        key = (key * _JUMP_MULTIPLIER + 1) & _MASK64
        j = int((b + 1) * (_JUMP_SCALE / float((key >> 33) + 1)))
    return b


class JumpHash(_CountStrategy):
    """Jump consistent hash (Lamping & Veach 2014): N → N+1 moves only 1/(N+1) of keys.

    A non-negative integer key below 2**64 (an ``IntEnum`` too, by value) is
    the algorithm's 64-bit key itself, so results match other
    implementations; str and bytes keys, and integers outside that range, are
    hashed with :func:`hash_key` first. A bool is refused.

    Raises:
        ConfigError: ``n`` is not an integer of at least 1.
    """

    __slots__ = ()

    def shard_for(self, key: Any) -> int:
        """The jump hash of ``key`` (an int in 0..2**64-1 used directly, others hashed).

        Raises:
            TypeError: the key is not an int, str or bytes.
        """
        if isinstance(key, int) and not isinstance(key, bool) and 0 <= key <= _MASK64:
            return jump_hash(int(key), self.n)
        return jump_hash(hash_key(key), self.n)

    def shard_for_many(self, keys: Iterable[Any]) -> list[int]:
        """``[shard_for(key) for key in keys]``, with the loop inlined (about 2x faster)."""
        n, mask, multiplier, scale = self.n, _MASK64, _JUMP_MULTIPLIER, _JUMP_SCALE
        out: list[int] = []
        append = out.append
        for key in keys:
            if type(key) is not int or not 0 <= key <= mask:
                append(self.shard_for(key))
                continue
            b, j = -1, 0
            while j < n:
                b = j
                key = (key * multiplier + 1) & mask
                j = int((b + 1) * (scale / float((key >> 33) + 1)))
            append(b)
        return out
