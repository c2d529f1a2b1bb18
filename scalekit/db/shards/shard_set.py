"""``ShardSet``: one ``ReplicaSet`` per shard and the strategy that picks one per key."""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from ... import events
from ..._clock import Clock, get_clock
from ..errors import BucketMoved, ConfigError
from ..pool import Cursor, Params, Result, Row
from ..replicas import ReplicaSet
from . import fence
from .bucket_map import BucketMap
from .dialect import identifier
from .fence import FENCE_TABLE, Fenced, FenceState
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
        self.fence_table = identifier(fence_table)
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
                guarded = fence.guard(fn, replica_set.primary, bucket, self.fence_table)
                return replica_set.transaction(guarded, retries=retries, key=key)
            except Fenced as fenced:
                if events.bus.has_listeners(events.DbRouting):
                    events.emit(events.DbRouting(replica_set.name, f"bucket_{fenced.state}",
                                                 f"bucket {bucket}", index))  # fmt: skip
                if fenced.state is FenceState.MOVED:
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

    def _ensure_fence(self, index: int) -> None:
        if index in self._fences_ready:
            return
        fence.ensure_fence_table(self.shards[index].primary, self.fence_table)
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
