"""What the limiter sends: ``RateLimit`` header fields, the 429 and the 503.

Header fields follow draft-ietf-httpapi-ratelimit-headers (draft-10,
structured fields): ``RateLimit-Policy: "api";q=100;w=900`` and
``RateLimit: "api";r=42;t=30``, optionally the legacy ``X-RateLimit-*``
trio. Both error responses are JSON and carry ``Retry-After``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from starlette.types import Message, Send

from scalekit.ratelimit.outcomes import Checked, Rejected
from scalekit.ratelimit.plan import Limit
from scalekit.ratelimit.protocol import LimitResult

__all__ = ["HeaderFields", "ResponseWatcher", "send_too_many_requests", "send_unavailable"]

Fields = list[tuple[bytes, bytes]]


class HeaderFields:
    """The ``RateLimit`` fields a middleware sends.

    Args:
        enabled: send ``RateLimit-Policy`` and ``RateLimit`` at all.
        legacy: also send ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset``.
    """

    __slots__ = ("enabled", "legacy")

    def __init__(self, *, enabled: bool, legacy: bool) -> None:
        self.enabled = enabled
        self.legacy = legacy

    def for_limit(self, limit: Limit, remaining: int, reset: int) -> Fields:
        """The fields describing ``limit`` (empty when disabled)."""
        if not self.enabled:
            return []
        fields = [
            (b"ratelimit-policy", limit.policy_field),
            (b"ratelimit", f'"{limit.policy}";r={remaining};t={reset}'.encode()),
        ]
        if self.legacy:
            fields += [
                (b"x-ratelimit-limit", str(limit.rate.amount).encode()),
                (b"x-ratelimit-remaining", str(remaining).encode()),
                (b"x-ratelimit-reset", str(reset).encode()),
            ]
        return fields

    def most_restrictive(self, checked: Sequence[Checked]) -> Fields:
        """The fields of the limit with the least remaining, then the latest reset."""
        if not self.enabled:
            return []
        best: tuple[Limit, LimitResult] | None = None
        for one in checked:
            for limit, result in one.results():
                if best is None or (result.remaining, -result.reset) < (
                    best[1].remaining,
                    -best[1].reset,
                ):
                    best = (limit, result)
        if best is None:
            return []
        limit, result = best
        return self.for_limit(limit, result.remaining, max(0, math.ceil(result.reset)))


class ResponseWatcher:
    """The app's ``send``: adds the ``RateLimit`` fields to the response and notes its status.

    Args:
        send: the server's ``send``.
        fields: appended to the headers of ``http.response.start``.
    """

    __slots__ = ("_fields", "_send", "status")

    def __init__(self, send: Send, fields: Fields) -> None:
        self._send = send
        self._fields = fields
        self.status: int | None = None
        """The response status, once the app has started its response."""

    @property
    def failed(self) -> bool:
        """The response is an error (>= 400), or the app never started one (it raised)."""
        return self.status is None or self.status >= 400

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            if self._fields:
                message = {**message, "headers": [*message.get("headers", ()), *self._fields]}
        await self._send(message)


async def send_too_many_requests(send: Send, rejected: Rejected, fields: HeaderFields) -> None:
    """429 with ``Retry-After`` (when the request would pass) and the exceeded limit's fields."""
    limit, result = rejected.worst()
    retry_after = max(1, math.ceil(result.reset))
    body = {
        "error": "rate_limited",
        "detail": f"Rate limit {limit.rate.text} exceeded ({limit.rule.name}); "
        f"retry in {retry_after} s",
        "retry_after": retry_after,
    }
    headers = [
        (b"retry-after", str(retry_after).encode()),
        *fields.for_limit(limit, result.remaining, retry_after),
    ]
    await _send_json(send, 429, body, headers)


async def send_unavailable(send: Send, retry_after: int) -> None:
    """503 for a rule that fails closed, with ``Retry-After``: when the backend may be back."""
    body = {
        "error": "rate_limit_unavailable",
        "detail": "The rate limiter's backend is unavailable and this route fails closed; "
        f"retry in {retry_after} s",
        "retry_after": retry_after,
    }
    await _send_json(send, 503, body, [(b"retry-after", str(retry_after).encode())])


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: Fields) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
