"""The lookup script's round trip on one held connection, pipelined.

A cache hit is one ``EVALSHA``. Through redis-py's command path it also pays a
pool check-out and check-in (with a socket poll for unexpected data), the
retry wrapper and the reply-callback machinery: more CPU than the round trip
itself (``bench/profiles/starlette-cache.txt``). :class:`ScriptPipe` keeps one
connection made by the client's pool instead and writes every lookup issued in
the same event-loop turn in one write, then reads their replies in order
(each still its own atomic script; the rate limiter's Redis backend does the
same). Standalone and Sentinel clients only: a Cluster client routes by slot.

Any error but a script's own error reply drops the connection (its state is
unknown) and closes the pool's idle connections to the same server; the next
call opens a fresh one (on Sentinel, to the master the sentinels name), never
a pooled socket that may be stale. ``NOSCRIPT`` (Redis restarted or its
script cache was flushed) is answered by sending ``EVAL`` for that call.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

from scalekit._extras import require
from scalekit._resp import Batches, deliver, fail, read_replies

__all__ = ["ScriptPipe", "supports_pipe"]

_Pending = tuple[list[str], list[Any], "asyncio.Future[Any]", "Callable[[Any], None] | None"]


def supports_pipe(client: Any) -> bool:
    """Whether ``client`` is a redis-py asyncio client whose pool makes single connections."""
    pool = getattr(client, "connection_pool", None)
    return (
        type(client).__name__ != "RedisCluster"
        and pool is not None
        and callable(getattr(pool, "make_connection", None))
    )


class ScriptPipe:
    """Calls one Lua script on a connection held from ``client``'s pool.

    Args:
        client: a redis-py asyncio client (standalone or Sentinel).
        script: the script's source.
    """

    def __init__(self, client: Any, script: str) -> None:
        exceptions = require("redis.exceptions", "redis")
        self._client = client
        self._script = script
        self._sha = hashlib.sha1(script.encode()).hexdigest()  # Redis names a script by its SHA1
        self._response_error: type[Exception] = exceptions.ResponseError
        self._no_script: type[Exception] = exceptions.NoScriptError
        self._read_only: type[Exception] = exceptions.ReadOnlyError
        self._connection: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batches: Batches[_Pending] = Batches(self._send)

    @property
    def script(self) -> str:
        """The script's source."""
        return self._script

    @property
    def sha(self) -> str:
        """The script's SHA1, as ``EVALSHA`` names it."""
        return self._sha

    async def call(
        self,
        keys: list[str],
        args: list[Any],
        *,
        orphaned: Callable[[Any], None] | None = None,
    ) -> Any:
        """The script's reply for ``keys`` and ``args`` (redis-py's exceptions on failure).

        A caller cancelled while its call is queued or in flight does not
        stop the write its batch shares with others; ``orphaned`` then gets
        the reply nobody awaits (to undo what the script did, such as
        releasing a lock it took).
        """
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # a connection belongs to the loop it was opened on (tests run several)
            self._loop, self._connection = loop, None
            self._batches.reset()
        future: asyncio.Future[Any] = loop.create_future()
        self._batches.add((keys, args, future, orphaned))
        return await future

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            replies = await self._round_trip(batch, reload=False)
            missing = [i for i, reply in enumerate(replies) if isinstance(reply, self._no_script)]
            if missing:
                again = await self._round_trip([batch[i] for i in missing], reload=True)
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        except BaseException as exc:
            fail((future for _, _, future, _ in batch), exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future, orphaned), reply in zip(batch, replies, strict=True):
            delivered = deliver(future, reply)
            if not delivered and orphaned is not None and not isinstance(reply, BaseException):
                orphaned(reply)  # its caller was cancelled: nobody awaits this reply

    async def _round_trip(self, batch: list[_Pending], *, reload: bool) -> list[Any]:
        connection = self._connection
        if connection is None:
            # its own connection, made by the pool but never lent by it: a
            # pooled one may be a stale socket to a restarted server
            connection = self._client.connection_pool.make_connection()
            try:
                await connection.connect()  # on Sentinel: to the master the sentinels name
            except BaseException:
                await connection.disconnect()
                raise
            self._connection = connection
        command = "EVAL" if reload else "EVALSHA"
        body = self._script if reload else self._sha
        try:
            await connection.send_packed_command(
                connection.pack_commands(
                    [(command, body, len(keys), *keys, *args) for keys, args, _, _ in batch]
                ),
                check_health=False,
            )
            replies = await read_replies(connection, len(batch), self._response_error)
        except BaseException:
            await self._drop(connection)
            raise
        if any(isinstance(reply, self._read_only) for reply in replies):
            await self._drop(connection)  # a demoted master: the pool asks the sentinels again
        return replies

    async def _drop(self, connection: Any) -> None:
        if self._connection is connection:
            self._connection = None
        try:
            await connection.disconnect()
        finally:
            # the pool's idle sockets went to the same server: closed now, the
            # backend's other calls (store, invalidate) open fresh ones instead
            # of failing once each on a stale one
            await self._client.connection_pool.disconnect(inuse_connections=False)

    async def aclose(self) -> None:
        """Close the held connection."""
        connection, self._connection = self._connection, None
        if connection is not None and self._loop is asyncio.get_running_loop():
            await connection.disconnect()
