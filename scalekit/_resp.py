"""Script calls sent in batches on one held RESP connection.

The cache's lookup pipe (:mod:`scalekit.cache.pipe`) and the rate limiter's
Redis backend both keep one connection of a redis-py pool for themselves and
write every script call issued in the same event-loop turn in one write, then
read the replies in order. What they share lives here: the queue that gathers
one loop turn's calls and sends one batch at a time (:class:`Batches`), the
in-order reading of replies where a script's own error reply is a reply like
any other (:func:`read_replies`), and handing replies or a failure to the
callers' futures (:func:`deliver`, :func:`fail`).

Nothing here imports redis: callers pass the error types they read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar

__all__ = ["Batches", "deliver", "fail", "read_replies"]

_Call = TypeVar("_Call")


class Batches(Generic[_Call]):
    """Calls gathered per event-loop turn and sent together, one batch in flight at a time.

    Calls that arrive while a batch is in flight wait for it and then travel
    together in the next one.

    Args:
        send: sends one batch and settles its callers' futures.
    """

    def __init__(self, send: Callable[[list[_Call]], Awaitable[None]]) -> None:
        self._send = send
        self._pending: list[_Call] = []
        self._sending = False
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, call: _Call) -> None:
        """Queue ``call``; start the sender unless one is running."""
        self._pending.append(call)
        if not self._sending:
            self._sending = True
            task = asyncio.ensure_future(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def reset(self) -> None:
        """Forget the queue and the sender (a new event loop: they belong to the old one)."""
        self._pending, self._sending = [], False

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(0)  # let the calls of this loop turn join
            while self._pending:
                batch, self._pending = self._pending, []
                await self._send(batch)
        finally:
            self._sending = False


async def read_replies(connection: Any, count: int, error_reply: type[BaseException]) -> list[Any]:
    """``count`` replies read in order from ``connection``.

    An ``error_reply`` (a script's own error) is kept as that call's reply and
    the rest still follow; any other error propagates.
    """
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(await connection.read_response())
        except error_reply as exc:
            replies.append(exc)
    return replies


def deliver(future: asyncio.Future[Any], reply: Any) -> bool:
    """Settle ``future`` with ``reply`` (raised if an exception); False if its caller left."""
    if future.done():  # its caller was cancelled
        return False
    if isinstance(reply, BaseException):
        future.set_exception(reply)
    else:
        future.set_result(reply)
    return True


def fail(futures: Iterable[asyncio.Future[Any]], exc: BaseException) -> None:
    """Settle every future still awaited with ``exc``."""
    for future in futures:
        if not future.done():
            future.set_exception(exc)
