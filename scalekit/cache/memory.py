"""The in-process cache backend: a bounded LRU, the embedded default and the tests' backend."""

from __future__ import annotations

import collections
import itertools
import threading
import uuid
from collections.abc import Sequence
from typing import Any, cast

from scalekit._clock import Clock, get_clock
from scalekit.cache.errors import CacheConfigError
from scalekit.cache.keys import EntryKeys
from scalekit.cache.protocol import Lookup, join_versions

__all__ = ["MemoryCache"]


class MemoryCache:
    """An in-process, bounded LRU backend: the embedded default and the tests' backend.

    The least recently used entries are dropped when there are more than
    ``max_entries`` or their bytes (bodies, headers and keys) exceed
    ``max_bytes``; an entry bigger than ``max_bytes`` alone is not stored.
    At most ``max_tags`` tag version counters are kept, least recently used
    dropped first. A dropped counter comes back with a value no counter of
    this backend ever held, so the entries stored under it are misses, never
    current again. Fill locks are dropped once expired.

    Args:
        max_entries: entries kept before the least recently used is dropped.
        max_bytes: bytes kept before the least recently used is dropped.
        max_tags: tag version counters kept before the least recently used is dropped.
        clock: the clock expiry reads (default: the process clock).

    Raises:
        CacheConfigError: ``max_entries``, ``max_bytes`` or ``max_tags`` < 1.
    """

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        max_tags: int = 100_000,
        clock: Clock | None = None,
    ) -> None:
        if max_entries < 1:
            raise CacheConfigError(f"MemoryCache max_entries must be >= 1, got {max_entries!r}")
        if max_bytes < 1:
            raise CacheConfigError(f"MemoryCache max_bytes must be >= 1, got {max_bytes!r}")
        if max_tags < 1:
            raise CacheConfigError(f"MemoryCache max_tags must be >= 1, got {max_tags!r}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_tags = max_tags
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (expires_at, size, fields), least recently used first
        self._entries: collections.OrderedDict[str, tuple[float, int, dict[str, Any]]] = (
            collections.OrderedDict()
        )
        self._bytes = 0
        # tag -> version, least recently used first; every version comes from one sequence,
        # so a dropped and re-created counter never takes a value it (or any) held before
        self._versions: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._sequence = itertools.count(1)
        # lock key -> (expires_at, token), oldest first: expired ones are pruned from the front
        self._locks: collections.OrderedDict[str, tuple[float, str]] = collections.OrderedDict()

    def _now(self) -> float:
        return (self._clock or get_clock()).time()

    @property
    def stored_bytes(self) -> int:
        """Bytes the stored entries take (bodies, headers and keys)."""
        return self._bytes

    def _drop(self, key: str) -> None:
        _, size, _ = self._entries.pop(key)
        self._bytes -= size

    def _get(self, key: str, now: float) -> dict[str, Any]:
        found = self._entries.get(key)
        if found is None:
            return {}
        if found[0] <= now:
            self._drop(key)
            return {}
        self._entries.move_to_end(key)
        return found[2]

    def _put(self, key: str, fields: dict[str, Any], expires_at: float) -> None:
        if key in self._entries:
            self._drop(key)
        size = len(key) + sum(len(value) for value in fields.values() if isinstance(value, bytes))
        self._entries[key] = (expires_at, size, fields)
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _version(self, tag: str, *, create: bool) -> int | None:
        version = self._versions.get(tag)
        if version is None and create:
            version = self._set_version(tag)
        elif version is not None:
            self._versions.move_to_end(tag)
        return version

    def _set_version(self, tag: str) -> int:
        version = self._versions[tag] = next(self._sequence)
        self._versions.move_to_end(tag)
        while len(self._versions) > self.max_tags:
            self._versions.popitem(last=False)
        return version

    def _current(self, tags: Sequence[str], *, create: bool = True) -> str | None:
        """The tags' versions, creating absent counters (``None`` if one is absent and not)."""
        versions = [self._version(tag, create=create) for tag in tags]
        return None if None in versions else join_versions(versions)

    def _take_lock(self, key: str, ttl: float, now: float) -> str | None:
        while self._locks:
            oldest = next(iter(self._locks))
            if self._locks[oldest][0] > now:
                break
            del self._locks[oldest]
        held = self._locks.get(key)
        if held is not None and held[0] > now:
            return None
        token = uuid.uuid4().hex
        self._locks[key] = (now + ttl, token)
        self._locks.move_to_end(key)
        return token

    def __len__(self) -> int:
        return len(self._entries)

    async def lookup(
        self, keys: EntryKeys, tags: Sequence[str], *, now: float, lock_ttl: float | None
    ) -> Lookup:
        with self._lock:
            clock_now = self._now()
            base = self._get(keys.base, clock_now)
            entry, final = base, True
            marker = base.get("m")
            if marker is not None:
                if marker == ",".join(keys.vary):
                    entry = self._get(keys.variant, clock_now)
                else:
                    entry, final = {}, False
            versions = cast(str, self._current(tags))
            data = entry.get("d")
            fresh = data is not None and entry["v"] == versions and entry["t"] >= now
            token = None
            if lock_ttl is not None and final and not fresh:
                token = self._take_lock(keys.lock, lock_ttl, clock_now)
            return Lookup(data, entry.get("t", 0.0), entry.get("v"), versions, marker, final, token)

    async def store(
        self,
        keys: EntryKeys,
        tags: Sequence[str],
        *,
        data: bytes,
        versions: str,
        fresh_until: float,
        expire: float,
        lock_token: str | None,
    ) -> bool:
        with self._lock:
            self._release(keys, lock_token)
            # a counter dropped since the lookup matches nothing: it may have been invalidated
            if self._current(tags, create=False) != versions:
                return False
            if len(keys.variant) + len(data) > self.max_bytes:
                return False
            expires_at = self._now() + expire
            if keys.variant != keys.base:
                self._put(keys.base, {"m": ",".join(keys.vary)}, expires_at)
            self._put(keys.variant, {"d": data, "t": fresh_until, "v": versions}, expires_at)
            return True

    def _release(self, keys: EntryKeys, lock_token: str | None) -> None:
        held = self._locks.get(keys.lock)
        if lock_token is not None and held is not None and held[1] == lock_token:
            del self._locks[keys.lock]

    async def release(self, keys: EntryKeys, lock_token: str) -> None:
        with self._lock:
            self._release(keys, lock_token)

    async def invalidate(self, *tags: str) -> None:
        self.invalidate_sync(*tags)

    def invalidate_sync(self, *tags: str) -> None:
        with self._lock:
            for tag in tags:
                self._set_version(tag)

    def clear(self) -> None:
        """Drop every entry (tag versions are kept, see the class docstring)."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self._locks.clear()

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return (
            f"MemoryCache(entries={len(self._entries)}, max_entries={self.max_entries}, "
            f"bytes={self._bytes}, max_bytes={self.max_bytes})"
        )
