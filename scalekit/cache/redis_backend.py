"""The Redis cache backend (standalone, Sentinel, Cluster): Lua scripts, one round trip a lookup.

Absent version counters are created at a random epoch (see
:mod:`scalekit.cache.backends`), so a lost counter never repeats a value.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any, Protocol, cast

import structlog

from scalekit import _redis, events
from scalekit._breaker import BreakerState, CircuitBreaker, CircuitOpen
from scalekit._clock import Clock
from scalekit._extras import require
from scalekit._prefetch import Prefetch
from scalekit.cache.errors import CacheBackendError, CacheConfigError, CacheUnavailable
from scalekit.cache.keys import EntryKeys
from scalekit.cache.pipe import ScriptPipe, supports_pipe
from scalekit.cache.protocol import Lookup, join_versions

__all__ = ["COUNTER_TTL", "RedisCache"]

_logger = structlog.get_logger("scalekit.cache")

COUNTER_TTL = 24 * 3600.0
"""Seconds a Redis version counter lives at least once created; storing an entry
under it extends it to the entry's lifetime. An expired counter only costs misses."""


def _epoch() -> int:
    """A random starting value for a created Redis counter: far from the small values
    ``INCR`` gives and from each other, with room for 2**61 increments."""
    return 2**40 + secrets.randbelow(2**61)


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
            current = join_versions([ordered.get(key) for key in (*same, *other)])
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
