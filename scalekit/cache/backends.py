"""Where cache entries live: Redis (standalone, Sentinel, Cluster) or memory.

The middleware decides *what* to cache; a backend only knows *how* entries,
tag versions and fill locks are stored. Every backend answers a lookup (the
entry, the current versions of its tags, and optionally the fill lock) in one
round trip, and invalidates a tag by bumping its version counter: never KEYS,
never SCAN, whatever the number of entries.

A version counter that is absent (never used, expired, evicted under memory
pressure, lost in a failover) is created with a value it never held before
(a random epoch on Redis, a process-wide sequence in memory), never read as
``0``: an entry records the exact values it was stored under, so an entry
stored before a lost counter's last invalidation can never become current.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import secrets
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol, cast, runtime_checkable

import structlog

from scalekit import _redis, events
from scalekit._breaker import BreakerState, CircuitBreaker, CircuitOpen
from scalekit._clock import Clock, get_clock
from scalekit._extras import require
from scalekit._prefetch import Prefetch
from scalekit.cache.errors import CacheBackendError, CacheConfigError, CacheUnavailable
from scalekit.cache.keys import EntryKeys
from scalekit.cache.pipe import ScriptPipe, supports_pipe

__all__ = ["CacheBackend", "Lookup", "MemoryCache", "RedisCache"]

_logger = structlog.get_logger("scalekit.cache")

COUNTER_TTL = 24 * 3600.0
"""Seconds a Redis version counter lives at least once created; storing an entry
under it extends it to the entry's lifetime. An expired counter only costs misses."""


