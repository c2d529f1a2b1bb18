"""``RateLimitMiddleware``: pure ASGI rate limiting with IETF ``RateLimit`` headers."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import structlog

from scalekit import events
from scalekit._breaker import CircuitBreaker
from scalekit._clock import Clock
from scalekit._net import ClientIP, ForwardedHeader
from scalekit.ratelimit.backends import (
    STRATEGIES,
    Backend,
    Check,
    CheckResult,
    Verdict,
    backend_from_url,
)
from scalekit.ratelimit.errors import BackendUnavailable, RateLimitConfigError
from scalekit.ratelimit.keys import CLIENT_IP_SCOPE_KEY, client_ip, identity_of, identity_tag
from scalekit.ratelimit.rules import Rate, Rule

__all__ = ["RateLimitMiddleware"]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]
ASGIApp = Callable[[Scope, Receive, Send], Any]

_logger = structlog.get_logger("scalekit.ratelimit")


@dataclasses.dataclass(frozen=True, slots=True)
class _Limit:
    """One rate of one rule, with its policy name and key suffix."""

    rule: Rule
    rate: Rate
    policy: str
    suffix: str
    mode: str  # "hit" for count="all", "peek" for count="failures"
    policy_field: bytes  # the whole RateLimit-Policy value, fixed per limit


@dataclasses.dataclass(slots=True)
class _Checked:
    """The result of one backend call for one identity's limits."""

    limits: list[_Limit]
    checks: list[Check]
    verdict: Verdict


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
        strategy: ``"sliding-window-counter"`` (default), ``"fixed-window"``
            or ``"moving-window"``, as the ``limits`` package defines them.
        trusted_proxies: CIDRs of the proxies whose ``forwarded_header`` is believed.
        forwarded_header: the one header your proxy puts the client address in:
            ``"x-forwarded-for"`` (default), ``"forwarded"`` or ``"x-real-ip"``;
            other forwarding headers in a request are ignored.
        on_backend_error: ``"allow"`` (fail open, the default) or ``"deny"``
            (503) when the backend fails; a rule may override it.
        headers: send ``RateLimit-Policy`` and ``RateLimit`` on covered responses.
        legacy_headers: also send ``X-RateLimit-Limit``, ``-Remaining``, ``-Reset``.
        ipv6_prefix: IPv6 clients are keyed by this prefix (default /64).
        clock: the clock the memory backend and the Redis backend's breaker read.
        breaker: the circuit breaker of the Redis backend built from ``storage``
            (a backend object passed as ``storage`` brings its own).
        key_prefix: prefix of every Redis key.

    Raises:
        RateLimitConfigError: an invalid strategy, setting or duplicate rule name.
    """

    def __init__(
        self,
        app: ASGIApp,
        storage: str | Backend,
        rules: Sequence[Rule],
        *,
        strategy: str = "sliding-window-counter",
        trusted_proxies: Iterable[str] = (),
        forwarded_header: ForwardedHeader | str = ForwardedHeader.X_FORWARDED_FOR,
        on_backend_error: str = "allow",
        headers: bool = True,
        legacy_headers: bool = False,
        ipv6_prefix: int | None = 64,
        clock: Clock | None = None,
        breaker: CircuitBreaker | None = None,
        key_prefix: str = "rl",
    ) -> None:
        if strategy not in STRATEGIES:
            raise RateLimitConfigError(
                f"strategy must be one of {', '.join(sorted(STRATEGIES))}, got {strategy!r}"
            )
        if on_backend_error not in ("allow", "deny"):
            raise RateLimitConfigError(
                f"on_backend_error must be 'allow' or 'deny', got {on_backend_error!r}"
            )
        rules = list(rules)
        for rule in rules:
            if not isinstance(rule, Rule):
                raise RateLimitConfigError(f"rules must be Rule objects, got {rule!r}")
        names = [rule.name for rule in rules]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise RateLimitConfigError(
                f"rule names must be unique (they name counters and headers): {duplicates}; "
                "pass name= to tell them apart"
            )
        if "{" in key_prefix or "}" in key_prefix:
            raise RateLimitConfigError(f"key_prefix must not contain braces, got {key_prefix!r}")
        if breaker is not None and not isinstance(storage, str):
            raise RateLimitConfigError(
                "breaker= configures the Redis backend built from a storage URL; "
                "pass it to the backend instead: RedisBackend(url, breaker=...)"
            )
        self.app = app
        self.rules = rules
        self.strategy = strategy
        self.on_backend_error = on_backend_error
        self.headers = headers
        self.legacy_headers = legacy_headers
        self.key_prefix = key_prefix
        self.backend: Backend = (
            backend_from_url(storage, clock=clock, breaker=breaker)
            if isinstance(storage, str)
            else storage
        )
        self.breaker: CircuitBreaker | None = getattr(self.backend, "breaker", None)
        """The backend's circuit breaker, if it has one (the Redis backend does)."""
        try:
            header = ForwardedHeader.parse(forwarded_header)
            self._client_ip = ClientIP(trusted_proxies, ipv6_prefix=ipv6_prefix, header=header)
        except ValueError as exc:
            raise RateLimitConfigError(str(exc)) from exc
        self._short_strategy = STRATEGIES[strategy]
        self._limits: dict[int, list[_Limit]] = {}
        for rule in rules:
            self._limits[id(rule)] = [
                _Limit(
                    rule,
                    rate,
                    policy,
                    f"{rule.name}:{rate.amount}/{rate.window}:{self._short_strategy}",
                    "hit" if rule.count == "all" else "peek",
                    f'"{policy}";q={rate.amount};w={rate.window}'.encode(),
                )
                for index, rate in enumerate(rule.rates)
                for policy in [rule.name if index == 0 else f"{rule.name}-{index + 1}"]
            ]
        self._counts_failures = any(rule.count == "failures" for rule in rules)

    async def aclose(self) -> None:
        """Close the backend's connections (also done at lifespan shutdown)."""
        await self.backend.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.app(scope, receive, self._lifespan_send(send))
            else:
                await self.app(scope, receive, send)
            return
        method = scope["method"]
        path, root_path = scope["path"], scope.get("root_path", "")
        matched = [
            rule
            for rule in self.rules
            if rule.matches(method, path, root_path)
            and not (rule.exempt is not None and rule.exempt(scope))
        ]
        if not matched:
            await self.app(scope, receive, send)
            return
        ip = scope[CLIENT_IP_SCOPE_KEY] = self._client_ip(scope)
        groups: dict[str, list[_Limit]] = {}
        for rule in matched:
            identity = "ip:" + ip if rule.key is client_ip else identity_of(rule.key, scope)
            groups.setdefault(identity, []).extend(self._limits[id(rule)])

        done: list[tuple[str, _Checked]] = []
        failed_open = False
        for identity, limits in groups.items():
            tag = identity_tag(identity)
            checks = [
                Check(
                    f"{self.key_prefix}:{tag}:{limit.suffix}",
                    self._short_strategy,
                    limit.rate.amount,
                    limit.rate.window,
                    limit.rule.cost,
                    limit.mode,
                )
                for limit in limits
            ]
            verdict = await self._call(checks)
            if verdict is None:
                self._decide({limit.rule.name for limit in limits}, "error")
                if any(self._policy(limit.rule) == "deny" for limit in limits):
                    events.emit(events.DegradedRequest("ratelimit", "fail_closed"))
                    await self._refund(done)
                    await _send_json(send, 503, _unavailable_body(), [])
                    return
                failed_open = True
                continue
            if not verdict.allowed:
                await self._refund(done)
                await self._reject(send, limits, verdict, done)
                return
            done.append((identity, _Checked(limits, checks, verdict)))

        if failed_open:
            events.emit(events.DegradedRequest("ratelimit", "fail_open"))
        if events.bus.has_listeners(events.RateLimitDecision):
            self._decide({limit.rule.name for _, c in done for limit in c.limits}, "allowed")
        extra = self._headers_for(done) if self.headers else []
        failures = (
            [
                (identity, checked)
                for identity, checked in done
                if any(limit.mode == "peek" for limit in checked.limits)
            ]
            if self._counts_failures
            else []
        )
        if not extra and not failures:
            await self.app(scope, receive, send)
            return

        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if extra:
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if failures and status >= 400:
                await self._count_failures(failures)

    def _policy(self, rule: Rule) -> str:
        return rule.on_backend_error or self.on_backend_error

    async def _call(self, checks: list[Check], at: float | None = None) -> Verdict | None:
        """One backend call; ``None`` when the backend is unavailable.

        The backend's breaker and its failure reports (one per failed round
        trip) live in the backend: a request here is not a round trip.
        """
        try:
            return await self.backend.check(checks, at)
        except BackendUnavailable:
            return None
        except Exception as exc:  # a backend's own bug degrades too; never a 500
            _logger.warning("ratelimit_backend_error", error=repr(exc))
            events.emit(events.BackendError("ratelimit", "check", repr(exc)))
            return None

    async def _refund(self, done: list[tuple[str, _Checked]]) -> None:
        for _, checked in done:
            refunds = [
                dataclasses.replace(check, mode="refund")
                for check in checked.checks
                if check.mode == "hit"
            ]
            if refunds:
                await self._call(refunds, at=checked.verdict.at)

    async def _count_failures(self, failures: list[tuple[str, _Checked]]) -> None:
        for _, checked in failures:
            adds = [
                dataclasses.replace(check, mode="add")
                for check, limit in zip(checked.checks, checked.limits, strict=True)
                if limit.rule.count == "failures"
            ]
            await self._call(adds)

    async def _reject(
        self,
        send: Send,
        limits: list[_Limit],
        verdict: Verdict,
        done: list[tuple[str, _Checked]],
    ) -> None:
        failed = [
            (limit, result)
            for limit, result in zip(limits, verdict.results, strict=True)
            if not result.ok
        ]
        limit, result = max(failed, key=lambda pair: pair[1].reset)
        retry_after = max(1, math.ceil(result.reset))
        self._decide({limit.rule.name for limit, _ in failed}, "limited")
        passed = {limit.rule.name for limit in limits} - {limit.rule.name for limit, _ in failed}
        self._decide(passed | {lim.rule.name for _, c in done for lim in c.limits}, "allowed")
        headers = [(b"retry-after", str(retry_after).encode())]
        if self.headers:
            headers += self._header_fields(limit, result.remaining, retry_after)
        body = {
            "error": "rate_limited",
            "detail": f"Rate limit {limit.rate.text} exceeded ({limit.rule.name}); "
            f"retry in {retry_after} s",
            "retry_after": retry_after,
        }
        await _send_json(send, 429, body, headers)

    def _headers_for(self, done: list[tuple[str, _Checked]]) -> list[tuple[bytes, bytes]]:
        best: tuple[_Limit, CheckResult] | None = None
        for _, checked in done:
            for limit, result in zip(checked.limits, checked.verdict.results, strict=True):
                if best is None or (result.remaining, -result.reset) < (
                    best[1].remaining,
                    -best[1].reset,
                ):
                    best = (limit, result)
        if best is None:
            return []
        limit, result = best
        return self._header_fields(limit, result.remaining, max(0, math.ceil(result.reset)))

    def _header_fields(
        self, limit: _Limit, remaining: int, reset: int
    ) -> list[tuple[bytes, bytes]]:
        fields = [
            (b"ratelimit-policy", limit.policy_field),
            (b"ratelimit", f'"{limit.policy}";r={remaining};t={reset}'.encode()),
        ]
        if self.legacy_headers:
            fields += [
                (b"x-ratelimit-limit", str(limit.rate.amount).encode()),
                (b"x-ratelimit-remaining", str(remaining).encode()),
                (b"x-ratelimit-reset", str(reset).encode()),
            ]
        return fields

    def _decide(self, rule_names: set[str], decision: str) -> None:
        if rule_names and events.bus.has_listeners(events.RateLimitDecision):
            for name in sorted(rule_names):
                events.emit(events.RateLimitDecision(name, decision))

    def _lifespan_send(self, send: Send) -> Send:
        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.aclose()
            await send(message)

        return lifespan_send


def _unavailable_body() -> dict[str, Any]:
    return {
        "error": "rate_limit_unavailable",
        "detail": "The rate limiter's backend is unavailable and this route fails closed.",
    }


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]
) -> None:
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
