"""Where read-your-writes pins live: one request's scope, or the current context.

Inside :func:`request_scope` (``RequestScopeMiddleware`` opens one per
request; ``install()`` adds it) every pin goes into one mutable scope object
that all copies of the request's context share — the endpoint's worker
thread, ``aexecute``'s thread, tasks the request starts — and nothing of it
survives the request, even on a thread a pool reuses. Outside a scope pins
are context-local, and :func:`run_in_thread` carries the ones a worker
thread sets back into its caller's context.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import types
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, TypeVar

from .marks import merge_gtids

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "RequestScopeMiddleware",
    "bind",
    "bound_key",
    "pin",
    "pinned",
    "request_scope",
    "run_in_thread",
]

T = TypeVar("T")

Pin = tuple[float, str | None]
"""Pinned until (the ReplicaSet clock's monotonic seconds), and the GTID reads must see."""

_NO_PINS: Mapping[int, Pin] = types.MappingProxyType({})


class _Scope:
    __slots__ = ("lock", "pins")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pins: dict[int, Pin] = {}


_scope: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar(
    "scalekit_db_scope", default=None
)
_pins: contextvars.ContextVar[Mapping[int, Pin]] = contextvars.ContextVar(
    "scalekit_db_pins", default=_NO_PINS
)
_bound_key: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "scalekit_db_bound_key", default=None
)


def _merge(old: Pin | None, new: Pin) -> Pin:
    if old is None:
        return new
    return max(old[0], new[0]), merge_gtids(old[1], new[1])


def pin(owner: int, until: float, gtid: str | None) -> None:
    """Pin reads of ``owner`` (a ReplicaSet's number) to the primary until ``until``."""
    scope = _scope.get()
    if scope is not None:
        with scope.lock:
            scope.pins[owner] = _merge(scope.pins.get(owner), (until, gtid))
        return
    pins = dict(_pins.get())
    pins[owner] = _merge(pins.get(owner), (until, gtid))
    _pins.set(pins)


def pinned(owner: int) -> Pin | None:
    """The pin of ``owner`` in this request (or context), if any."""
    scope = _scope.get()
    if scope is not None:
        return scope.pins.get(owner)
    return _pins.get().get(owner)


def bound_key() -> str | None:
    """The key set by ``ReplicaSet.bound()`` around this code, if any."""
    return _bound_key.get()


@contextlib.contextmanager
def bind(key: object) -> Iterator[None]:
    token = _bound_key.set(str(key))
    try:
        yield
    finally:
        _bound_key.reset(token)


@contextlib.contextmanager
def request_scope() -> Iterator[None]:
    """One request: pins made inside are seen by the whole request and by nothing after it.

    ``RequestScopeMiddleware`` opens one per HTTP request; use this directly
    around each job or message in a worker that reuses threads.
    """
    scope_token = _scope.set(_Scope())
    key_token = _bound_key.set(None)
    try:
        yield
    finally:
        _bound_key.reset(key_token)
        _scope.reset(scope_token)


class RequestScopeMiddleware:
    """ASGI middleware: each HTTP or WebSocket request gets its own read-your-writes scope."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        with request_scope():
            await self.app(scope, receive, send)


async def run_in_thread(call: Callable[[], T]) -> T:
    """``call()`` in a worker thread with a copy of this context; its pins come back here."""
    import anyio.to_thread

    context = contextvars.copy_context()
    try:
        return await anyio.to_thread.run_sync(context.run, call)
    finally:
        _carry_pins(context)


def _carry_pins(context: contextvars.Context) -> None:
    if _scope.get() is not None:
        return  # the scope object is shared: the thread wrote into it already
    theirs = context.get(_pins, _NO_PINS)
    mine = _pins.get()
    if theirs is mine:
        return
    merged = dict(mine)
    for owner, value in theirs.items():
        merged[owner] = _merge(merged.get(owner), value)
    _pins.set(merged)
