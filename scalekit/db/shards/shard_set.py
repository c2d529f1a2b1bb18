"""``ShardSet``: one ``ReplicaSet`` per shard and the strategy that picks one per key."""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, overload

from ... import events
from ..._clock import Clock, get_clock
from .. import _fork
from .._scope import run_in_thread
from ..errors import ConfigError
from ..pool import Cursor, Params, Result, Row
from ..replicas import ReplicaSet
from . import call_order, fence
from .bucket_map import BucketMap
from .dialect import identifier
from .fence import FENCE_TABLE, Fenced
from .fence_retry import FenceRetry
from .freshness import DEFAULT_REFRESH_INTERVAL, MapFollower
from .map_store import MapStore
from .strategies import JumpHash, ShardStrategy

__all__ = ["ShardRow", "ShardSet"]

T = TypeVar("T")


class ShardRow(dict[str, Any]):
    """A row from ``ShardSet.query_all``: a plain dict plus the ``shard`` it came from."""

    __slots__ = ("shard",)

    def __init__(self, shard: int, row: Mapping[str, Any]) -> None:
        super().__init__(row)
        self.shard = shard

    def __repr__(self) -> str:
        return f"ShardRow(shard={self.shard}, {dict.__repr__(self)})"


class Route:
    """Where one attempt of a statement runs: the shard, and the bucket if it is guarded."""

    __slots__ = ("bucket", "index", "replica_set")

    def __init__(self, index: int, replica_set: ReplicaSet, bucket: int | None) -> None:
        self.index = index
        self.replica_set = replica_set
        self.bucket = bucket


