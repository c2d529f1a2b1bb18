"""``RateLimitMiddleware``: pure ASGI rate limiting with IETF ``RateLimit`` headers.

A request passes three stages, each in its own module:

1. **plan** (:mod:`~scalekit.ratelimit.plan`): which limits cover it,
   grouped by the identity they count against — pure, no I/O;
2. **enforce** (here): one backend call per identity, behind the circuit
   breaker; the :mod:`~scalekit.ratelimit.outcomes` are admitted,
   rejected (earlier hits refunded) or unavailable (a rule fails closed);
3. **respond** (:mod:`~scalekit.ratelimit.responses`): the 429, the 503, or
   the app's response with the ``RateLimit`` fields, after which a
   successful response is refunded to the ``count="failures"`` rules.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scalekit import events
from scalekit._breaker import CircuitBreaker
from scalekit._clock import Clock
from scalekit._net import ClientIP, ForwardedHeader
from scalekit._prefetch import SCOPE_KEY as PREFETCHED
from scalekit._prefetch import Prefetch, Prefetcher
from scalekit.ratelimit import responses
from scalekit.ratelimit.backends import (
    LimitCheck,
    Mode,
    RateLimitBackend,
    Strategy,
    Verdict,
    backend_from_url,
)
from scalekit.ratelimit.errors import RateLimitConfigError, RateLimitUnavailable, choice
from scalekit.ratelimit.keys import CLIENT_IP_SCOPE_KEY
from scalekit.ratelimit.outcomes import Admitted, Checked, Outcome, Rejected, Unavailable
from scalekit.ratelimit.plan import Plan, Planner
from scalekit.ratelimit.rules import OnBackendError, Rule

__all__ = ["RateLimitMiddleware"]

_logger = structlog.get_logger("scalekit.ratelimit")


class RateLimitMiddleware:
    """Limits requests per client, user or key, with counters in memory or Redis.

    Every rule that matches a request is checked; all rules keyed on the same
    identity are checked in one backend call (one Redis round trip), and a
    request rejected by any rule consumes nothing from any of them. Rules keyed
    on different identities cost one call each, in the order the rules are
    listed; a rejection by a later call refunds the earlier ones.

    Args:
        app: the ASGI app to protect.
        storage: ``"memory://"``, a Redis URL (``redis://``, ``rediss://``,
            ``redis+sentinel://…``, ``redis+cluster://…``) or a backend object.
        rules: the :class:`Rule` list.
        strategy: a :class:`~scalekit.ratelimit.Strategy` or its value:
            ``"sliding-window-counter"`` (default), ``"fixed-window"`` or
            ``"moving-window"``, as the ``limits`` package defines them.
        trusted_proxies: CIDRs of the proxies whose ``forwarded_header`` is believed.
        forwarded_header: the one header your proxy puts the client address in:
            ``"x-forwarded-for"`` (default), ``"forwarded"`` or ``"x-real-ip"``;
            other forwarding headers in a request are ignored.
        on_backend_error: ``"allow"`` (fail open, the default) or ``"deny"``
            (503 with ``Retry-After``) when the backend fails; a rule may
            override it.
        headers: send ``RateLimit-Policy`` and ``RateLimit`` on covered responses.
        legacy_headers: also send ``X-RateLimit-Limit``, ``-Remaining``, ``-Reset``.
        ipv6_prefix: IPv6 clients are keyed by this prefix (default /64).
        clock: the clock every time-based rule reads — the windows (also on
            Redis, instead of its ``TIME``) and the breaker; for tests. Leave
            it out in production.
        breaker: the circuit breaker of the Redis backend built from ``storage``
            (a backend object passed as ``storage`` brings its own).
        key_prefix: prefix of every Redis key.

    Raises:
        RateLimitConfigError: an invalid strategy, setting or duplicate rule name.
    """

    def __init__(
        self,
        app: ASGIApp,
        storage: str | RateLimitBackend,
        rules: Sequence[Rule],
        *,
        strategy: Strategy | str = Strategy.SLIDING_WINDOW_COUNTER,
        trusted_proxies: Iterable[str] = (),
        forwarded_header: ForwardedHeader | str = ForwardedHeader.X_FORWARDED_FOR,
        on_backend_error: OnBackendError | str = OnBackendError.ALLOW,
        headers: bool = True,
        legacy_headers: bool = False,
        ipv6_prefix: int | None = 64,
        clock: Clock | None = None,
        breaker: CircuitBreaker | None = None,
        key_prefix: str = "rl",
    ) -> None:
        self.strategy = choice(Strategy, strategy, "strategy")
        self.on_backend_error = choice(OnBackendError, on_backend_error, "on_backend_error")
        self.rules = _checked_rules(rules)
        if "{" in key_prefix or "}" in key_prefix:
            raise RateLimitConfigError(f"key_prefix must not contain braces, got {key_prefix!r}")
        if breaker is not None and not isinstance(storage, str):
            raise RateLimitConfigError(
                "breaker= configures the Redis backend built from a storage URL; "
                "pass it to the backend instead: RedisRateLimitBackend(url, breaker=...)"
            )
        try:
            header = ForwardedHeader.parse(forwarded_header)
            client_ip = ClientIP(trusted_proxies, ipv6_prefix=ipv6_prefix, header=header)
        except ValueError as exc:
            raise RateLimitConfigError(str(exc)) from exc
        self.app = app
        self.key_prefix = key_prefix
        self.backend: RateLimitBackend = (
            backend_from_url(storage, clock=clock, breaker=breaker)
            if isinstance(storage, str)
            else storage
        )
        self.breaker: CircuitBreaker | None = getattr(self.backend, "breaker", None)
        """The backend's circuit breaker, if it has one (the Redis backend does)."""
        self.fields = responses.HeaderFields(enabled=headers, legacy=legacy_headers)
        self._planner = Planner(
            self.rules, strategy=self.strategy, key_prefix=key_prefix, client_ip=client_ip
        )
        self._prefetcher: Prefetcher | None = None

    def prefetch_with(self, prefetcher: Prefetcher | None) -> None:
        """Send ``prefetcher``'s lookup for a request with its first check (the stack wires it).

        Only for a backend whose checks can carry it (``RedisRateLimitBackend``
        on standalone Redis) and a lookup on the same Redis; the answer is
        handed to the app in the scope, never for a rejected request.
        """
        self._prefetcher = prefetcher

    async def aclose(self) -> None:
        """Close the backend's connections (also done at lifespan shutdown)."""
        await self.backend.aclose()

    def plan(self, scope: Scope) -> Plan:
        """Which limits cover this request, per identity (pure: no backend call)."""
        return self._planner.plan(scope)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        plan = self._planner.plan(scope)
        if not plan.groups:
            await self.app(scope, receive, send)
            return
        scope[CLIENT_IP_SCOPE_KEY] = plan.client_ip
        prefetch = self._prefetcher(scope) if self._prefetcher is not None else None
        outcome = await self._enforce(plan, prefetch)
        if prefetch is not None and prefetch.answered and isinstance(outcome, Admitted):
            scope[PREFETCHED] = prefetch
        if isinstance(outcome, Rejected):
            await responses.send_too_many_requests(send, outcome, self.fields)
        elif isinstance(outcome, Unavailable):
            await responses.send_unavailable(send, self._retry_after_unavailable())
        else:
            await self._serve(scope, receive, send, outcome)

    async def _enforce(self, plan: Plan, prefetch: Prefetch | None = None) -> Outcome:
        """One backend call per identity, in rule order; stop at the first no.

        ``prefetch`` travels with the first call.
        """
        passed: list[Checked] = []
        failed_open = False
        for group in plan.groups:
            verdict = await self._call(group.checks, prefetch=prefetch)
            if verdict is None and prefetch is not None:
                prefetch.forget()  # its round trip failed: the cache looks up on its own
            prefetch = None
            if verdict is None:
                self._decide(group.rule_names, "error")
                if group.fails_closed(self.on_backend_error):
                    events.emit(events.DegradedRequest("ratelimit", "fail_closed"))
                    await self._refund(passed)
                    return Unavailable(group)
                failed_open = True
            elif not verdict.allowed:
                await self._refund(passed)
                rejected = Rejected(Checked(group, verdict), tuple(passed))
                self._decide_rejection(rejected)
                return rejected
            else:
                passed.append(Checked(group, verdict))
        if failed_open:
            events.emit(events.DegradedRequest("ratelimit", "fail_open"))
        if events.bus.has_listeners(events.RateLimitDecision):
            self._decide({name for one in passed for name in one.group.rule_names}, "allowed")
        return Admitted(tuple(passed), failed_open)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, admitted: Admitted) -> None:
        """The app's response with the ``RateLimit`` fields; a success refunded afterwards."""
        fields = self.fields.most_restrictive(admitted.checked)
        refunded_on_success = admitted.refunded_on_success()
        if not fields and not refunded_on_success:
            await self.app(scope, receive, send)
            return
        response = responses.ResponseWatcher(send, fields)
        try:
            await self.app(scope, receive, response)
        finally:
            if refunded_on_success and not response.failed:
                for checked in refunded_on_success:
                    await self._call(checked.group.success_refunds(), at=checked.verdict.at)

    async def _call(
        self,
        checks: Sequence[LimitCheck],
        at: float | None = None,
        *,
        prefetch: Prefetch | None = None,
    ) -> Verdict | None:
        """One backend call; ``None`` when the backend is unavailable.

        The backend's breaker and its failure reports (one per failed round
        trip) live in the backend: a request here is not a round trip.
        """
        try:
            if prefetch is not None:
                return await self.backend.check(checks, at, prefetch=prefetch)  # type: ignore[call-arg]
            return await self.backend.check(checks, at)
        except RateLimitUnavailable:
            return None
        except Exception as exc:  # a backend's own bug degrades too; never a 500
            _logger.warning("ratelimit_backend_error", error=repr(exc))
            events.emit(events.BackendError("ratelimit", "check", repr(exc)))
            return None

    async def _refund(self, passed: list[Checked]) -> None:
        """Give back the hits of identities checked before a rejection or a 503."""
        for checked in passed:
            refunds = [
                dataclasses.replace(check, mode=Mode.REFUND)
                for check in checked.group.checks
                if check.mode is Mode.HIT
            ]
            if refunds:
                await self._call(refunds, at=checked.verdict.at)

    def _retry_after_unavailable(self) -> int:
        # An open breaker's probe tries Redis every probe_interval and closes
        # it on the first answer; without a breaker, one second.
        if self.breaker is None:
            return 1
        return max(1, math.ceil(min(self.breaker.probe_interval, self.breaker.cooldown)))

    def _decide_rejection(self, rejected: Rejected) -> None:
        if not events.bus.has_listeners(events.RateLimitDecision):
            return
        limited = {
            limit.rule.name for limit, result in rejected.rejecting.results() if not result.ok
        }
        allowed = rejected.rejecting.group.rule_names - limited
        for checked in rejected.passed:
            allowed |= checked.group.rule_names
        self._decide(limited, "limited")
        self._decide(allowed, "allowed")

    def _decide(self, rule_names: set[str], decision: str) -> None:
        if rule_names and events.bus.has_listeners(events.RateLimitDecision):
            for name in sorted(rule_names):
                events.emit(events.RateLimitDecision(name, decision))

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.aclose()
            await send(message)

        await self.app(scope, receive, lifespan_send)


def _checked_rules(rules: Sequence[Rule]) -> list[Rule]:
    checked = list(rules)
    for rule in checked:
        if not isinstance(rule, Rule):
            raise RateLimitConfigError(f"rules must be Rule objects, got {rule!r}")
    names = [rule.name for rule in checked]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise RateLimitConfigError(
            f"rule names must be unique (they name counters and headers): {duplicates}; "
            "pass name= to tell them apart"
        )
    return checked
