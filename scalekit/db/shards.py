"""Shard selection (``Modulo``, ``JumpHash``, ``BucketMap``), ``ShardSet`` and resize ``plan``.

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
* ``BucketMap`` hashes every key, integers as their decimal text, so ``42``
  and ``"42"`` share a bucket and SQL can compute a row's bucket
  (``SHA2(CAST(col AS CHAR), 256)``; see ``scalekit.db.migrate``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from .. import events
from .._clock import Clock, get_clock
from .errors import ConfigError, DatabaseError
from .pool import Cursor, Params, Pool, Result, Row
from .replicas import ReplicaSet

__all__ = [
    "FENCE_TABLE",
    "MAP_TABLE",
    "BucketMap",
    "BucketMoved",
    "JumpHash",
    "Modulo",
    "Plan",
    "ShardRow",
    "ShardSet",
    "ShardStrategy",
    "hash_key",
    "plan",
]

T = TypeVar("T")

MAP_TABLE = "scalekit_bucket_map"
"""Default table of a ``BucketMap`` saved in a database."""

FENCE_TABLE = "scalekit_bucket_fence"
"""Per-shard table of bucket fences (``frozen`` during a move, ``moved`` after)."""

_MASK64 = (1 << 64) - 1
_JUMP_MULTIPLIER = 2862933555777941757
_JUMP_SCALE = float(1 << 31)


class BucketMoved(DatabaseError):
    """A guarded write met a bucket that is frozen for a move, or has moved away.

    ``state`` is ``"frozen"`` (the move did not finish within the set's
    ``freeze_timeout``) or ``"moved"`` (the set has no ``reload`` to learn the
    new map). Reload the ``BucketMap`` and retry.
    """

    def __init__(self, message: str, *, bucket: int, state: str) -> None:
        super().__init__(message)
        self.bucket = bucket
        self.state = state


def _key_bytes(key: object) -> bytes:
    if isinstance(key, bool):
        raise TypeError(f"shard key {key!r} is a bool: pass an int, str or bytes key")
    if isinstance(key, int):
        return str(key).encode("ascii")
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

    Integers hash as their decimal text (``hash_key(42) == hash_key("42")``),
    ``str`` as UTF-8, ``bytes`` as they are.

    Raises:
        TypeError: the key is not an int, str or bytes.
    """
    return int.from_bytes(hashlib.sha256(_key_bytes(key)).digest()[:8], "big")


