"""Answering from the cache: entries, 304s, and requests that bypass it."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scalekit.cache.entry import Entry
from scalekit.cache.headers import cache_status, header_values, if_none_match_matches

__all__ = ["bypass", "send_entry"]

_NOT_MODIFIED_HEADERS = frozenset({b"etag", b"cache-control", b"vary", b"expires", b"date"})


def _not_modified(entry: Entry, request_headers: Sequence[tuple[bytes, bytes]]) -> bool:
    # Preconditions apply to 2xx answers only (RFC 9110, 13.2.1): a cached 404 stays a 404.
    if not 200 <= entry.status < 300:
        return False
    if_none_match = header_values(request_headers, b"if-none-match")
    return bool(if_none_match) and if_none_match_matches(if_none_match, entry.etag)


async def send_entry(
    send: Send,
    entry: Entry,
    *,
    request_headers: Sequence[tuple[bytes, bytes]],
    head: bool,
    status_params: tuple[str, ...],
    now: float | None,
) -> None:
    """Answer with ``entry``: 304 when ``If-None-Match`` matches, no body for HEAD.

    ``now`` adds an ``Age`` header (None for a response the app just made).
    """
    extra = [cache_status(*status_params)]
    if now is not None:
        extra.append((b"age", str(max(0, int(now - entry.stored_at))).encode()))
    if _not_modified(entry, request_headers):
        headers = [(k, v) for k, v in entry.headers if k in _NOT_MODIFIED_HEADERS]
        await send({"type": "http.response.start", "status": 304, "headers": headers + extra})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    await send(
        {"type": "http.response.start", "status": entry.status, "headers": [*entry.headers, *extra]}
    )
    await send({"type": "http.response.body", "body": b"" if head else entry.body})


async def bypass(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, status_params: tuple[str, ...]
) -> None:
    """Let the app answer, untouched but for a ``Cache-Status`` header."""
    header = cache_status(*status_params)

    async def send_with_status(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), header]}
        await send(message)

    await app(scope, receive, send_with_status)
