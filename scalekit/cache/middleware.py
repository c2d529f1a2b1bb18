"""The response cache middleware (pure ASGI).

Per request it decides *what* to do: pass through, serve a stored entry,
fill one (once per key: single flight in the process, a short backend lock
across instances), or invalidate tags after a successful write. The backend
(:mod:`scalekit.cache.backends`) knows how entries are stored.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.requests import Request

from scalekit import events
from scalekit._clock import Clock, get_clock
from scalekit.cache.backends import CacheBackend, Lookup
from scalekit.cache.entry import Entry
from scalekit.cache.errors import CacheBackendError, CacheConfigError
from scalekit.cache.headers import (
    cache_control,
    cache_status,
    etag_for,
    header_values,
    if_none_match_matches,
    vary_names,
)
from scalekit.cache.keys import EntryKeys, base_digest, entry_keys, normalise_query, vary_values
from scalekit.cache.rules import CacheRule

__all__ = ["CacheMiddleware", "IdentityFunction", "user_identity"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
IdentityFunction = Callable[[Scope], str | None]

_logger = structlog.get_logger("scalekit.cache")
_CREDENTIALS = (b"authorization", b"cookie")
# Never replayed from a stored response: hop-by-hop, per-response and per-server headers.
_UNSTORED = frozenset(
    {b"age", b"cache-status", b"connection", b"date", b"keep-alive", b"server", b"set-cookie"}
    | {b"transfer-encoding", b"upgrade", b"proxy-connection", b"trailer", b"te"}
)
_NOT_MODIFIED_HEADERS = frozenset({b"etag", b"cache-control", b"vary", b"expires", b"date"})


def user_identity(scope: Scope) -> str | None:
    """The default identity: ``scope["user"].identity`` when authenticated, else ``None``.

    ``scope["user"]`` is set by Starlette's ``AuthenticationMiddleware``.
    """
    user = scope.get("user")
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    identity = getattr(user, "identity", None)
    return None if identity is None or identity == "" else str(identity)


def _emit(rule: CacheRule, event: str, reason: str = "") -> None:
    if events.bus.has_listeners(events.CacheEvent):
        events.emit(events.CacheEvent(rule.name, event, reason))


async def _empty_receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


@dataclass(slots=True)
class _Request:
    """Everything one cacheable GET/HEAD request needs, computed once."""

    rule: CacheRule
    scope: Scope
    headers: Sequence[tuple[bytes, bytes]]
    digest: str
    tags: tuple[str, ...]
    keys: EntryKeys
    head: bool


class _Capture:
    """A send wrapper that buffers a response up to ``max_body`` to store it.

    A response that may not be stored, or grows past ``max_body``, is passed
    on as it comes (the part already buffered first); ``entry`` stays None.
    """

    def __init__(self, rule: CacheRule, send: Send | None, status_params: tuple[str, ...]) -> None:
        self.rule = rule
        self.send = send
        self.status_params = status_params
        self.start: Message | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.passing = False
        self.complete = False
        self.skip_reason = ""
        self.vary: tuple[str, ...] = ()

    def _reason(self, status: int, headers: Sequence[tuple[bytes, bytes]]) -> str:
        rule = self.rule
        if status not in rule.statuses:
            return "status"
        if any(key.lower() == b"set-cookie" for key, _ in headers):
            return "set-cookie"
        directives = cache_control(headers)
        if "no-store" in directives:
            return "no-store"
        if "private" in directives and not rule.vary_user:
            return "private"
        self.vary = vary_names(headers)
        if "*" in self.vary:
            return "vary-star"
        for key, value in headers:
            if key.lower() == b"content-length" and value.isdigit() and int(value) > rule.max_body:
                return "too-large"
        return ""

    async def _pass_on(self, reason: str) -> None:
        self.passing = True
        self.skip_reason = reason
        _emit(self.rule, "skip", reason)
        if self.send is None:
            return
        assert self.start is not None
        start = dict(self.start)
        start["headers"] = [
            *self.start.get("headers", ()),
            cache_status(*self.status_params, f"detail={reason}"),
        ]
        await self.send(start)
        if self.chunks:
            await self.send(
                {"type": "http.response.body", "body": b"".join(self.chunks), "more_body": True}
            )
            self.chunks = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            reason = self._reason(message["status"], message.get("headers", ()))
            if reason:
                await self._pass_on(reason)
            return
        if message["type"] != "http.response.body":
            if self.send is not None:
                await self.send(message)
            return
        if self.passing:
            if self.send is not None:
                await self.send(message)
            return
        body = message.get("body", b"")
        self.size += len(body)
        self.chunks.append(body)
        more = message.get("more_body", False)
        if self.size > self.rule.max_body:
            await self._pass_on("too-large")
            if not more and self.send is not None:
                await self.send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if not more:
            self.complete = True

    def entry(self, now: float) -> Entry | None:
        """The response as an entry, once complete and storable."""
        if not self.complete or self.passing or self.start is None:
            return None
        body = b"".join(self.chunks)
        headers = tuple(
            (key.lower(), value)
            for key, value in self.start.get("headers", ())
            if key.lower() not in _UNSTORED
        )
        etags = [value for key, value in headers if key == b"etag"]
        etag = etags[0].decode("latin-1") if etags else etag_for(body)
        if not etags:
            headers += ((b"etag", etag.encode("latin-1")),)
        return Entry(self.start["status"], headers, body, etag, now)


class CacheMiddleware:
    """Cache GET/HEAD responses of the routes that match a rule.

    Args:
        app: the ASGI app to wrap.
        backend: where entries live (:class:`RedisCache`, :class:`MemoryCache`).
        rules: the cacheable routes; the first rule whose path matches applies.
        identity: ``callable(scope) -> str | None`` for ``vary_user`` rules
            (default :func:`user_identity`: Starlette's authenticated user).
        lock: take a short backend lock on a miss so one instance fills a key.
        lock_timeout: seconds the lock lives (a crashed filler frees it then).
        lock_wait: seconds another instance waits for the filler's result
            before serving stale (if any) or computing itself.
        poll_interval: seconds between looks while waiting.
        clock: the clock TTLs and stale windows read (default: the process clock).

    Raises:
        CacheConfigError: no rules, or a timeout out of range.
    """

    def __init__(
        self,
        app: ASGIApp,
        backend: CacheBackend,
        rules: Iterable[CacheRule],
        *,
        identity: IdentityFunction | None = None,
        lock: bool = True,
        lock_timeout: float = 5.0,
        lock_wait: float = 2.0,
        poll_interval: float = 0.02,
        clock: Clock | None = None,
    ) -> None:
        self.app = app
        self.backend = backend
        self.rules = tuple(rules)
        if not self.rules:
            raise CacheConfigError("CacheMiddleware needs at least one CacheRule")
        if lock_timeout <= 0 or lock_wait < 0 or poll_interval <= 0:
            raise CacheConfigError(
                "CacheMiddleware: lock_timeout and poll_interval must be > 0, lock_wait >= 0"
            )
        self.identity = identity or user_identity
        self.lock_timeout = lock_timeout if lock else None
        self.lock_wait = lock_wait
        self.poll_interval = poll_interval
        self._clock = clock
        # Fills in flight in this process: base key -> the filler's (entry, keys).
        self._inflight: dict[str, asyncio.Future[tuple[Entry | None, EntryKeys]]] = {}
        # Response Vary names learned per rule, so a hit stays one lookup.
        self._vary: dict[str, tuple[str, ...]] = {}

    def _now(self) -> float:
        return (self._clock or get_clock()).time()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, root_path = scope["path"], scope.get("root_path", "")
        for rule in self.rules:
            params = rule.match(path, root_path)
            if params is not None:
                break
        else:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method in ("GET", "HEAD"):
            await self._cacheable(rule, params, scope, receive, send)
        elif method in rule.invalidate_on:
            await self._invalidating(rule, params, scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _request(self, scope: Scope, path_params: dict[str, str]) -> Request:
        return Request({**scope, "path_params": {**scope.get("path_params", {}), **path_params}})

    async def _bypass(
        self, rule: CacheRule, reason: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        _emit(rule, "bypass", reason)
        if reason == "backend":  # Redis failed or its breaker is open
            events.emit(events.DegradedRequest("cache", "bypass"))
        header = cache_status("fwd=bypass", f"detail={reason}")

        async def send_with_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        await self.app(scope, receive, send_with_status)

    def _keys(
        self,
        request_headers: Sequence[tuple[bytes, bytes]],
        digest: str,
        tags: Sequence[str],
        vary: tuple[str, ...],
    ) -> EntryKeys:
        return entry_keys(digest, tags, vary, vary_values(request_headers, vary))

    async def _cacheable(
        self, rule: CacheRule, params: dict[str, str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        headers = scope["headers"]
        user = None
        if rule.vary_user:
            user = self.identity(scope)
            if user is None:
                await self._bypass(rule, "no-identity", scope, receive, send)
                return
        elif any(key.lower() in _CREDENTIALS for key, _ in headers):
            await self._bypass(rule, "credentials", scope, receive, send)
            return
        tags = rule.tags_for(params, user, lambda: self._request(scope, params))
        digest = base_digest(
            rule.name,
            scope["path"],
            normalise_query(scope.get("query_string", b"")),
            user,
            vary_values(headers, rule.vary_headers),  # type: ignore[arg-type]
        )
        keys = self._keys(headers, digest, tags, self._vary.get(rule.name, ()))
        request = _Request(rule, scope, headers, digest, tags, keys, scope["method"] == "HEAD")
        directives = cache_control(headers)
        no_cache = "no-cache" in directives or (
            not directives and "no-cache" in ",".join(header_values(headers, b"pragma")).lower()
        )
        if no_cache:
            try:
                found = await self._lookup(request, lock=False)
            except CacheBackendError:
                await self._bypass(rule, "backend", scope, receive, send)
                return
            await self._fill(request, found, receive, send, ("fwd=request",))
            return
        waiting = self._inflight.get(keys.base)
        if waiting is not None:
            # Single flight: the same key is being answered in this process.
            entry, filled = await asyncio.shield(waiting)
            mine = self._keys(headers, digest, tags, filled.vary)
            if entry is not None and mine.variant == filled.variant:
                _emit(rule, "hit", "collapsed")
                await self._send_entry(request, entry, send, ("hit", "collapsed"), self._now())
                return
            await self._answer(request, receive, send)
            return
        future: asyncio.Future[tuple[Entry | None, EntryKeys]] = (
            asyncio.get_running_loop().create_future()
        )
        self._inflight[keys.base] = future
        result: tuple[Entry | None, EntryKeys] = (None, keys)
        try:
            result = (await self._answer(request, receive, send), request.keys)
        finally:
            self._inflight.pop(keys.base, None)
            future.set_result(result)

    async def _answer(self, request: _Request, receive: Receive, send: Send) -> Entry | None:
        """Serve from the backend or fill; the fresh entry answered with, if any."""
        rule = request.rule
        try:
            found = await self._lookup(request, lock=True)
        except CacheBackendError:
            await self._bypass(rule, "backend", request.scope, receive, send)
            return None
        now = self._now()
        if found.usable:
            assert found.data is not None
            entry = Entry.decode(found.data)
            if now <= found.fresh_until:
                _emit(rule, "hit")
                await self._send_entry(request, entry, send, ("hit",), now)
                await self._release(request, found.lock_token)
                return entry
            if now <= found.fresh_until + rule.stale_ttl:
                _emit(rule, "stale")
                ttl = int(found.fresh_until - now)
                await self._send_entry(request, entry, send, ("hit", f"ttl={ttl}"), now)
                if found.lock_token is not None and not request.head:
                    # The client has its whole response; refresh for the next ones.
                    try:
                        await self._fill(request, found, _empty_receive, None, ("fwd=stale",))
                    except Exception:
                        _logger.exception("cache refresh failed", rule=rule.name)
                return None
        return await self._miss(request, found, receive, send)

    async def _lookup(self, request: _Request, *, lock: bool) -> Lookup:
        lock_ttl = self.lock_timeout if lock else None
        found = await self.backend.lookup(
            request.keys, request.tags, now=self._now(), lock_ttl=lock_ttl
        )
        if not found.final and found.marker is not None:
            vary = tuple(name for name in found.marker.split(",") if name)
            self._vary[request.rule.name] = vary
            request.keys = self._keys(request.headers, request.digest, request.tags, vary)
            found = await self.backend.lookup(
                request.keys, request.tags, now=self._now(), lock_ttl=lock_ttl
            )
        return found

    async def _release(self, request: _Request, token: str | None) -> None:
        if token is not None:
            with contextlib.suppress(CacheBackendError):
                await self.backend.release(request.keys, token)

    async def _miss(
        self, request: _Request, found: Lookup, receive: Receive, send: Send
    ) -> Entry | None:
        rule = request.rule
        if self.lock_timeout is not None and found.lock_token is None and not request.head:
            waited = await self._wait_for_filler(request)
            if isinstance(waited, Entry):
                _emit(rule, "hit", "collapsed")
                await self._send_entry(request, waited, send, ("hit", "collapsed"), self._now())
                return waited
            if waited is not None:
                found = waited
        _emit(rule, "miss")
        return await self._fill(request, found, receive, send, ("fwd=miss",))

    async def _wait_for_filler(self, request: _Request) -> Entry | Lookup | None:
        """Another instance holds the fill lock: wait for its entry, up to ``lock_wait``.

        Returns the entry, or a lookup that took the lock (the filler gave up),
        or ``None`` when the wait ran out or the backend failed.
        """
        for _ in range(int(self.lock_wait / self.poll_interval)):
            await asyncio.sleep(self.poll_interval)
            try:
                found = await self._lookup(request, lock=True)
            except CacheBackendError:
                return None
            if found.usable and self._now() <= found.fresh_until:
                assert found.data is not None
                await self._release(request, found.lock_token)
                return Entry.decode(found.data)
            if found.lock_token is not None:
                return found
        return None

    async def _fill(
        self,
        request: _Request,
        found: Lookup,
        receive: Receive,
        send: Send | None,
        status_params: tuple[str, ...],
    ) -> Entry | None:
        """Run the app; store its response if allowed; answer (unless ``send`` is None)."""
        rule = request.rule
        if request.head:
            # A HEAD response has no body to store for GET; pass it through.
            await self._release(request, found.lock_token)
            if send is not None:
                await self._bypass(rule, "head", request.scope, receive, send)
            return None
        capture = _Capture(rule, send, status_params)
        try:
            await self.app(request.scope, receive, capture)
        finally:
            if not capture.complete or capture.passing:
                await self._release(request, found.lock_token)
        now = self._now()
        entry = capture.entry(now)
        if entry is None:
            return None
        response_vary = tuple(name for name in capture.vary if name not in rule.vary_headers)
        if response_vary != request.keys.vary:
            self._vary[rule.name] = response_vary
            request.keys = self._keys(request.headers, request.digest, request.tags, response_vary)
        stored = False
        try:
            stored = await self.backend.store(
                request.keys,
                request.tags,
                data=entry.encode(),
                versions=found.versions,
                fresh_until=now + rule.ttl,
                expire=rule.ttl + rule.stale_ttl,
                lock_token=found.lock_token,
            )
            _emit(rule, "store" if stored else "skip", "" if stored else "invalidated")
        except CacheBackendError:
            _emit(rule, "error", "store")
        if send is not None:
            params = (*status_params, "stored") if stored else status_params
            await self._send_entry(request, entry, send, params, None)
        return entry if stored else None

    async def _send_entry(
        self,
        request: _Request,
        entry: Entry,
        send: Send,
        status_params: tuple[str, ...],
        now: float | None,
    ) -> None:
        """Answer with ``entry``: 304 when If-None-Match matches, no body for HEAD."""
        extra = [cache_status(*status_params)]
        if now is not None:
            extra.append((b"age", str(max(0, int(now - entry.stored_at))).encode()))
        if_none_match = header_values(request.headers, b"if-none-match")
        if if_none_match and if_none_match_matches(if_none_match, entry.etag):
            headers = [(k, v) for k, v in entry.headers if k in _NOT_MODIFIED_HEADERS]
            await send({"type": "http.response.start", "status": 304, "headers": headers + extra})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await send(
            {
                "type": "http.response.start",
                "status": entry.status,
                "headers": [*entry.headers, *extra],
            }
        )
        body = b"" if request.head else entry.body
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _invalidating(
        self, rule: CacheRule, params: dict[str, str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        user = self.identity(scope) if rule.vary_user else None
        if rule.vary_user and user is None:
            await self.app(scope, receive, send)
            return
        tags = rule.tags_for(params, user, lambda: self._request(scope, params))

        async def send_after_invalidating(message: Message) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                # Before the client hears of the write, so it never reads stale after it.
                try:
                    await self.backend.invalidate(*tags)
                    _emit(rule, "invalidate")
                except CacheBackendError as exc:
                    _emit(rule, "error", "invalidate")
                    _logger.warning("cache invalidation failed", rule=rule.name, error=str(exc))
            await send(message)

        await self.app(scope, receive, send_after_invalidating)