class ShardSet:
    """Shards (each a ``ReplicaSet``) and the strategy that picks one per key.

    ``ShardSet([db0, db1, db2, db3], strategy=JumpHash(4))``. Statements run
    through the set (``query``, ``execute``, ``transaction``, ``query_all``
    and their ``a``-prefixed async twins) take the shard key as ``key=``, as
    ``ReplicaSet``'s do, and report their shard index in ``DbQuery.shard`` /
    ``DbRouting.shard``.

    With a ``BucketMap``, ``execute`` and ``transaction`` are *guarded*: in
    the same transaction they first read the bucket's fence row on the shard
    (``SELECT ... LOCK IN SHARE MODE``, one more statement). A bucket frozen by
    a move makes them wait (up to ``freeze_timeout``); one that has moved
    away makes them reload the map and run on the new shard. Writes sent
    straight to ``for_key(key)`` are not guarded.

    With a ``map_store`` (or ``reload``), the set keeps its map fresh: every
    ``refresh_interval`` seconds the next statement first reads the stored
    version (one row) and reloads the map if it changed. See
    :mod:`scalekit.db.shards.freshness` for the bound this gives.

    Args:
        shards: one ``ReplicaSet`` per shard, in shard order.
        strategy: ``JumpHash``, ``Modulo``, ``BucketMap`` or any
            ``ShardStrategy``; default the map in ``map_store``, else
            ``JumpHash(len(shards))``.
        map_store: where the ``BucketMap`` is stored; polled for its version.
        reload: returns the current strategy; without ``map_store``, called to
            poll and when a guarded write finds its bucket moved.
        refresh_interval: seconds between polls of the stored map; None never
            polls (then only fence hits reload, and reads can stay stale).
        freeze_timeout: seconds a guarded write waits for a frozen bucket.
        fence_table: the per-shard fence table name.
        clock: the clock for ``refresh_interval`` and ``freeze_timeout``.

    Raises:
        ConfigError: the strategy's shard count is not ``len(shards)``.
    """

    def __init__(
        self,
        shards: Sequence[ReplicaSet],
        strategy: ShardStrategy | None = None,
        *,
        map_store: MapStore | None = None,
        reload: Callable[[], ShardStrategy] | None = None,
        refresh_interval: float | None = DEFAULT_REFRESH_INTERVAL,
        freeze_timeout: float = 30.0,
        fence_table: str = FENCE_TABLE,
        clock: Clock | None = None,
    ) -> None:
        self.shards: tuple[ReplicaSet, ...] = tuple(shards)
        if not self.shards:
            raise ConfigError("ShardSet needs at least one shard")
        if not freeze_timeout >= 0:  # NaN too: a frozen bucket would be waited for forever
            raise ConfigError(f"freeze_timeout={freeze_timeout!r} must not be negative")
        if map_store is not None and reload is None:
            reload = map_store.load
        if strategy is None:
            strategy = map_store.load() if map_store is not None else JumpHash(len(self.shards))
        self._check(strategy)
        self.freeze_timeout = freeze_timeout
        self.fence_table = identifier(fence_table)
        self.clock = clock or get_clock()
        self._map = MapFollower(
            strategy,
            load=reload,
            version=map_store.version if map_store is not None else None,
            interval=refresh_interval,
            clock=self.clock,
            check=self._check,
        )
        self._fences_ready: set[int] = set()
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        _fork.register(self._after_fork)

    def _after_fork(self) -> None:
        """In a forked child: the parent's fan-out threads do not exist here (a task
        submitted to their executor would wait forever), and its locks may be held."""
        self._lock = threading.Lock()
        self._executor = None
        self._map.after_fork()

    def _check(self, strategy: ShardStrategy) -> None:
        if strategy.shard_count != len(self.shards):
            raise ConfigError(
                f"{strategy!r} spreads keys over {strategy.shard_count} shards but the "
                f"ShardSet has {len(self.shards)}: give one ReplicaSet per shard"
            )

    @property
    def strategy(self) -> ShardStrategy:
        """The strategy routing now (without polling; statements poll when due)."""
        return self._map.strategy

    @property
    def follows(self) -> bool:
        """Whether the set can reload its map (``map_store`` or ``reload`` given)."""
        return self._map.follows

    @property
    def map_polls(self) -> int:
        """How many times the set has polled its map source."""
        return self._map.polls

    def __len__(self) -> int:
        return len(self.shards)

    def shard_for(self, key: Any) -> int:
        """The index of the shard that holds ``key`` (by a fresh map)."""
        return self._map.current().shard_for(key)

    def for_key(self, key: Any) -> ReplicaSet:
        """The ``ReplicaSet`` of the shard that holds ``key`` (by a fresh map)."""
        return self.shards[self._map.current().shard_for(key)]

    @contextlib.contextmanager
    def using(self, key: Any) -> Iterator[ReplicaSet]:
        """``with shards.using(user_id) as db:`` — the key's ``ReplicaSet``, events tagged.

        Statements run on ``db`` inside the block report the shard index in
        their events, as statements run through the set do.
        """
        index = self._map.current().shard_for(key)
        token = events.current_shard.set(index)
        try:
            yield self.shards[index]
        finally:
            events.current_shard.reset(token)

    def reload(self) -> ShardStrategy:
        """Load the stored map (or call ``reload``) now and route by it.

        Raises:
            ConfigError: no ``map_store`` or ``reload`` was given, or the new
                strategy's shard count does not match.
        """
        return self._map.reload()

    def _route(self, key: Any, strategy: ShardStrategy) -> Route:
        index = strategy.shard_for(key)
        bucket = strategy.bucket_for(key) if isinstance(strategy, BucketMap) else None
        if bucket is not None and index not in self._fences_ready:
            token = events.current_shard.set(index)
            try:
                fence.ensure_fence_table(self.shards[index].primary, self.fence_table)
                fence.check_shard(self.shards[index].primary, index, self.fence_table)
            finally:
                events.current_shard.reset(token)
            self._fences_ready.add(index)
        return Route(index, self.shards[index], bucket)

    def _guard(self, fn: Callable[[Cursor], T], route: Route) -> Callable[[Cursor], T]:
        if route.bucket is None:
            return fn
        return fence.guard(fn, route.replica_set.primary, route.bucket, self.fence_table)

    # -- statements on one shard ---------------------------------------------
    @overload
    def query(
        self,
        sql: str,
        params: Params = None,
        *,
        key: Any,
        primary: bool = False,
        after: str | None = None,
    ) -> list[Row]: ...

    @overload
    def query(
        self,
        key: Any,
        sql: str,
        params: Params = None,
        /,
        *,
        primary: bool = False,
        after: str | None = None,
    ) -> list[Row]: ...

    def query(self, *args: Any, **kwargs: Any) -> list[Row]:
        """``ReplicaSet.query(sql, params, key=key)`` on the key's shard.

        ``key`` picks the shard and is the read-your-writes key. The old order
        ``query(key, sql, params)`` still works, with a ``DeprecationWarning``.
        """
        key, sql, params, options = call_order.statement("query", args, kwargs)
        index = self._map.current().shard_for(key)
        token = events.current_shard.set(index)
        try:
            return self.shards[index].query(sql, params, key=key, **options)
        finally:
            events.current_shard.reset(token)

    @overload
    def execute(
        self, sql: str, params: Params = None, *, key: Any, returning: bool = False
    ) -> Result: ...

    @overload
    def execute(
        self, key: Any, sql: str, params: Params = None, /, *, returning: bool = False
    ) -> Result: ...

    def execute(self, *args: Any, **kwargs: Any) -> Result:
        """One write on the key's shard; guarded by the bucket fence under a ``BucketMap``.

        ``returning=True`` keeps the rows of ``INSERT … RETURNING`` in
        ``Result.rows``, as on ``ReplicaSet``. The old order ``execute(key,
        sql, params)`` still works, with a ``DeprecationWarning``.
        """
        key, sql, params, options = call_order.statement("execute", args, kwargs)
        returning = call_order.returning("execute", options)
        if not isinstance(self._map.current(), BucketMap):
            index = self.strategy.shard_for(key)
            token = events.current_shard.set(index)
            try:
                return self.shards[index].execute(sql, params, key=key, returning=returning)
            finally:
                events.current_shard.reset(token)
        return self._transact(key, _writer(sql, params, returning), 0)

    @overload
    def transaction(self, fn: Callable[[Cursor], T], *, key: Any, retries: int = 0) -> T: ...

    @overload
    def transaction(self, key: Any, fn: Callable[[Cursor], T], /, *, retries: int = 0) -> T: ...

    def transaction(self, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(cursor)`` in a transaction on the key's shard and return its result.

        Under a ``BucketMap`` the transaction first checks the bucket's fence:
        frozen → roll back, wait and run again; moved → reload the map and
        run on the new shard. ``retries`` is passed to ``ReplicaSet.transaction``
        (deadlocks and lock wait timeouts). The old order ``transaction(key,
        fn)`` still works, with a ``DeprecationWarning``.

        Raises:
            BucketMoved: still frozen after ``freeze_timeout``, or moved and no
                ``map_store``/``reload`` was given.
        """
        key, fn, retries = call_order.transaction("transaction", args, kwargs)
        return self._transact(key, fn, retries)

    def _transact(self, key: Any, fn: Callable[[Cursor], T], retries: int) -> T:
        retry = FenceRetry(self)
        while True:
            route = self._route(key, self._map.current())
            token = events.current_shard.set(route.index)
            try:
                guarded = self._guard(fn, route)
                return route.replica_set.transaction(guarded, retries=retries, key=key)
            except Fenced as fenced:
                delay = retry.after(fenced, route)
            finally:
                events.current_shard.reset(token)
            time.sleep(delay)
            if self.follows:  # the move may have flipped the map while we waited
                self._map.reload()

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
    async def _current(self) -> ShardStrategy:
        """The strategy to route by; a due poll runs in a worker thread."""
        if self._map.due():
            return await run_in_thread(self._map.current)
        return self._map.strategy

    @overload
    async def aquery(
        self,
        sql: str,
        params: Params = None,
        *,
        key: Any,
        primary: bool = False,
        after: str | None = None,
    ) -> list[Row]: ...

    @overload
    async def aquery(
        self,
        key: Any,
        sql: str,
        params: Params = None,
        /,
        *,
        primary: bool = False,
        after: str | None = None,
    ) -> list[Row]: ...

    async def aquery(self, *args: Any, **kwargs: Any) -> list[Row]:
        """``query`` in a worker thread, so the event loop never blocks."""
        key, sql, params, options = call_order.statement("aquery", args, kwargs)
        index = (await self._current()).shard_for(key)
        token = events.current_shard.set(index)
        try:
            return await self.shards[index].aquery(sql, params, key=key, **options)
        finally:
            events.current_shard.reset(token)

    @overload
    async def aexecute(
        self, sql: str, params: Params = None, *, key: Any, returning: bool = False
    ) -> Result: ...

    @overload
    async def aexecute(
        self, key: Any, sql: str, params: Params = None, /, *, returning: bool = False
    ) -> Result: ...

    async def aexecute(self, *args: Any, **kwargs: Any) -> Result:
        """``execute`` in a worker thread; reads later in the caller's context see the write."""
        key, sql, params, options = call_order.statement("aexecute", args, kwargs)
        returning = call_order.returning("aexecute", options)
        strategy = await self._current()
        if not isinstance(strategy, BucketMap):
            index = strategy.shard_for(key)
            token = events.current_shard.set(index)
            try:
                return await self.shards[index].aexecute(sql, params, key=key, returning=returning)
            finally:
                events.current_shard.reset(token)
        return await self._atransact(key, _writer(sql, params, returning), 0)

    @overload
    async def atransaction(self, fn: Callable[[Cursor], T], *, key: Any, retries: int = 0) -> T: ...

    @overload
    async def atransaction(
        self, key: Any, fn: Callable[[Cursor], T], /, *, retries: int = 0
    ) -> T: ...

    async def atransaction(self, *args: Any, **kwargs: Any) -> Any:
        """``transaction`` in a worker thread; reads later in the caller's context see it."""
        key, fn, retries = call_order.transaction("atransaction", args, kwargs)
        return await self._atransact(key, fn, retries)

    async def _atransact(self, key: Any, fn: Callable[[Cursor], T], retries: int) -> T:
        import anyio

        retry = FenceRetry(self)
        strategy = await self._current()
        while True:
            route = await run_in_thread(functools.partial(self._route, key, strategy))
            token = events.current_shard.set(route.index)
            try:
                guarded = self._guard(fn, route)
                # ReplicaSet.atransaction pins read-your-writes in this (the
                # caller's) context, not in the worker thread's copy.
                return await route.replica_set.atransaction(guarded, retries=retries, key=key)
            except Fenced as fenced:
                delay = retry.after(fenced, route)
            finally:
                events.current_shard.reset(token)
            await anyio.sleep(delay)
            if self.follows:  # the move may have flipped the map while we waited
                strategy = await run_in_thread(self._map.reload)

    async def aquery_all(self, sql: str, params: Params = None, **options: Any) -> list[ShardRow]:
        """``query_all`` from async code: the shards still run concurrently, off the loop."""
        return await run_in_thread(functools.partial(self.query_all, sql, params, **options))

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


def _writer(sql: str, params: Params, returning: bool) -> Callable[[Cursor], Result]:
    def write(cursor: Cursor) -> Result:
        return cursor.execute(sql, params, returning=returning)

    return write
