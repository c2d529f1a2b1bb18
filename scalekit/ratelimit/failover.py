"""Following a Sentinel master through failovers, for a connection held across requests.

The Redis backend keeps one connection for its pipelines. redis-py asks the
sentinels for the master only when a connection is (re)made, so after a
planned ``SENTINEL FAILOVER`` the held connection keeps writing to the old
master — which still accepts writes — until the sentinels demote it
(seconds later); everything counted there meanwhile is thrown away when it
resyncs from the new master, and the limiter silently admits twice.

:class:`SentinelFollower` subscribes, on every sentinel, to the failover
events of one service and tells the backend two things:

- **hold** while a failover of the service is under way (from
  ``+try-failover``, which precedes the promotion, to ``+switch-master`` or
  an abort): a check sent then could land on the master being replaced, so
  the backend waits — at most ``hold_limit`` seconds — instead;
- **where** the master is after ``+switch-master``: the backend drops its
  held connection and connects to the announced address directly (another
  sentinel may not have heard of the switch yet).

If the subscriptions are down, nothing is held and the backend falls back
on redis-py's own behaviour (a ``READONLY`` reply drops the connection).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from scalekit._clock import Clock, get_clock, sleep

__all__ = ["SentinelFollower"]

_logger = structlog.get_logger("scalekit.ratelimit")

_STARTED = ("+try-failover",)
_ENDED = ("+failover-end-for-timeout",)
_ABORTED = "-failover-abort-*"
_SWITCHED = "+switch-master"


class SentinelFollower:
    """Watches one Sentinel service's failovers for a backend that holds a connection.

    Args:
        sentinels: a redis-py asyncio client per sentinel (``Sentinel.sentinels``);
            the follower opens its own connections like theirs, without a
            read timeout (a subscription waits for events).
        service_name: the monitored master's name.
        hold_limit: the longest a check waits for a failover to finish.
        clock: what reconnection back-offs and the hold limit read.
    """

    def __init__(
        self,
        sentinels: list[Any],
        service_name: str,
        *,
        hold_limit: float = 5.0,
        clock: Clock | None = None,
    ) -> None:
        self._connect_like = [sentinel.connection_pool for sentinel in sentinels]
        self.sentinels = [
            (pool.connection_kwargs["host"], int(pool.connection_kwargs["port"]))
            for pool in self._connect_like
        ]
        self.service_name = service_name
        self.hold_limit = hold_limit
        self.master: tuple[str, int] | None = None
        """The master the last ``+switch-master`` announced (None before any)."""
        self.announced_by: tuple[str, int] | None = None
        """The sentinel whose ``+switch-master`` set :attr:`master`."""
        self.switches = 0
        """How many times the master moved since this follower started."""
        self._clock = clock
        self._failing_over: set[int] = set()  # the sentinels running a failover now
        self._held_since: float | None = None
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed: set[int] = set()
        self._all_subscribed = asyncio.Event()

    @classmethod
    def for_client(cls, client: Any, **options: Any) -> SentinelFollower | None:
        """A follower for a redis-py client from ``Sentinel.master_for``; None for others."""
        pool: Any = getattr(client, "connection_pool", None)
        manager = getattr(pool, "sentinel_manager", None)
        if manager is None or not getattr(pool, "is_master", False):
            return None
        return cls(list(manager.sentinels), pool.service_name, **options)

    @property
    def subscribed(self) -> int:
        """On how many sentinels the subscription is live."""
        return len(self._subscribed)

    async def wait_subscribed(self) -> None:
        """Return once every sentinel's subscription is live (for tests and start-up checks)."""
        await self._all_subscribed.wait()

    @property
    def holding(self) -> bool:
        """A failover of the service is under way (and the hold limit has not passed)."""
        return not self._resumed.is_set()

    def start(self) -> None:
        """Subscribe on every sentinel (once, in the running event loop)."""
        if self._tasks:
            return
        self._tasks = [
            asyncio.get_running_loop().create_task(
                self._follow(index, host, port), name=f"scalekit-sentinel-{host}:{port}"
            )
            for index, (host, port) in enumerate(self.sentinels)
        ]

    async def wait_until_settled(self) -> None:
        """Return when no failover is under way, or ``hold_limit`` seconds after one began."""
        if self._resumed.is_set():
            return
        started = self._held_since if self._held_since is not None else self._now()
        left = started + self.hold_limit - self._now()
        if left > 0:
            resumed = asyncio.ensure_future(self._resumed.wait())
            expired = asyncio.ensure_future(sleep(left, self._clock))
            try:
                await asyncio.wait((resumed, expired), return_when=asyncio.FIRST_COMPLETED)
            finally:
                resumed.cancel()
                expired.cancel()
        if not self._resumed.is_set():
            _logger.warning(
                "sentinel_failover_hold_expired", service=self.service_name, seconds=self.hold_limit
            )
            self._resume()

    async def aclose(self) -> None:
        """Stop the subscriptions."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._resume()

    def _now(self) -> float:
        return (self._clock or get_clock()).monotonic()

    def _resume(self) -> None:
        self._failing_over.clear()
        self._held_since = None
        self._resumed.set()

    def on_event(self, index: int, channel: str, data: str) -> None:
        """Take in one event from sentinel ``index`` (what its subscription calls)."""
        words = data.split()
        if channel == _SWITCHED:
            # "<name> <old-ip> <old-port> <new-ip> <new-port>"
            if len(words) == 5 and words[0] == self.service_name:
                address = (words[3], int(words[4]))
                if address != self.master:
                    self.master = address
                    self.announced_by = self.sentinels[index]
                    self.switches += 1
                    _logger.info(
                        "sentinel_master_switched", service=self.service_name, master=address
                    )
                self._resume()
            return
        # "master <name> <ip> <port>"
        if len(words) < 2 or words[0] != "master" or words[1] != self.service_name:
            return
        if channel in _STARTED:
            if self._resumed.is_set():
                self._held_since = self._now()
                self._resumed.clear()
            self._failing_over.add(index)
        else:
            self._failing_over.discard(index)
            if not self._failing_over:
                self._resume()

    async def _follow(self, index: int, host: str, port: int) -> None:
        redis = _redis_asyncio()
        like = self._connect_like[index]
        backoff = 0.1
        while True:
            pool = redis.ConnectionPool(
                connection_class=like.connection_class,
                **{**like.connection_kwargs, "socket_timeout": None},
            )
            client = redis.Redis(connection_pool=pool)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(_SWITCHED, *_STARTED, *_ENDED)
                await pubsub.psubscribe(_ABORTED)
                self._subscribed.add(index)
                if len(self._subscribed) == len(self.sentinels):
                    self._all_subscribed.set()
                backoff = 0.1
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is None or message["type"] not in ("message", "pmessage"):
                        continue
                    self.on_event(index, _text(message["channel"]), _text(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a sentinel down: retry, never break the backend
                self._subscribed.discard(index)
                self._all_subscribed.clear()
                self._failing_over.discard(index)
                if not self._failing_over and self._held_since is not None:
                    self._resume()
                _logger.debug(
                    "sentinel_subscription_lost", sentinel=f"{host}:{port}", error=repr(exc)
                )
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await pool.aclose()
            await sleep(backoff, self._clock)
            backoff = min(backoff * 2, 5.0)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _redis_asyncio() -> Any:
    from scalekit._extras import require

    return require("redis.asyncio", "redis")