def _check_count(name: str, n: object) -> int:
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
        self.n = _check_count("n", n)

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
            return key % self.n
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

    A non-negative integer key below 2**64 is the algorithm's 64-bit key
    itself, so results match other implementations; str and bytes keys, and
    integers outside that range, are hashed with :func:`hash_key` first.

    Raises:
        ConfigError: ``n`` is not an integer of at least 1.
    """

    __slots__ = ()

    def shard_for(self, key: Any) -> int:
        """The jump hash of ``key`` (an int in 0..2**64-1 used directly, others hashed).

        Raises:
            TypeError: the key is not an int, str or bytes.
        """
        if type(key) is int and 0 <= key <= _MASK64:
            return jump_hash(key, self.n)
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


class BucketMap:
    """Keys → a fixed number of buckets by hash; buckets → shards by a versioned table.

    ``bucket_for(key) = hash_key(key) % buckets``. The table can move one
    bucket at a time (``scalekit shards move``); each change makes a new
    ``version`` so every instance can tell which map it routes by.

    Args:
        buckets: the number of buckets; fixed for the life of the data.
        assignment: the shard of each bucket, as a sequence indexed by bucket
            or a mapping bucket → shard covering every bucket. None spreads
            the buckets round-robin over ``shards`` (bucket ``b`` → ``b % shards``).
        version: the table's version; a ``reassign`` makes ``version + 1``.
        shards: the shard count; default ``max(assignment) + 1``. Give it when
            a new shard holds no bucket yet.

    Raises:
        ConfigError: the assignment does not cover every bucket exactly, names
            a shard outside ``range(shards)``, or neither it nor ``shards`` is given.
    """

    __slots__ = ("_assignment", "buckets", "shard_count", "version")

    def __init__(
        self,
        buckets: int = 1024,
        assignment: Sequence[int] | Mapping[int, int] | None = None,
        version: int = 1,
        *,
        shards: int | None = None,
    ) -> None:
        if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
            raise ConfigError(f"buckets={buckets!r} must be an integer of at least 1")
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ConfigError(f"version={version!r} must be a non-negative integer")
        if shards is not None:
            _check_count("shards", shards)
        if assignment is None:
            if shards is None:
                raise ConfigError(
                    "BucketMap needs assignment= (bucket -> shard) or shards= (spread evenly)"
                )
            table = tuple(bucket % shards for bucket in range(buckets))
        elif isinstance(assignment, Mapping):
            if sorted(assignment) != list(range(buckets)):
                raise ConfigError(
                    f"assignment must map every bucket 0..{buckets - 1} exactly once; "
                    f"got {len(assignment)} entries"
                )
            table = tuple(int(assignment[bucket]) for bucket in range(buckets))
        else:
            table = tuple(int(shard) for shard in assignment)
            if len(table) != buckets:
                raise ConfigError(
                    f"assignment has {len(table)} entries but buckets={buckets}: give one "
                    "shard per bucket"
                )
        count = shards if shards is not None else max(table) + 1
        bad = [(bucket, shard) for bucket, shard in enumerate(table) if not 0 <= shard < count]
        if bad:
            bucket, shard = bad[0]
            raise ConfigError(
                f"bucket {bucket} is assigned to shard {shard}, outside 0..{count - 1}: "
                "fix the assignment or raise shards="
            )
        self.buckets = buckets
        self._assignment = table
        self.shard_count = count
        self.version = version

    @classmethod
    def uniform(cls, shards: int, buckets: int = 1024) -> BucketMap:
        """Buckets spread round-robin over ``shards`` shards, version 1."""
        return cls(buckets, shards=shards)

    @property
    def shards(self) -> int:
        """The shard count (``shard_count``)."""
        return self.shard_count

    @property
    def assignment(self) -> tuple[int, ...]:
        """The shard of each bucket, indexed by bucket."""
        return self._assignment

    def bucket_for(self, key: Any) -> int:
        """``hash_key(key) % buckets``."""
        return hash_key(key) % self.buckets

    def shard_for(self, key: Any) -> int:
        """The shard of the key's bucket."""
        return self._assignment[hash_key(key) % self.buckets]

    def shard_for_many(self, keys: Iterable[Any]) -> list[int]:
        """``[shard_for(key) for key in keys]``, with the hashing inlined."""
        table, buckets, sha256 = self._assignment, self.buckets, hashlib.sha256
        from_bytes = int.from_bytes
        out: list[int] = []
        append = out.append
        for key in keys:
            data = str(key).encode() if type(key) is int else _key_bytes(key)
            append(table[from_bytes(sha256(data).digest()[:8], "big") % buckets])
        return out

    def shard_of_bucket(self, bucket: int) -> int:
        """The shard a bucket is assigned to."""
        if not 0 <= bucket < self.buckets:
            raise ValueError(f"bucket {bucket} is outside 0..{self.buckets - 1}")
        return self._assignment[bucket]

    def buckets_of(self, shard: int) -> list[int]:
        """The buckets assigned to ``shard``, ascending."""
        return [bucket for bucket, owner in enumerate(self._assignment) if owner == shard]

    def reassign(self, moves: Mapping[int, int], *, shards: int | None = None) -> BucketMap:
        """A new map, ``version + 1``, with ``moves`` (bucket → new shard) applied.

        Raises:
            ConfigError: a bucket or shard is out of range.
        """
        table = list(self._assignment)
        for bucket, shard in moves.items():
            if not 0 <= bucket < self.buckets:
                raise ConfigError(f"bucket {bucket} is outside 0..{self.buckets - 1}")
            table[bucket] = shard
        return BucketMap(
            self.buckets,
            table,
            shards=self.shard_count if shards is None else max(shards, self.shard_count),
            version=self.version + 1,
        )

    def rebalance(self, shards: int) -> BucketMap:
        """A new map over ``shards`` shards that moves as few buckets as possible.

        Each shard ends with ``buckets // shards`` or one more bucket; the
        buckets that move are taken from the fullest shards, highest first.
        Shrinking (``shards < shard_count``) empties the removed shards.
        """
        _check_count("shards", shards)
        base, extra = divmod(self.buckets, shards)
        owned: dict[int, list[int]] = {shard: [] for shard in range(max(shards, self.shard_count))}
        for bucket, shard in enumerate(self._assignment):
            owned[shard].append(bucket)
        # The shards that keep the most buckets get the ``extra`` ones: fewer moves.
        order = sorted(range(shards), key=lambda shard: (-len(owned[shard]), shard))
        quota = {shard: base + (1 if rank < extra else 0) for rank, shard in enumerate(order)}
        spare: list[int] = []
        for shard in sorted(owned):
            limit = quota.get(shard, 0)
            while len(owned[shard]) > limit:
                spare.append(owned[shard].pop())
        moves: dict[int, int] = {}
        spare.sort()
        for shard in range(shards):
            while len(owned[shard]) < quota[shard]:
                bucket = spare.pop()
                owned[shard].append(bucket)
                moves[bucket] = shard
        table = list(self._assignment)
        for bucket, shard in moves.items():
            table[bucket] = shard
        return BucketMap(self.buckets, table, shards=shards, version=self.version + 1)

    # -- JSON ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """``{"format": "scalekit.bucketmap/1", "version", "buckets", "shards", "assignment"}``."""
        return {
            "format": "scalekit.bucketmap/1",
            "version": self.version,
            "buckets": self.buckets,
            "shards": self.shard_count,
            "assignment": list(self._assignment),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BucketMap:
        """The inverse of ``to_dict``.

        Raises:
            ConfigError: the data is not a scalekit bucket map.
        """
        if data.get("format") != "scalekit.bucketmap/1":
            raise ConfigError(
                f"not a scalekit bucket map (format={data.get('format')!r}); expected "
                "'scalekit.bucketmap/1' as written by BucketMap.save()"
            )
        try:
            return cls(
                int(data["buckets"]),
                [int(shard) for shard in data["assignment"]],
                shards=int(data["shards"]),
                version=int(data["version"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"bad bucket map data: {exc!r}") from exc

    def to_json(self) -> str:
        """The map as JSON text."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> BucketMap:
        """A map from ``to_json`` text."""
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the map to a JSON file, atomically (a reader never sees half a file)."""
        target = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(self.to_json())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BucketMap:
        """Read a map written by ``save``."""
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    # -- database --------------------------------------------------------------
    @staticmethod
    def ensure_table(db: Pool | ReplicaSet, table: str = MAP_TABLE) -> None:
        """Create the map table if it is missing.

        One row per bucket ``(bucket, shard, version)`` where ``version`` is the
        map version that last changed it, plus a row ``bucket = -1`` holding the
        shard count in ``shard`` and the map's current version.
        """
        _primary(db).execute(
            f"CREATE TABLE IF NOT EXISTS {_identifier(table)} (bucket INT NOT NULL PRIMARY KEY, "
            "shard INT NOT NULL, version BIGINT NOT NULL)"
        )

    def save_db(self, db: Pool | ReplicaSet, table: str = MAP_TABLE) -> None:
        """Store the map in a database table (created if missing), in one transaction.

        Raises:
            ConfigError: the table already holds a newer version, or the same
                version with a different assignment.
        """
        pool = _primary(db)
        self.ensure_table(pool, table)
        name = _identifier(table)
        with pool.connection() as conn:
            conn.begin()
            try:
                cursor = conn.cursor()
                lock = " FOR UPDATE" if pool.dialect == "mysql" else ""
                rows = cursor.query(f"SELECT bucket, shard, version FROM {name}{lock}")
                if rows:
                    stored = _map_from_rows(rows, table)
                    if stored.version > self.version or (
                        stored.version == self.version and stored != self
                    ):
                        raise ConfigError(
                            f"table {table} holds bucket map version {stored.version}; "
                            f"refusing to overwrite it with version {self.version}: load it, "
                            "change it with reassign(), then save"
                        )
                    if stored == self:
                        conn.rollback()
                        return
                cursor.execute(f"DELETE FROM {name}")
                values = [(-1, self.shard_count, self.version)]
                values += [(bucket, shard, self.version) for bucket, shard in
                           enumerate(self._assignment)]  # fmt: skip
                for start in range(0, len(values), 256):
                    chunk = values[start : start + 256]
                    cursor.execute(
                        f"INSERT INTO {name} (bucket, shard, version) VALUES "
                        + ", ".join(["(%s, %s, %s)"] * len(chunk)),
                        [value for row in chunk for value in row],
                    )
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    @classmethod
    def load_db(cls, db: Pool | ReplicaSet, table: str = MAP_TABLE) -> BucketMap:
        """Read the map from its database table (on the primary).

        Raises:
            ConfigError: the table is empty or inconsistent.
        """
        rows = _primary(db).query(f"SELECT bucket, shard, version FROM {_identifier(table)}")
        if not rows:
            raise ConfigError(
                f"table {table} holds no bucket map: save one first (BucketMap.save_db)"
            )
        return _map_from_rows(rows, table)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, BucketMap)
            and other._assignment == self._assignment
            and other.shard_count == self.shard_count
        )

    def __hash__(self) -> int:
        return hash((self._assignment, self.shard_count))

    def __repr__(self) -> str:
        return (
            f"BucketMap(buckets={self.buckets}, shards={self.shard_count}, version={self.version})"
        )


def _map_from_rows(rows: Iterable[Row], table: str) -> BucketMap:
    meta: Row | None = None
    assignment: dict[int, int] = {}
    for row in rows:
        if int(row["bucket"]) == -1:
            meta = row
        else:
            assignment[int(row["bucket"])] = int(row["shard"])
    if meta is None:
        raise ConfigError(f"table {table} has no bucket -1 row (shard count and version)")
    return BucketMap(
        len(assignment), assignment, shards=int(meta["shard"]), version=int(meta["version"])
    )


def _primary(db: Pool | ReplicaSet) -> Pool:
    return db.primary if isinstance(db, ReplicaSet) else db


def _identifier(name: str) -> str:
    if not name or not all(char.isalnum() or char in "_$" for char in name) or name[0].isdigit():
        raise ConfigError(f"{name!r} is not a plain SQL identifier (letters, digits, _ and $)")
    return name


# -- ShardSet -------------------------------------------------------------------


class ShardRow(dict[str, Any]):
    """A row from ``ShardSet.query_all``: a plain dict plus the ``shard`` it came from."""

    __slots__ = ("shard",)

    def __init__(self, shard: int, row: Mapping[str, Any]) -> None:
        super().__init__(row)
        self.shard = shard

    def __repr__(self) -> str:
        return f"ShardRow(shard={self.shard}, {dict.__repr__(self)})"


class _Fenced(Exception):
    def __init__(self, state: str) -> None:
        super().__init__(state)
        self.state = state


class ShardSet:
    """Shards (each a ``ReplicaSet``) and the strategy that picks one per key.

    ``ShardSet([db0, db1, db2, db3], strategy=JumpHash(4))``. Statements run
    through the set (``query``, ``execute``, ``transaction``, ``query_all``
    and their ``a``-prefixed async twins) report their shard index in
    ``DbQuery.shard`` / ``DbRouting.shard``.

    With a ``BucketMap``, ``execute`` and ``transaction`` are *guarded*: in
    the same transaction they first read the bucket's fence row on the shard
    (``SELECT ... LOCK IN SHARE MODE``, one more statement). A bucket frozen by
    a move makes them wait (up to ``freeze_timeout``); one that has moved
    away makes them ``reload`` the map and run on the new shard. Writes sent
    straight to ``for_key(key)`` are not guarded.

    Args:
        shards: one ``ReplicaSet`` per shard, in shard order.
        strategy: ``JumpHash``, ``Modulo``, ``BucketMap`` or any
            ``ShardStrategy``; default ``JumpHash(len(shards))``.
        reload: returns the current strategy (e.g.
            ``lambda: BucketMap.load_db(control)``); called when a guarded write
            finds its bucket moved, and by ``reload()``.
        freeze_timeout: seconds a guarded write waits for a frozen bucket.
        fence_table: the per-shard fence table name.
        clock: the clock for ``freeze_timeout``.

    Raises:
        ConfigError: the strategy's shard count is not ``len(shards)``.
    """

    def __init__(
        self,
        shards: Sequence[ReplicaSet],
        strategy: ShardStrategy | None = None,
        *,
        reload: Callable[[], ShardStrategy] | None = None,
        freeze_timeout: float = 30.0,
        fence_table: str = FENCE_TABLE,
        clock: Clock | None = None,
    ) -> None:
        self.shards: tuple[ReplicaSet, ...] = tuple(shards)
        if not self.shards:
            raise ConfigError("ShardSet needs at least one shard")
        if freeze_timeout < 0:
            raise ConfigError(f"freeze_timeout={freeze_timeout!r} must not be negative")
        self.strategy: ShardStrategy = strategy or JumpHash(len(self.shards))
        self._check(self.strategy)
        self._reload = reload
        self.freeze_timeout = freeze_timeout
        self.fence_table = _identifier(fence_table)
        self._clock = clock or get_clock()
        self._fences_ready: set[int] = set()
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def _check(self, strategy: ShardStrategy) -> None:
        if strategy.shard_count != len(self.shards):
            raise ConfigError(
                f"{strategy!r} spreads keys over {strategy.shard_count} shards but the "
                f"ShardSet has {len(self.shards)}: give one ReplicaSet per shard"
            )

    def __len__(self) -> int:
        return len(self.shards)

    def shard_for(self, key: Any) -> int:
        """The index of the shard that holds ``key``."""
        return self.strategy.shard_for(key)

    def for_key(self, key: Any) -> ReplicaSet:
        """The ``ReplicaSet`` of the shard that holds ``key``."""
        return self.shards[self.strategy.shard_for(key)]

    @contextlib.contextmanager
    def using(self, key: Any) -> Iterator[ReplicaSet]:
        """``with shards.using(user_id) as db:`` — the key's ``ReplicaSet``, events tagged.

        Statements run on ``db`` inside the block report the shard index in
        their events, as statements run through the set do.
        """
        index = self.strategy.shard_for(key)
        token = events.current_shard.set(index)
        try:
            yield self.shards[index]
        finally:
            events.current_shard.reset(token)

    def reload(self) -> ShardStrategy:
        """Replace the strategy with what ``reload`` returns (e.g. a newer map).

        Raises:
            ConfigError: no ``reload`` was given, or the new strategy's shard
                count does not match.
        """
        if self._reload is None:
            raise ConfigError("this ShardSet has no reload=: pass one to follow bucket moves")
        strategy = self._reload()
        self._check(strategy)
        self.strategy = strategy
        return strategy

    # -- statements on one shard ---------------------------------------------
    def query(self, key: Any, sql: str, params: Params = None, **options: Any) -> list[Row]:
        """``ReplicaSet.query`` on the key's shard (``key`` is also the read-your-writes key)."""
        index = self.strategy.shard_for(key)
        token = events.current_shard.set(index)
        try:
            options.setdefault("key", key)
            return self.shards[index].query(sql, params, **options)
        finally:
            events.current_shard.reset(token)

    def execute(self, key: Any, sql: str, params: Params = None) -> Result:
        """One write on the key's shard; guarded by the bucket fence under a ``BucketMap``."""
        if not isinstance(self.strategy, BucketMap):
            index = self.strategy.shard_for(key)
            token = events.current_shard.set(index)
            try:
                return self.shards[index].execute(sql, params, key=key)
            finally:
                events.current_shard.reset(token)

        def write(cursor: Cursor) -> Result:
            rowcount = cursor.execute(sql, params)
            return Result(rowcount, cursor.lastrowid)

        return self.transaction(key, write)

    def transaction(self, key: Any, fn: Callable[[Cursor], T], *, retries: int = 0) -> T:
        """Run ``fn(cursor)`` in a transaction on the key's shard and return its result.

        Under a ``BucketMap`` the transaction first checks the bucket's fence:
        frozen → roll back, wait and run again; moved → reload the map and
        run on the new shard. ``retries`` is passed to ``ReplicaSet.transaction``
        (deadlocks and lock wait timeouts).

        Raises:
            BucketMoved: still frozen after ``freeze_timeout``, or moved and no
                ``reload`` was given.
        """
        deadline: float | None = None
        delay = 0.005
        reloads = 0
        while True:
            strategy = self.strategy
            index = strategy.shard_for(key)
            replica_set = self.shards[index]
            token = events.current_shard.set(index)
            try:
                if not isinstance(strategy, BucketMap):
                    return replica_set.transaction(fn, retries=retries, key=key)
                bucket = strategy.bucket_for(key)
                self._ensure_fence(index)
                guarded = _guard(fn, self._fence_sql(replica_set), bucket)
                return replica_set.transaction(guarded, retries=retries, key=key)
            except _Fenced as fenced:
                if events.bus.has_listeners(events.DbRouting):
                    events.emit(events.DbRouting(replica_set.name, f"bucket_{fenced.state}",
                                                 f"bucket {bucket}", index))  # fmt: skip
                if fenced.state == "moved":
                    reloads += 1
                    if self._reload is None or reloads > 3:
                        raise BucketMoved(
                            f"bucket {bucket} has moved away from shard {index} "
                            + (
                                "and reloading the map did not find its new shard"
                                if self._reload
                                else "; pass reload= to the ShardSet to follow moves"
                            ),
                            bucket=bucket,
                            state="moved",
                        ) from None
                    self.reload()
                    continue
                now = self._clock.monotonic()
                if deadline is None:
                    deadline = now + self.freeze_timeout
                if now >= deadline:
                    raise BucketMoved(
                        f"bucket {bucket} stayed frozen for a move longer than "
                        f"freeze_timeout={self.freeze_timeout}s: is a mover stuck? rerun "
                        "`scalekit shards move` to finish it",
                        bucket=bucket,
                        state="frozen",
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
                # The move may have flipped the map while we waited.
                if self._reload is not None:
                    self.reload()
            finally:
                events.current_shard.reset(token)

    def _fence_sql(self, replica_set: ReplicaSet) -> str:
        lock = " LOCK IN SHARE MODE" if replica_set.primary.dialect == "mysql" else ""
        return f"SELECT state FROM {self.fence_table} WHERE bucket = %s{lock}"

    def _ensure_fence(self, index: int) -> None:
        if index in self._fences_ready:
            return
        ensure_fence_table(self.shards[index].primary, self.fence_table)
        self._fences_ready.add(index)

    # -- fan-out ---------------------------------------------------------------
    def query_all(self, sql: str, params: Params = None, **options: Any) -> list[ShardRow]:
        """Run a read on every shard concurrently (threads); rows tagged with their shard.

        Rows come in shard order, each shard's in its own order. ``options``
        go to each ``ReplicaSet.query`` (e.g. ``primary=True``).

        Raises:
            DatabaseError: a shard failed (the first failure, after all finished).
        """

        def run(index: int) -> list[ShardRow]:
            events.current_shard.set(index)
            rows = self.shards[index].query(sql, params, **options)
            return [ShardRow(index, row) for row in rows]

        if len(self.shards) == 1:
            return contextvars.copy_context().run(run, 0)
        executor = self._pool()
        futures = [
            executor.submit(contextvars.copy_context().run, run, index)
            for index in range(len(self.shards))
        ]
        concurrent.futures.wait(futures)
        result: list[ShardRow] = []
        for future in futures:
            result.extend(future.result())
        return result

    # -- async ---------------------------------------------------------------------
    async def aquery(self, key: Any, sql: str, params: Params = None, **options: Any) -> list[Row]:
        """``query`` in a worker thread, so the event loop never blocks."""
        return await _to_thread(functools.partial(self.query, key, sql, params, **options))

    async def aexecute(self, key: Any, sql: str, params: Params = None) -> Result:
        """``execute`` in a worker thread."""
        return await _to_thread(functools.partial(self.execute, key, sql, params))

    async def atransaction(self, key: Any, fn: Callable[[Cursor], T], *, retries: int = 0) -> T:
        """``transaction`` in a worker thread."""
        return await _to_thread(functools.partial(self.transaction, key, fn, retries=retries))

    async def aquery_all(self, sql: str, params: Params = None, **options: Any) -> list[ShardRow]:
        """``query_all`` from async code: the shards still run concurrently, off the loop."""
        return await _to_thread(functools.partial(self.query_all, sql, params, **options))

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=len(self.shards), thread_name_prefix="scalekit-shards"
                )
            return self._executor

    def close(self) -> None:
        """Stop the fan-out threads and close every shard's pools."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        for replica_set in self.shards:
            replica_set.close()

    def __repr__(self) -> str:
        return f"<ShardSet shards={len(self.shards)} strategy={self.strategy!r}>"


async def _to_thread(call: Callable[[], T]) -> T:
    import anyio.to_thread

    context = contextvars.copy_context()
    return await anyio.to_thread.run_sync(context.run, call)


def _guard(fn: Callable[[Cursor], T], fence: str, bucket: int) -> Callable[[Cursor], T]:
    """``fn`` behind a read of the bucket's fence row, in the same transaction."""

    def guarded(cursor: Cursor) -> T:
        rows = cursor.query(fence, (bucket,))
        if rows and rows[0]["state"] != "open":
            raise _Fenced(str(rows[0]["state"]))
        return fn(cursor)

    return guarded


def ensure_fence_table(pool: Pool, table: str = FENCE_TABLE) -> None:
    """Create a shard's bucket fence table if it is missing."""
    pool.execute(
        f"CREATE TABLE IF NOT EXISTS {_identifier(table)} (bucket INT NOT NULL PRIMARY KEY, "
        "state VARCHAR(16) NOT NULL)"
    )


# -- plan -------------------------------------------------------------------------


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
