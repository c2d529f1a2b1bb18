"""The Redis rate-limit backend: one Lua script call per check, batched on a held connection."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any, TypeVar

import structlog

from scalekit import events
from scalekit._breaker import BreakerState, CircuitBreaker, CircuitOpen
from scalekit._clock import Clock
from scalekit._extras import require
from scalekit._prefetch import Prefetch
from scalekit._redis import DEFAULT_SOCKET_TIMEOUT, AsyncRedisClient, from_url, redis_errors
from scalekit._resp import Batches, deliver, fail, read_replies
from scalekit.ratelimit.errors import RateLimitConfigError, RateLimitUnavailable
from scalekit.ratelimit.failover import SentinelFollower
from scalekit.ratelimit.protocol import LimitCheck, LimitResult, Verdict

__all__ = ["RedisRateLimitBackend"]

_logger = structlog.get_logger("scalekit.ratelimit")
_T = TypeVar("_T")
_Pending = tuple[list[str], list[Any], "asyncio.Future[Any]", Prefetch | None]


def _load_script() -> str:
    return resources.files("scalekit.ratelimit").joinpath("lua/check.lua").read_text("utf-8")


class RedisRateLimitBackend:
    """Counters in Redis (standalone, Sentinel or Cluster): one script call per check.

    A circuit breaker guards every round trip (a pipeline of many checks is
    one round trip, so one failure); while it is open, checks raise
    :class:`RateLimitUnavailable` without touching Redis, and a background
    ``PING`` per second closes it as soon as Redis answers.

    Args:
        url: a Redis URL (see :mod:`scalekit._redis_url`), or an existing asyncio
            client passed as ``client=``.
        client: use this redis-py asyncio client instead of building one.
        socket_timeout: seconds a call may take before it counts as a failure
            (default 0.25; the URL's ``?socket_timeout=`` wins).
        batching: send the checks issued in the same event-loop turn in one
            pipeline (each still one atomic script); not on Cluster.
        breaker: the circuit breaker (default: 5 failed round trips, 5 s cool-down).
        clock: the clock the default breaker reads and, when given, the windows
            too instead of Redis' ``TIME``: for tests, which then move windows
            by advancing it. Leave it out in production, so that every
            instance counts on Redis' one clock.
        failover_hold: on Sentinel, the longest checks wait while a failover
            is under way (see :mod:`scalekit.ratelimit.failover`), so that
            none lands on the master being replaced; ``0`` never waits.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: AsyncRedisClient | None = None,
        socket_timeout: float | None = DEFAULT_SOCKET_TIMEOUT,
        batching: bool = True,
        breaker: CircuitBreaker | None = None,
        clock: Clock | None = None,
        failover_hold: float = 5.0,
    ) -> None:
        if not failover_hold >= 0:
            raise RateLimitConfigError(f"failover_hold must be >= 0 seconds, got {failover_hold!r}")
        if client is None:
            if url is None:
                raise RateLimitConfigError("RedisRateLimitBackend needs a url or a client")
            client = from_url(url, socket_timeout=socket_timeout)
        self.breaker = breaker or CircuitBreaker(name="ratelimit", clock=clock)
        self._window_clock = clock
        self.breaker.set_probe(self._ping)
        # typed loosely inside: the sender also reaches the connection pool
        self._client: Any = client
        self._owns_client = url is not None
        self._script = _load_script()
        self._sha = hashlib.sha1(self._script.encode("utf-8")).hexdigest()
        self._errors = redis_errors()
        self._ready = False
        self._init_lock = asyncio.Lock()
        # redis-py's Cluster pipelines route differently; batch only elsewhere
        self._batching = batching and not hasattr(client, "get_nodes")
        self._batches: Batches[_Pending] = Batches(self._send)
        self._connection: Any = None
        exceptions = require("redis.exceptions", "redis")
        self._response_error: type[BaseException] = exceptions.ResponseError
        self._read_only: type[BaseException] = exceptions.ReadOnlyError
        self._no_script: type[BaseException] = exceptions.NoScriptError
        # On Sentinel: hold checks while a failover is under way and move the
        # held connection to the announced master (see failover.py).
        self._follower = SentinelFollower.for_client(client, hold_limit=failover_hold, clock=clock)
        self._switches_seen = 0

    @property
    def client(self) -> AsyncRedisClient:
        """The redis-py asyncio client."""
        client: AsyncRedisClient = self._client
        return client

    @property
    def sentinel_follower(self) -> SentinelFollower | None:
        """What follows the master through failovers, on Sentinel (else None)."""
        return self._follower

    @property
    def can_prefetch(self) -> bool:
        """Whether :meth:`check` can carry a cache lookup (batching, not on Sentinel)."""
        return self._batching and self._follower is None

    async def check(
        self,
        checks: Sequence[LimitCheck],
        at: float | None = None,
        *,
        prefetch: Prefetch | None = None,
    ) -> Verdict:
        """Run ``checks`` in one ``EVALSHA`` (``EVAL`` once after a restart or failover).

        ``prefetch`` (when :attr:`can_prefetch`) is sent in the same write,
        right after the checks; its reply is recorded on it, an error reply
        leaves it unanswered.

        Raises:
            RateLimitUnavailable: Redis failed or timed out.
        """
        keys = [check.key for check in checks]
        if at is None and self._window_clock is not None:
            at = self._window_clock.time()
        args: list[Any] = [len(checks), round(at * 1000) if at is not None else 0]
        for check in checks:
            args += [
                check.strategy.short,
                check.limit,
                check.window * 1000,
                check.cost,
                check.mode.value,
            ]
        try:
            if self._follower is not None:
                self._follower.start()
            if self._batching:
                raw = await self._batched(keys, args, prefetch)
            else:
                await self._follow_the_master()
                raw = await self._round_trip(self._run, keys, args)
        except CircuitOpen as exc:
            raise RateLimitUnavailable(f"Redis rate-limit check skipped: {exc}") from exc
        except self._errors as exc:
            raise RateLimitUnavailable(f"Redis rate-limit check failed: {exc!r}") from exc
        values = [int(value) for value in raw]
        results = tuple(
            LimitResult(values[i] == 1, values[i + 1], values[i + 2] / 1000)
            for i in range(2, len(values), 3)
        )
        return Verdict(values[0] == 1, values[1] / 1000, results)

    async def _round_trip(self, call: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        # The one place a round trip meets the breaker: one failure per round
        # trip whatever number of checks it carried, reported once.
        with self.breaker.guard(failures=self._errors):
            try:
                if not self._ready:
                    await self._initialize()
                return await call(*args)
            except self._errors as exc:
                error = repr(exc)
                events.emit(events.BackendError("ratelimit", "check", error))
                _logger.warning(
                    "ratelimit_backend_error", error=error, breaker=self.breaker.state.value
                )
                raise

    async def _ping(self) -> None:
        await self._client.ping()

    async def _run(self, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self._client.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)
        except self._no_script:
            # Redis restarted or failed over and lost its script cache:
            # EVAL runs the script and caches it again, still one call.
            return await self._client.execute_command("EVAL", self._script, len(keys), *keys, *args)

    async def _batched(self, keys: list[str], args: list[Any], prefetch: Prefetch | None) -> Any:
        # One sender at a time: checks that arrive while a pipeline is in
        # flight wait for it and then travel together in the next one. Each is
        # still its own atomic script; they share one write and one read,
        # which is most of a call's cost. A lone check is sent as it is.
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batches.add((keys, args, future, prefetch))
        return await future

    async def _send(self, pending: list[_Pending]) -> None:
        try:
            await self._follow_the_master()
            results = await self._round_trip(self._on_connection, pending)
            missing = [i for i, result in enumerate(results) if isinstance(result, self._no_script)]
            if missing:
                # the script cache was emptied (restart, failover): EVAL runs a
                # lone check and caches the script again; a batch sends SCRIPT
                # LOAD ahead of its checks in the same write. One call either way.
                retry = [pending[i] for i in missing]
                again = await self._round_trip(self._on_connection, retry, True)
                for i, result in zip(missing, again, strict=True):
                    results[i] = result
        except BaseException as exc:
            for _, _, _, prefetch in pending:
                if prefetch is not None:
                    prefetch.forget()
            fail((future for _, _, future, _ in pending), exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future, _), result in zip(pending, results, strict=True):
            deliver(future, result)

    async def _on_connection(
        self,
        pending: list[_Pending],
        reload: bool = False,
    ) -> list[Any]:
        # The sender keeps one connection of the client's pool for itself:
        # one write of every check, then their replies in order. Any error
        # but a script's own reply drops the connection; the next batch takes
        # a fresh one (after a Sentinel failover, to the new master).
        connection = self._connection
        if connection is None:
            connection = await self._connect()
        try:
            commands: list[tuple[Any, ...]] = [
                ("EVALSHA", self._sha, len(keys), *keys, *args) for keys, args, _, _ in pending
            ]
            if reload and len(commands) == 1:
                commands[0] = ("EVAL", self._script, *commands[0][2:])
            elif reload:
                commands.insert(0, ("SCRIPT", "LOAD", self._script))
            # a cache lookup travelling with its check (not on a reload: the
            # first write already carried it); read after all the checks
            extras = [] if reload else [p for _, _, _, p in pending if p is not None]
            commands += [("EVALSHA", p.sha, len(p.keys), *p.keys, *p.args) for p in extras]
            await connection.send_packed_command(
                connection.pack_commands(commands), check_health=False
            )
            if reload and len(commands) > 1:
                await connection.read_response()  # the script's SHA1
            results = await read_replies(connection, len(pending), self._response_error)
            for extra in extras:
                # NOSCRIPT or any error reply: the cache looks up on its own
                with contextlib.suppress(self._response_error):
                    extra.answer(await connection.read_response())
        except BaseException:
            await self._drop(connection)
            raise
        if any(isinstance(result, self._read_only) for result in results):
            await self._drop(connection)  # a demoted master: ask the sentinels again
        return results

    async def _follow_the_master(self) -> None:
        # Outside the breaker's guard: waiting out a failover is not a failed call.
        follower = self._follower
        if follower is None:
            return
        if follower.holding and self.breaker.state is BreakerState.CLOSED:
            # Redis answers, so the old master is alive and would take the
            # check: wait for the switch. (A dead master cannot split the
            # counters; with the breaker open, requests fail open or closed
            # at once as in any outage.)
            await follower.wait_until_settled()
        if follower.switches == self._switches_seen:
            return
        if self._connection is not None:
            await self._drop(self._connection)
        pool = self._client.connection_pool
        # redis-py rediscovers on the next connect, asking the sentinels in
        # order: the one that announced the switch first, as others may lag.
        sentinels = pool.sentinel_manager.sentinels
        for position, sentinel in enumerate(sentinels):
            settings = sentinel.connection_pool.connection_kwargs
            if (settings["host"], int(settings["port"])) == follower.announced_by:
                sentinels.insert(0, sentinels.pop(position))
                break
        await pool.disconnect(inuse_connections=False)

    async def _connect(self) -> Any:
        """The connection the sender keeps; on Sentinel, to the announced master."""
        connection = await self._client.connection_pool.get_connection()
        follower = self._follower
        if follower is not None and follower.switches != self._switches_seen:
            # just after a switch: the announced master, whatever a lagging
            # sentinel told redis-py (later reconnects trust the sentinels again)
            if (connection.host, connection.port) != follower.master:
                await connection.disconnect()
                await connection.connect_to(follower.master)
            self._switches_seen = follower.switches
        self._connection = connection
        return connection

    async def _drop(self, connection: Any) -> None:
        if self._connection is connection:
            self._connection = None
        await connection.disconnect()
        await self._client.connection_pool.release(connection)

    async def _initialize(self) -> None:
        # redis-py's asyncio Cluster client discovers the topology on its first
        # command; many first commands at once race and drop each other's
        # connections, so discover once, under a lock, before the first call.
        async with self._init_lock:
            if not self._ready:
                initialize = getattr(self._client, "initialize", None)
                if initialize is not None:
                    await initialize()
                self._ready = True

    async def aclose(self) -> None:
        """Stop the breaker's probe; close the client if this backend built it."""
        await self.breaker.aclose()
        if self._follower is not None:
            await self._follower.aclose()
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await self._client.connection_pool.release(connection)
        if self._owns_client:
            await self._client.aclose()
