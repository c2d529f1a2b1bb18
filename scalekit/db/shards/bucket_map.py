"""``BucketMap``: keys → a fixed number of buckets by hash; buckets → shards by a versioned table.

``BucketMap`` hashes every key with :func:`~.strategies.hash_key`, integers as
their decimal text, so ``42`` and ``"42"`` share a bucket and SQL can compute
a row's bucket (see :mod:`.dialect`). The table is saved as JSON
(``save``/``load``) or in a database table (``save_db``/``load_db``, see
:mod:`.map_store`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .strategies import check_count, hash_key, key_bytes

if TYPE_CHECKING:
    from ..pool import Pool
    from ..replicas import ReplicaSet

__all__ = ["MAX_BUCKETS", "BucketMap"]

MAX_BUCKETS = 1 << 20
"""The most buckets a map may have: every instance holds the whole table in
memory and the control database stores it as one JSON document."""


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

    __slots__ = ("_assignment", "_derived_from", "_stored", "buckets", "shard_count", "version")

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
        if buckets > MAX_BUCKETS:
            raise ConfigError(
                f"buckets={buckets} exceeds {MAX_BUCKETS}: every instance holds the whole "
                "map and the control database stores it as one document; a few thousand "
                "buckets (default 1024) spread keys finely enough"
            )
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ConfigError(f"version={version!r} must be a non-negative integer")
        if shards is not None:
            check_count("shards", shards)
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
        self._derived_from: tuple[int, str] | None = None
        self._stored = False

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
            data = str(key).encode() if type(key) is int else key_bytes(key)
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

    @property
    def digest(self) -> str:
        """A short hash of the shard count and assignment: which map this is, not its version."""
        data = json.dumps([self.shard_count, self._assignment], separators=(",", ":"))
        return hashlib.sha256(data.encode()).hexdigest()[:16]

    @property
    def derived_from(self) -> tuple[int, str] | None:
        """``(version, digest)`` of the map ``reassign``/``rebalance`` derived this one from.

        None for a map built directly.

        ``save_db`` stores a derived map only while the table still holds that
        map (compare-and-set), so a map derived from an old version cannot undo
        a move that was stored since.
        """
        return self._derived_from

    def _child(self, table: Sequence[int], shards: int) -> BucketMap:
        child = BucketMap(self.buckets, table, shards=shards, version=self.version + 1)
        # A chain of changes not saved in between still derives from the stored map.
        if self._stored or self._derived_from is None:
            child._derived_from = (self.version, self.digest)
        else:
            child._derived_from = self._derived_from
        return child

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
        return self._child(
            table, self.shard_count if shards is None else max(shards, self.shard_count)
        )

    def rebalance(self, shards: int) -> BucketMap:
        """A new map over ``shards`` shards that moves as few buckets as possible.

        Each shard ends with ``buckets // shards`` or one more bucket; the
        buckets that move are taken from the fullest shards, highest first.
        Shrinking (``shards < shard_count``) empties the removed shards.
        """
        check_count("shards", shards)
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
        return self._child(table, shards)

    # -- JSON ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """``{"format": "scalekit.bucketmap/1", "version", "buckets", "shards", "assignment"}``.

        A derived map also carries ``"derived_from": [version, digest]``.
        """
        data: dict[str, Any] = {
            "format": "scalekit.bucketmap/1",
            "version": self.version,
            "buckets": self.buckets,
            "shards": self.shard_count,
            "assignment": list(self._assignment),
        }
        if self._derived_from is not None:
            data["derived_from"] = list(self._derived_from)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BucketMap:
        """The inverse of ``to_dict``.

        Raises:
            ConfigError: the data is not a scalekit bucket map.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"not a scalekit bucket map (a JSON {type(data).__name__}); expected an object "
                "with format 'scalekit.bucketmap/1' as written by BucketMap.save()"
            )
        if data.get("format") != "scalekit.bucketmap/1":
            raise ConfigError(
                f"not a scalekit bucket map (format={data.get('format')!r}); expected "
                "'scalekit.bucketmap/1' as written by BucketMap.save()"
            )
        try:
            bucket_map = cls(
                int(data["buckets"]),
                [int(shard) for shard in data["assignment"]],
                shards=int(data["shards"]),
                version=int(data["version"]),
            )
            if data.get("derived_from") is not None:
                version, digest = data["derived_from"]
                bucket_map._derived_from = (int(version), str(digest))
            return bucket_map
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"bad bucket map data: {exc!r}") from exc

    def to_json(self) -> str:
        """The map as JSON text."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> BucketMap:
        """A map from ``to_json`` text.

        Raises:
            ConfigError: the text is not JSON, or not a scalekit bucket map.
        """
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"not a scalekit bucket map: not JSON ({exc})") from None
        return cls.from_dict(data)

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
    def ensure_table(db: Pool | ReplicaSet, table: str | None = None) -> None:
        """Create the map table if it is missing (see :class:`.map_store.MapStore`)."""
        from .map_store import MapStore

        MapStore(db, table).ensure_table()

    def save_db(self, db: Pool | ReplicaSet, table: str | None = None) -> None:
        """Store the map in a database table (created if missing): compare-and-set.

        An empty table takes any map; otherwise the table must still hold the
        map this one was derived from (``derived_from``), or this very map.

        Raises:
            ConfigError: the table holds another map (a move or another save
                happened since this map was derived): load it, change it, save.
        """
        from .map_store import MapStore

        MapStore(db, table).save(self)

    @classmethod
    def load_db(cls, db: Pool | ReplicaSet, table: str | None = None) -> BucketMap:
        """Read the map from its database table (on the primary).

        Raises:
            ConfigError: the table is empty or inconsistent.
        """
        from .map_store import MapStore

        return MapStore(db, table).load()

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