def _epoch() -> int:
    """A random starting value for a created Redis counter: far from the small values
    ``INCR`` gives and from each other, with room for 2**61 increments."""
    return 2**40 + secrets.randbelow(2**61)


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a backend found for a key.

    Attributes:
        data: the encoded entry, or ``None``.
        fresh_until: wall-clock seconds until which ``data`` is fresh.
        entry_versions: the tag versions ``data`` was computed under.
        versions: the current versions of the request's tags (comma-joined).
        marker: the Vary names stored at the base key, if any.
        final: ``False`` when ``marker`` names other Vary headers than the
            lookup assumed: look up again with them.
        lock_token: set when this lookup took the fill lock.
    """

    data: bytes | None
    fresh_until: float
    entry_versions: str | None
    versions: str
    marker: str | None
    final: bool
    lock_token: str | None

    @property
    def usable(self) -> bool:
        """An entry exists and no tag of it was invalidated since it was computed."""
        return self.data is not None and self.entry_versions == self.versions


@runtime_checkable
class CacheBackend(Protocol):
    """The storage seam of :class:`~scalekit.cache.CacheMiddleware`."""

    async def lookup(
        self,
        keys: EntryKeys,
        tags: Sequence[str],
        *,
        now: float,
        lock_ttl: float | None,
    ) -> Lookup:
        """Read an entry and its tags' versions; take the fill lock if asked and not fresh."""
        ...

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
        """Store unless a tag was invalidated since ``versions`` were read; release the lock."""
        ...

    async def release(self, keys: EntryKeys, lock_token: str) -> None:
        """Release a fill lock this process holds."""
        ...

    async def invalidate(self, *tags: str) -> None:
        """Make every entry depending on one of ``tags`` a miss (one counter bump per tag).

        Raises:
            CacheBackendError: the invalidation may not have happened.
        """
        ...

    def invalidate_sync(self, *tags: str) -> None:
        """The thread-safe blocking twin of :meth:`invalidate`, for worker threads."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def _joined(versions: Sequence[int | bytes | str | None]) -> str:
    return ",".join(
        "0" if version is None else version.decode() if isinstance(version, bytes) else str(version)
        for version in versions
    )


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
        return None if None in versions else _joined(versions)

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


def _script(name: str) -> str:
    return resources.files("scalekit.cache").joinpath(f"lua/{name}.lua").read_text("utf-8")


def _number(value: bytes | str | None) -> float:
    """A number the script returned; 0 for anything else (a foreign or corrupt field)."""
    try:
        return float(value or 0)
    except ValueError:
        return 0.0


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


class _ClusterClient(Protocol):
    def mget_nonatomic(self, keys: list[str]) -> Awaitable[list[bytes | None]]: ...


class RedisCache:
    """A Redis backend: a hit is one Lua call (one round trip), on Cluster too.

    An entry, its fill lock and its first tag's version counter share a hash
    tag (derived from the rule's first tag), so they live in one Cluster
    slot. Versions of further tags in other slots are read with one extra
    round trip per slot, in parallel.

    A version counter that is absent when read or invalidated is created with
    a random epoch (in the same Lua call), not read as ``0``: with an
    ``allkeys-*`` ``maxmemory-policy``, an operator's ``DEL`` or a failover
    that loses it, the entries stored under its earlier life are misses. A
    counter lives at least :data:`COUNTER_TTL` and as long as the entries
    stored under it (Cluster: under it and in its slot).

    Errors and timeouts raise :class:`CacheBackendError` (the middleware
    bypasses the cache); after ``failure_threshold`` consecutive errors the
    circuit breaker skips Redis for ``cooldown`` seconds
    (:class:`CacheUnavailable`). Invalidations always try Redis and raise
    when they fail.

    Args:
        client: an asyncio redis-py client (standalone, Sentinel or Cluster).
        sync_client: the blocking twin for :meth:`invalidate_sync` (optional).
        prefix: prepended to every key.
        breaker: the circuit breaker (default: 5 failures, 5 s cool-down).
        clock: the clock the breaker reads, when no breaker is given.
    """

    def __init__(
        self,
        client: _redis.AsyncRedisClient,
        *,
        sync_client: _redis.SyncRedisClient | None = None,
        prefix: str = "scalekit:cache:",
        breaker: CircuitBreaker | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.client = client
        self.sync_client = sync_client
        self.prefix = prefix
        self.breaker = breaker or CircuitBreaker(name="cache", clock=clock)
        self.breaker.set_probe(self._ping)
        self.calls = 0
        """Calls that reached (or tried to reach) Redis."""
        self.errors = 0
        """Calls that failed."""
        self._errors: tuple[type[BaseException], ...] = _redis.redis_errors()
        self._cluster = type(client).__name__ == "RedisCluster"
        self._lookup = client.register_script(_script("lookup"))
        # a hit's one round trip on a held connection (not on Cluster: it routes by slot)
        self._lookup_pipe = (
            ScriptPipe(client, _script("lookup"))
            if not self._cluster and supports_pipe(client)
            else None
        )
        self._store = client.register_script(_script("store"))
        self._release = client.register_script(_script("release"))
        self._versions = client.register_script(_script("versions"))
        self._invalidate_source = _script("invalidate")
        self._sync_lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "scalekit:cache:",
        failure_threshold: int = 5,
        cooldown: float = 5.0,
        clock: Clock | None = None,
        socket_timeout: float | None = _redis.DEFAULT_SOCKET_TIMEOUT,
        socket_connect_timeout: float | None = _redis.DEFAULT_CONNECT_TIMEOUT,
        **client_options: Any,
    ) -> RedisCache:
        """A backend for ``redis://``, ``redis+sentinel://`` or ``redis+cluster://`` URLs.

        Raises:
            ValueError: the URL is malformed.
            MissingExtraError: redis-py is missing (``pip install "scalekit[redis]"``).
        """
        options = dict(
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
            **client_options,
        )
        client = _redis.from_url(url, **options)
        backend = cls(
            client,
            prefix=prefix,
            breaker=CircuitBreaker(
                failure_threshold=failure_threshold, cooldown=cooldown, name="cache", clock=clock
            ),
        )
        backend._sync_url = (url, options)
        return backend

    _sync_url: tuple[str, dict[str, Any]] | None = None

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _tag_key(self, tag: str) -> str:
        return f"{self.prefix}{_redis.hash_tag(tag)}:v:{tag}"

    def _split_tags(self, keys: EntryKeys, tags: Sequence[str]) -> tuple[list[str], list[str]]:
        """Tag version keys in the entry's slot (read inside Lua) and in other slots."""
        version_keys = [self._tag_key(tag) for tag in tags]
        if not self._cluster:
            return version_keys, []
        slot = _key_slot(self._key(keys.base))
        same = [key for key in version_keys if _key_slot(key) == slot]
        return same, [key for key in version_keys if _key_slot(key) != slot]

    async def _call(
        self, operation: str, call: Callable[[], Awaitable[Any]], *, gate: bool = True
    ) -> Any:
        # ``call`` makes the round trip only once the breaker admitted it, so
        # nothing is scheduled (or left to close) when the breaker refuses.
        try:
            with self.breaker.guard(failures=self._errors, force=not gate):
                self.calls += 1
                try:
                    return await call()
                except self._errors as exc:
                    self.errors += 1
                    error = f"{type(exc).__name__}: {exc}"
                    events.emit(events.BackendError("cache", operation, error))
                    _logger.warning("redis cache call failed", operation=operation, error=error)
                    raise
        except CircuitOpen:
            raise CacheUnavailable(f"Redis cache skipped for a cool-down ({operation})") from None
        except self._errors as exc:
            raise CacheBackendError(f"Redis cache {operation} failed: {exc}") from exc

    async def _ping(self) -> None:
        await self.client.ping()

    async def _other_slots(self, keys: list[str], epoch: int) -> list[bytes]:
        """Cluster: the versions of counters outside the entry's slot, one MGET per slot.

        Absent ones are then created as the lookup script creates its own (one more
        call per slot, only when a counter is absent: a new tag, or a lost counter).
        """
        found = await cast(_ClusterClient, self.client).mget_nonatomic(keys)
        versions = dict(zip(keys, found, strict=True))
        slots: dict[int, list[str]] = {}
        for key, version in versions.items():
            if version is None:
                slots.setdefault(_key_slot(key), []).append(key)
        if slots:
            versions.update(await self._create(slots, epoch))
        return [cast(bytes, versions[key]) for key in keys]

    async def _create(self, slots: dict[int, list[str]], epoch: int) -> dict[str, bytes]:
        ttl = int(COUNTER_TTL * 1000)
        found = await asyncio.gather(
            *(self._versions(keys=group, args=[epoch, ttl]) for group in slots.values())
        )
        versions: dict[str, bytes] = {}
        for group, values in zip(slots.values(), found, strict=True):
            versions.update(zip(group, values, strict=True))
        return versions

    def _background(self, work: Awaitable[None]) -> None:
        async def quietly() -> None:
            with contextlib.suppress(CacheBackendError, CacheUnavailable):
                await work

        task = asyncio.ensure_future(quietly())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _script_keys(self, keys: EntryKeys, same: list[str]) -> list[str]:
        return [self._key(keys.base), self._key(keys.variant), self._key(keys.lock), *same]

    def prefetch(self, keys: EntryKeys, tags: Sequence[str], *, now: float) -> Prefetch | None:
        """A lookup of ``keys`` that takes no fill lock, for another sender to carry.

        None on Cluster, when a tag's counter lives in another slot, without a
        held connection, or while the breaker is not closed (the cache then
        degrades on its own, as without a prefetch).
        """
        pipe = self._lookup_pipe
        if pipe is None or self.breaker.state is not BreakerState.CLOSED:
            return None
        same, other = self._split_tags(keys, tags)
        if other:
            return None
        args = [int(now * 1000), "", 1, ",".join(keys.vary), _epoch(), int(COUNTER_TTL * 1000)]
        return Prefetch(pipe.script, pipe.sha, self._script_keys(keys, same), args)

    def prefetched(self, prefetch: Prefetch, keys: EntryKeys, tags: Sequence[str]) -> Lookup | None:
        """The answer of :meth:`prefetch` when it looked up these keys, else None."""
        same, other = self._split_tags(keys, tags)
        if other or not prefetch.answered or prefetch.keys != self._script_keys(keys, same):
            return None
        result = prefetch.reply
        if not isinstance(result, list) or len(result) < 6:
            return None
        return self._found(result, (result[4] or b"").decode(), None)

    def _found(self, result: list[Any], current: str, token: str | None) -> Lookup:
        data, fresh_until, entry_versions, marker = result[:4]
        return Lookup(
            data=data,
            fresh_until=_number(fresh_until) / 1000,
            entry_versions=_text(entry_versions),
            versions=current,
            marker=_text(marker),
            final=bool(result[5]),
            lock_token=token if len(result) > 6 and result[6] else None,
        )

    async def lookup(
        self, keys: EntryKeys, tags: Sequence[str], *, now: float, lock_ttl: float | None
    ) -> Lookup:
        same, other = self._split_tags(keys, tags)
        token = uuid.uuid4().hex if lock_ttl is not None else ""
        epoch = _epoch()
        args = [
            int(now * 1000),
            token,
            int((lock_ttl or 0) * 1000) or 1,
            ",".join(keys.vary),
            epoch,
            int(COUNTER_TTL * 1000),
        ]
        script_keys = self._script_keys(keys, same)
        if other:

            async def both() -> tuple[Any, Any]:
                return await asyncio.gather(
                    self._lookup(keys=script_keys, args=args),
                    self._other_slots(other, epoch),
                )

            result, extra = await self._call("lookup", both)
            ordered = dict(zip(same, (result[4] or b"").split(b","), strict=False))
            ordered.update(zip(other, extra, strict=True))
            current = _joined([ordered.get(key) for key in (*same, *other)])
        else:
            pipe = self._lookup_pipe
            if pipe is not None:

                def orphaned(reply: Any) -> None:
                    # the caller was cancelled but the script ran: give back the fill lock
                    if token and len(reply) > 6 and reply[6]:
                        self._background(self.release(keys, token))

                result = await self._call(
                    "lookup", lambda: pipe.call(script_keys, args, orphaned=orphaned)
                )
            else:
                result = await self._call(
                    "lookup", lambda: self._lookup(keys=script_keys, args=args)
                )
            current = (result[4] or b"").decode()
        return self._found(result, current, token)

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
        same, _ = self._split_tags(keys, tags)
        marker = ",".join(keys.vary) if keys.variant != keys.base else ""
        stored = await self._call(
            "store",
            lambda: self._store(
                keys=[self._key(keys.base), self._key(keys.variant), self._key(keys.lock), *same],
                args=[
                    data,
                    int(fresh_until * 1000),
                    max(1, int(expire * 1000)),
                    versions,
                    lock_token or "",
                    marker,
                ],
            ),
        )
        return bool(stored)

    async def release(self, keys: EntryKeys, lock_token: str) -> None:
        await self._call(
            "release", lambda: self._release(keys=[self._key(keys.lock)], args=[lock_token])
        )

    async def invalidate(self, *tags: str) -> None:
        if not tags:
            return
        pipe = self.client.pipeline(transaction=False)
        self._bump(pipe, tags)
        await self._call("invalidate", pipe.execute, gate=False)

    def _bump(self, pipe: Any, tags: Sequence[str]) -> None:
        # EVAL, not a registered script: a pipeline would first ask SCRIPT EXISTS (a round trip)
        ttl = int(COUNTER_TTL * 1000)
        for tag in tags:
            pipe.eval(self._invalidate_source, 1, self._tag_key(tag), _epoch(), ttl)

    def invalidate_sync(self, *tags: str) -> None:
        """Blocking, thread-safe :meth:`invalidate` for code in worker threads.

        Uses ``sync_client``, or a blocking client made from the URL given
        to :meth:`from_url`.

        Raises:
            CacheBackendError: Redis failed; the invalidation may not have happened.
            CacheConfigError: no sync client and no URL to make one.
        """
        if not tags:
            return
        client = self._sync()
        self.calls += 1
        try:
            with self.breaker.guard(failures=self._errors, force=True):
                pipe = client.pipeline(transaction=False)
                self._bump(pipe, tags)
                pipe.execute()
        except self._errors as exc:
            self.errors += 1
            events.emit(events.BackendError("cache", "invalidate", f"{type(exc).__name__}: {exc}"))
            raise CacheBackendError(f"Redis cache invalidate failed: {exc}") from exc

    def _sync(self) -> Any:
        with self._sync_lock:
            if self.sync_client is None:
                if self._sync_url is None:
                    raise CacheConfigError(
                        "RedisCache.invalidate_sync needs a blocking client: pass sync_client= "
                        "or build the backend with RedisCache.from_url(url)"
                    )
                url, options = self._sync_url
                self.sync_client = _redis.sync_from_url(url, **options)
            return self.sync_client

    async def aclose(self) -> None:
        """Stop the breaker's probe and close the Redis clients."""
        await self.breaker.aclose()
        if self._lookup_pipe is not None:
            await self._lookup_pipe.aclose()
        await self.client.aclose()
        if self.sync_client is not None:
            self.sync_client.close()

    def __repr__(self) -> str:
        return f"RedisCache(prefix={self.prefix!r}, breaker={self.breaker!r})"


def _key_slot(key: str) -> int:
    crc = require("redis.crc", "redis")
    return int(crc.key_slot(key.encode()))
