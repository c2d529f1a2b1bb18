"""The response cache middleware (pure ASGI): what each request gets.

One request, stage by stage:

1. **match** the first rule whose path matches (no rule: the app, untouched);
2. **plan** (:mod:`~scalekit.cache.plan`): bypass (credentials, no identity,
   a request directive the rule honours) or compute the request's keys once;
3. **look up** (one backend call): a fresh entry is served, a stale one is
   served and then refreshed by the request that took the fill lock;
4. on a **miss**, single flight (:mod:`~scalekit.cache.flight`) says whether
   to lead the fill, follow another request's, or compute alone;
5. **fill**: the app writes into a :class:`~scalekit.cache.capture.ResponseCapture`;
   a storable response is shared with the followers, stored, then sent.

Unsafe methods listed in a rule's ``invalidate_on`` invalidate its tags
before their response starts. Answers are written by
:mod:`~scalekit.cache.respond`; storage is the backend's business.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import anyio
import structlog
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scalekit import events
from scalekit._clock import Clock, get_clock
from scalekit._prefetch import SCOPE_KEY as PREFETCHED
from scalekit._prefetch import Prefetch
from scalekit.cache import respond
from scalekit.cache.capture import Captured, ResponseCapture
from scalekit.cache.entry import Entry
from scalekit.cache.errors import CacheBackendError, CacheConfigError
from scalekit.cache.flight import Alone, Flight, Follow, Lead, Shared, SingleFlight, Unshared
from scalekit.cache.plan import (
    Bypass,
    CacheRequest,
    Fresh,
    IdentityFunction,
    Missing,
    Stale,
    classify,
    has_identity,
    plan,
    user_identity,
)
from scalekit.cache.protocol import CacheBackend, Lookup
from scalekit.cache.rules import CacheRule

__all__ = ["CacheMiddleware", "IdentityFunction", "user_identity"]

_logger = structlog.get_logger("scalekit.cache")


def _emit(rule: CacheRule, event: str, reason: str = "") -> None:
    if events.bus.has_listeners(events.CacheEvent):
        events.emit(events.CacheEvent(rule.name, event, reason))


async def _empty_receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class CacheMiddleware:
    """Cache GET/HEAD responses of the routes that match a rule.

    Args:
        app: the ASGI app to wrap.
        backend: where entries live (:class:`RedisCache`, :class:`MemoryCache`).
        rules: the cacheable routes; the first rule whose path matches applies.
        identity: ``callable(scope) -> str | None`` for ``vary_user`` rules
            (default :func:`user_identity`: Starlette's authenticated user).
            A request with an identity bypasses rules without ``vary_user``.
        lock: take a short backend lock on a miss so one instance fills a key.
        lock_timeout: seconds the lock lives (a crashed filler frees it then).
        lock_wait: seconds another instance waits for the filler's result
            before computing itself.
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
        self.flights = SingleFlight(locking=lock, lock_wait=lock_wait, poll_interval=poll_interval)
        self._clock = clock
        self._warned_inner_auth = False
        # Response Vary names learned per rule, so a hit stays one lookup.
        self._vary: dict[str, tuple[str, ...]] = {}

    def _now(self) -> float:
        return (self._clock or get_clock()).time()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        matched = self._match(scope)
        if matched is None:
            await self.app(scope, receive, send)
            return
        rule, params = matched
        method = scope["method"]
        if method in ("GET", "HEAD"):
            await self._cacheable(rule, params, scope, receive, send)
        elif method in rule.invalidate_on:
            await self._invalidating(rule, params, scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _match(self, scope: Scope) -> tuple[CacheRule, dict[str, Any]] | None:
        path, root_path = scope["path"], scope.get("root_path", "")
        for rule in self.rules:
            params = rule.match(path, root_path)
            if params is not None:
                return rule, params
        return None

    def prefetch(self, scope: Scope) -> Prefetch | None:
        """The lookup this request would make, taking no fill lock, for the rate limiter to carry.

        None when the request would make none (not a GET or HEAD, no rule, a
        bypass, a refresh) or the backend cannot hand it over (see
        :meth:`RedisCache.prefetch`). The answer comes back in the scope;
        only a fresh hit is served from it.
        """
        make = getattr(self.backend, "prefetch", None)
        if make is None or scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            return None
        matched = self._match(scope)
        if matched is None:
            return None
        rule, params = matched
        planned = plan(
            rule, params, scope, identity=self.identity, vary=self._vary.get(rule.name, ())
        )
        if isinstance(planned, Bypass) or planned.refresh:
            return None
        prefetch: Prefetch | None = make(planned.keys, planned.tags, now=self._now())
        return prefetch

    def _prefetched(self, prefetch: Any, request: CacheRequest) -> Entry | None:
        """The fresh entry the rate limiter's combined round trip found, if any."""
        read = getattr(self.backend, "prefetched", None)
        if read is None or not isinstance(prefetch, Prefetch) or request.refresh:
            return None
        found: Lookup | None = read(prefetch, request.keys, request.tags)
        if found is None or not found.final:
            return None
        verdict = classify(found, self._now(), request.rule)
        return verdict.entry if isinstance(verdict, Fresh) else None

    # -- look up and answer -------------------------------------------------------------------

    async def _cacheable(
        self, rule: CacheRule, params: dict[str, Any], scope: Scope, receive: Receive, send: Send
    ) -> None:
        prefetch = scope.pop(PREFETCHED, None)
        planned = plan(
            rule, params, scope, identity=self.identity, vary=self._vary.get(rule.name, ())
        )
        if isinstance(planned, Bypass):
            await self._bypass(rule, planned.reason, scope, receive, send)
            return
        if prefetch is not None:
            entry = self._prefetched(prefetch, planned)
            if entry is not None:
                _emit(rule, "hit")
                now = self._now()
                await self._send(planned, entry, send, ("hit",), now)
                return
        try:
            # HEAD never fills, so it never takes the fill lock.
            request, found = await self._lookup(planned, lock=not (planned.head or planned.refresh))
        except CacheBackendError:
            await self._bypass(rule, "backend", scope, receive, send)
            return
        if request.refresh:
            _emit(rule, "miss", "request")
            await _Fill(self, request, found, send, ("fwd=request",), None).run(receive)
            return
        now = self._now()
        match classify(found, now, rule):
            case Fresh(entry):
                _emit(rule, "hit")
                await self._release(request, found.lock_token)
                await self._send(request, entry, send, ("hit",), now)
            case Stale(entry, ttl):
                _emit(rule, "stale")
                await self._send(request, entry, send, ("hit", f"ttl={ttl}"), now)
                if found.lock_token is not None:
                    await self._refresh(request, found)
            case Missing(reason):
                await self._miss(request, found, reason, receive, send)

    async def _lookup(self, request: CacheRequest, *, lock: bool) -> tuple[CacheRequest, Lookup]:
        """The backend's answer, after following a Vary marker to the right variant."""
        lock_ttl = self.lock_timeout if lock else None
        found = await self.backend.lookup(
            request.keys, request.tags, now=self._now(), lock_ttl=lock_ttl
        )
        if not found.final and found.marker is not None:
            vary = tuple(name for name in found.marker.split(",") if name)
            self._vary[request.rule.name] = vary
            request = request.with_vary(vary)
            found = await self.backend.lookup(
                request.keys, request.tags, now=self._now(), lock_ttl=lock_ttl
            )
        return request, found

    async def _miss(
        self, request: CacheRequest, found: Lookup, reason: str, receive: Receive, send: Send
    ) -> None:
        rule = request.rule
        if request.head:
            # A HEAD response has no body to serve GETs with: the app answers it.
            await self._bypass(rule, "head", request.scope, receive, send)
            return
        # An unreadable entry looks fresh to the backend, so no lock was taken and no other
        # instance is filling it: waiting for one would only stall.
        poll = None if reason == "corrupt" else _Poll(self, request)
        turn = await self.flights.turn(request.keys.variant, found, poll)
        flight: Flight | None = None
        match turn:
            case Follow(entry, keys, found):
                await self._release(request, found.lock_token)
                if keys is None or request.with_vary(keys.vary).keys.variant == keys.variant:
                    _emit(rule, "hit", "collapsed")
                    await self._send(request, entry, send, ("hit", "collapsed"), self._now())
                    return
            case Lead(found, flight):
                pass
            case Alone(found):
                pass
        _emit(rule, "miss", reason)
        await _Fill(self, request, found, send, ("fwd=miss",), flight).run(receive)

    async def _refresh(self, request: CacheRequest, found: Lookup) -> None:
        """Refresh a stale entry after its client has the whole stale answer."""
        try:
            await _Fill(self, request, found, None, ("fwd=stale",), None).run(_empty_receive)
        except Exception:
            _logger.exception("cache refresh failed", rule=request.rule.name)

    async def _send(
        self,
        request: CacheRequest,
        entry: Entry,
        send: Send,
        status_params: tuple[str, ...],
        now: float | None,
    ) -> None:
        await respond.send_entry(
            send,
            entry,
            request_headers=request.headers,
            head=request.head,
            status_params=status_params,
            now=now,
        )

    async def _bypass(
        self, rule: CacheRule, reason: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        _emit(rule, "bypass", reason)
        if reason == "backend":  # Redis failed or its breaker is open
            events.emit(events.DegradedRequest("cache", "bypass"))
        await respond.bypass(self.app, scope, receive, send, ("fwd=bypass", f"detail={reason}"))

    async def _release(self, request: CacheRequest, token: str | None) -> None:
        if token is None:
            return
        # Also when the request is being cancelled: a lock left behind stalls other instances.
        with anyio.CancelScope(shield=True), contextlib.suppress(CacheBackendError):
            await self.backend.release(request.keys, token)

    async def _store(
        self, request: CacheRequest, found: Lookup, entry: Entry, fresh_for: float, expire: float
    ) -> bool:
        rule = request.rule
        try:
            stored = await self.backend.store(
                request.keys,
                request.tags,
                data=entry.encode(),
                versions=found.versions,
                fresh_until=entry.stored_at + fresh_for,
                expire=expire,
                lock_token=found.lock_token,
            )
        except CacheBackendError:
            _emit(rule, "error", "store")
            return False
        _emit(rule, "store" if stored else "skip", "" if stored else "invalidated")
        return stored

    # -- invalidate ---------------------------------------------------------------------------

    async def _invalidating(
        self, rule: CacheRule, params: dict[str, Any], scope: Scope, receive: Receive, send: Send
    ) -> None:
        user = self.identity(scope) if rule.vary_user else None
        if rule.vary_user and user is None:
            await self.app(scope, receive, send)
            return
        tags = rule.tags_for(
            params,
            user,
            lambda: Request({**scope, "path_params": {**scope.get("path_params", {}), **params}}),
        )

        async def send_after_invalidating(message: Message) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 400:
                # Before the client hears of the write, so it never reads stale after it.
                # Any non-error status (RFC 9111, 4.4): a form's POST answered 303 (Post/
                # Redirect/Get) wrote too, and its client is sent straight to the list.
                try:
                    await self.backend.invalidate(*tags)
                    _emit(rule, "invalidate")
                except CacheBackendError as exc:
                    _emit(rule, "error", "invalidate")
                    _logger.warning("cache invalidation failed", rule=rule.name, error=str(exc))
            await send(message)

        await self.app(scope, receive, send_after_invalidating)


class _Poll:
    """Looks one request up again while it waits for another instance's fill."""

    def __init__(self, middleware: CacheMiddleware, request: CacheRequest) -> None:
        self.middleware = middleware
        self.request = request

    async def lookup(self) -> Lookup:
        _, found = await self.middleware._lookup(self.request, lock=True)
        return found

    def fresh_entry(self, found: Lookup) -> Entry | None:
        verdict = classify(found, self.middleware._now(), self.request.rule)
        return verdict.entry if isinstance(verdict, Fresh) else None


class _Fill:
    """One run of the app whose response may be stored: a miss, a refresh.

    As soon as the response is complete its entry is shared with the
    flight's followers, then stored, then sent to this request's client.
    """

    def __init__(
        self,
        middleware: CacheMiddleware,
        request: CacheRequest,
        found: Lookup,
        send: Send | None,
        status_params: tuple[str, ...],
        flight: Flight | None,
    ) -> None:
        self.middleware = middleware
        self.request = request
        self.found = found
        self.send = send
        self.status_params = status_params
        self.flight = flight
        self.lock_token = found.lock_token

    async def run(self, receive: Receive) -> None:
        capture = ResponseCapture(
            self.request.rule, self.send, self.status_params, self, identified=self._identified
        )
        try:
            await self.middleware.app(self.request.scope, receive, capture)
        finally:
            if self.flight is not None:
                self.flight.finish(Unshared("no-response"))
            await self._release()

    def _identified(self) -> bool:
        """Whether a request planned as anonymous has an identity once the app answers."""
        request = self.request
        if request.rule.vary_user or not has_identity(request.scope, self.middleware.identity):
            return False
        if not self.middleware._warned_inner_auth:
            self.middleware._warned_inner_auth = True
            _logger.warning(
                "request authenticated inside the cache",
                rule=request.rule.name,
                hint="put AuthenticationMiddleware (or what sets scope['user']) outside "
                "CacheMiddleware: such answers are never stored, but these requests are "
                "served what anonymous requests stored",
            )
        return True

    async def _release(self) -> None:
        token, self.lock_token = self.lock_token, None
        await self.middleware._release(self.request, token)

    async def passing(self, reason: str) -> None:
        _emit(self.request.rule, "skip", reason)
        if self.flight is not None:
            self.flight.finish(Unshared(reason))
        await self._release()

    async def complete(self, response: Captured) -> None:
        middleware, rule = self.middleware, self.request.rule
        entry = response.entry(middleware._now())
        vary = tuple(name for name in response.storable.vary if name not in rule.vary_headers)
        request = self.request.with_vary(vary)
        if request is not self.request:
            middleware._vary[rule.name] = vary
        if self.flight is not None:
            self.flight.finish(Shared(entry, request.keys))
        self.lock_token = None  # the store releases it
        storable = response.storable
        stored = await middleware._store(
            request,
            self.found,
            entry,
            storable.fresh_for,
            storable.fresh_for + storable.stale_for,
        )
        if self.send is not None:
            params = (*self.status_params, "stored") if stored else self.status_params
            await middleware._send(request, entry, self.send, params, None)
