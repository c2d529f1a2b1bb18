"""Response capture: whether a response may be stored, and buffering it when it may.

:func:`judge` reads the status and headers the app sent; :class:`ResponseCapture`
is the ``send`` the app writes to during a fill. A storable response is
buffered (up to the rule's ``max_body``) and handed over whole to its
listener, which stores and answers it; any other is passed on to the client
as it comes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from starlette.types import Message, Send

from scalekit.cache.entry import Entry
from scalekit.cache.headers import (
    cache_control,
    cache_status,
    etag_for,
    response_max_age,
    revalidation_required,
    vary_names,
)
from scalekit.cache.rules import CacheRule

__all__ = ["CaptureListener", "Captured", "NotStorable", "ResponseCapture", "Storable", "judge"]

RawHeaders = Sequence[tuple[bytes, bytes]]
# Never replayed from a stored response: hop-by-hop, per-response and per-server headers.
_UNSTORED = frozenset(
    {b"age", b"cache-status", b"connection", b"date", b"keep-alive", b"server", b"set-cookie"}
    | {b"transfer-encoding", b"upgrade", b"proxy-connection", b"trailer", b"te"}
)


@dataclass(frozen=True, slots=True)
class Storable:
    """A response that may be stored: for how long fresh, how long served stale, its Vary."""

    fresh_for: float
    stale_for: float
    vary: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NotStorable:
    """A response that must not be stored, and why (the ``detail`` of its Cache-Status)."""

    reason: str


def judge(rule: CacheRule, status: int, headers: RawHeaders) -> Storable | NotStorable:
    """Whether ``rule`` may store a response with this status and these headers.

    The response's own Cache-Control decides too: ``no-store`` and ``no-cache``
    are never stored, ``private`` only per user, ``max-age``/``s-maxage`` cap
    the freshness and ``must-revalidate``/``proxy-revalidate``/``s-maxage``
    forbid serving it stale.
    """
    if status not in rule.statuses:
        return NotStorable("status")
    if any(key.lower() == b"set-cookie" for key, _ in headers):
        return NotStorable("set-cookie")
    directives = cache_control(headers)
    for forbidding in ("no-store", "no-cache"):
        if forbidding in directives:
            return NotStorable(forbidding)
    if "private" in directives and not rule.vary_user:
        return NotStorable("private")
    vary = vary_names(headers)
    if "*" in vary:
        return NotStorable("vary-star")
    for key, value in headers:
        if key.lower() == b"content-length" and value.isdigit() and int(value) > rule.max_body:
            return NotStorable("too-large")
    fresh_for = float(rule.ttl)
    max_age = response_max_age(directives)
    if max_age is not None:
        fresh_for = min(fresh_for, max_age)
    if fresh_for <= 0:
        return NotStorable("max-age")
    stale_for = 0.0 if revalidation_required(directives) else float(rule.stale_ttl)
    return Storable(fresh_for, stale_for, vary)


@dataclass(frozen=True, slots=True)
class Captured:
    """A whole, storable response as the app sent it."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    storable: Storable

    def entry(self, now: float) -> Entry:
        """The response as an entry stored at ``now``: per-response headers dropped, an ETag."""
        headers = tuple(
            (key.lower(), value) for key, value in self.headers if key.lower() not in _UNSTORED
        )
        etags = [value for key, value in headers if key == b"etag"]
        etag = etags[0].decode("latin-1") if etags else etag_for(self.body)
        if not etags:
            headers += ((b"etag", etag.encode("latin-1")),)
        return Entry(self.status, headers, self.body, etag, now)


class CaptureListener(Protocol):
    """Who hears what became of a captured response."""

    async def complete(self, response: Captured) -> None:
        """The whole response is here and may be stored; answer the client with it."""
        ...

    async def passing(self, reason: str) -> None:
        """The response will not be stored (``reason``); it goes to the client as it comes."""
        ...


class ResponseCapture:
    """The ``send`` of a fill: buffers a storable response, passes any other on.

    A response that may not be stored, or grows past ``max_body``, is passed
    on as it comes (the part already buffered first) with a Cache-Status
    naming why. ``send`` is None for a background refresh: nothing is sent.
    ``identified()``, asked when the response starts, says whether the request
    has got an identity by then: its response is not stored either.
    """

    def __init__(
        self,
        rule: CacheRule,
        send: Send | None,
        status_params: tuple[str, ...],
        listener: CaptureListener,
        *,
        identified: Callable[[], bool] | None = None,
    ) -> None:
        self.rule = rule
        self.identified = identified
        self.send = send
        self.status_params = status_params
        self.listener = listener
        self.start: Message | None = None
        self.storable: Storable | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.passing = False
        self.complete = False

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if self.passing or self.complete or kind == "http.response.debug":
            # http.response.debug (template info for Starlette's TestClient) is not the response.
            await self._forward(message)
        elif kind == "http.response.start":
            self.start = message
            verdict = judge(self.rule, message["status"], message.get("headers", ()))
            if isinstance(verdict, Storable) and self.identified is not None and self.identified():
                # The request got an identity while the app ran (authentication inside
                # the cache): its answer may be that user's, so nobody else gets it.
                verdict = NotStorable("credentials")
            if isinstance(verdict, NotStorable):
                await self._pass_on(verdict.reason)
            else:
                self.storable = verdict
        elif kind == "http.response.body" and self.start is not None:
            await self._body(message, self.start)
        else:
            # An extension (pathsend, trailers, ...) cannot be replayed from a stored body.
            await self._pass_on("extension")
            await self._forward(message)

    async def _body(self, message: Message, start: Message) -> None:
        body = message.get("body", b"")
        self.size += len(body)
        self.chunks.append(body)
        more = message.get("more_body", False)
        if self.size > self.rule.max_body:
            await self._pass_on("too-large")
            if not more:
                await self._forward({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if not more and self.storable is not None:
            self.complete = True
            await self.listener.complete(
                Captured(
                    start["status"],
                    tuple(start.get("headers", ())),
                    b"".join(self.chunks),
                    self.storable,
                )
            )

    async def _forward(self, message: Message) -> None:
        if self.send is not None:
            await self.send(message)

    async def _pass_on(self, reason: str) -> None:
        self.passing = True
        await self.listener.passing(reason)
        if self.start is None:
            return
        start = dict(self.start)
        start["headers"] = [
            *self.start.get("headers", ()),
            cache_status(*self.status_params, f"detail={reason}"),
        ]
        await self._forward(start)
        if self.chunks:
            body = b"".join(self.chunks)
            self.chunks = []
            await self._forward({"type": "http.response.body", "body": body, "more_body": True})
