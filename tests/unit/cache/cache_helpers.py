"""Drive an ASGI app directly and build small apps for the cache tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGI = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    body_messages: int = 0

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key == name.lower()]
        return ", ".join(values) if values else None


def make_scope(
    method: str = "GET",
    path: str = "/items",
    query: str = "",
    headers: Sequence[tuple[str, str]] = (),
    user: Any = None,
    extra: dict[str, Any] | None = None,
) -> Scope:
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    if user is not None:
        scope["user"] = user
    scope.update(extra or {})
    return scope


async def call(
    app: ASGI,
    method: str = "GET",
    path: str = "/items",
    query: str = "",
    headers: Sequence[tuple[str, str]] = (),
    user: Any = None,
    body: bytes = b"",
    extra: dict[str, Any] | None = None,
    send_hook: Callable[[Message], Awaitable[None]] | None = None,
) -> Response:
    """Run one request; ``extra`` overrides scope keys, ``send_hook`` sees each message first."""
    scope = make_scope(method, path, query, headers, user, extra)
    sent: list[Message] = []
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if send_hook is not None:
            await send_hook(message)
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    return Response(
        start["status"],
        [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", [])],
        b"".join(m.get("body", b"") for m in bodies),
        len(bodies),
    )


@dataclass
class User:
    identity: str
    is_authenticated: bool = True


@dataclass
class RecordingApp:
    """An app whose answer each test shapes; counts how often it ran."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=lambda: [("content-type", "text/plain")])
    chunks: list[bytes] | None = None
    runs: int = 0
    body_of: Callable[[Scope], bytes] | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        self.runs += 1
        body = (
            self.body_of(scope)
            if self.body_of
            else f"{scope['method']} {scope['path']}?{scope['query_string'].decode()} "
            f"#{self.runs}".encode()
        )
        chunks = self.chunks if self.chunks is not None else [body]
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [(k.encode(), v.encode()) for k, v in self.headers],
            }
        )
        for index, chunk in enumerate(chunks):
            await send(
                {"type": "http.response.body", "body": chunk, "more_body": index < len(chunks) - 1}
            )
        if not chunks:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
