"""The first step of a limited request: which limits cover it, counted against whom.

:meth:`Planner.plan` is pure: it reads the ASGI scope and returns a
:class:`Plan` — the client IP and, per identity, the limits that cover the
request with the backend checks that enforce them — without calling the
backend or writing to the scope. What does not depend on the request
(policy names, key suffixes, header values) is computed once per limit when
the middleware is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from starlette.types import Scope

from scalekit._net import ClientIP
from scalekit.ratelimit.keys import CLIENT_IP_SCOPE_KEY, client_ip, identity_of, identity_tag
from scalekit.ratelimit.protocol import LimitCheck, Mode, Strategy
from scalekit.ratelimit.rules import Count, OnBackendError, Rate, Rule

__all__ = ["NOTHING", "IdentityLimits", "Limit", "Plan", "Planner"]


@dataclasses.dataclass(frozen=True, slots=True)
class Limit:
    """One rate of one rule, with everything about it that is the same for every request."""

    rule: Rule
    rate: Rate
    policy: str
    """Its name in the headers: the rule's name, then ``name-2``, ``name-3`` for more rates."""
    suffix: str
    """The counter key after the identity's tag: ``name:amount/window:strategy``."""
    mode: Mode
    """``HIT``: consumed on admission (a ``"failures"`` limit is refunded on success)."""
    policy_field: bytes
    """The whole ``RateLimit-Policy`` value."""


@dataclasses.dataclass(slots=True)
class IdentityLimits:
    """The limits one identity must pass for this request: one backend call."""

    identity: str
    limits: tuple[Limit, ...]
    checks: tuple[LimitCheck, ...]
    """One per limit, in the same order."""
    counts_failures: bool
    """Some of the limits are ``count="failures"`` rules: a successful response is refunded."""

    @property
    def rule_names(self) -> set[str]:
        """The names of the rules behind these limits."""
        return {limit.rule.name for limit in self.limits}

    def fails_closed(self, default: OnBackendError) -> bool:
        """Whether a backend failure must deny the request (any rule says ``deny``)."""
        return any(
            (limit.rule.on_backend_error or default) is OnBackendError.DENY for limit in self.limits
        )

    def success_refunds(self) -> tuple[LimitCheck, ...]:
        """The checks that give a successful response back to the ``count="failures"`` rules."""
        return tuple(
            dataclasses.replace(check, mode=Mode.REFUND)
            for check, limit in zip(self.checks, self.limits, strict=True)
            if limit.rule.count is Count.FAILURES
        )


@dataclasses.dataclass(slots=True)
class Plan:
    """What one request is limited by; ``groups`` is empty when no rule covers it."""

    client_ip: str
    groups: tuple[IdentityLimits, ...]


NOTHING = Plan("", ())
"""The plan of a request no rule covers."""


class Planner:
    """Turns a request's scope into its :class:`Plan`.

    Args:
        rules: the middleware's rules, in order.
        strategy: how every limit counts.
        key_prefix: the first part of every counter key.
        client_ip: resolves the client IP (trusted proxies, forwarding header).
    """

    def __init__(
        self, rules: Sequence[Rule], *, strategy: Strategy, key_prefix: str, client_ip: ClientIP
    ) -> None:
        self.strategy = strategy
        self.key_prefix = key_prefix
        self._client_ip = client_ip
        self._rules = [(rule, _limits_of(rule, strategy, rule.rates)) for rule in rules]
        # Limits of callable-limit rules, per rate text: built once, like the static ones.
        self._dynamic: dict[tuple[int, tuple[Rate, ...]], tuple[Limit, ...]] = {}

    def plan(self, scope: Scope) -> Plan:
        """The limits covering this request, grouped by the identity they count against."""
        method, path, root_path = scope["method"], scope["path"], scope.get("root_path", "")
        matched = [
            (rule, limits)
            for rule, limits in self._rules
            if rule.matches(method, path, root_path)
            and not (rule.exempt is not None and rule.exempt(scope))
        ]
        if not matched:
            return NOTHING
        ip = self._client_ip(scope)
        keyed: dict[str, Any] | None = None  # the scope key functions see, with the IP in it
        groups: dict[str, list[Limit]] = {}
        for rule, limits in matched:
            if rule.dynamic:
                limits = self._limits_for(rule, rule.rates_for(scope))
            if rule.key is client_ip:
                identity = "ip:" + ip
            else:
                if keyed is None:
                    keyed = {**scope, CLIENT_IP_SCOPE_KEY: ip}
                identity = identity_of(rule.key, keyed)
            groups.setdefault(identity, []).extend(limits)
        return Plan(
            ip, tuple(self._checks(identity, limits) for identity, limits in groups.items())
        )

    def _limits_for(self, rule: Rule, rates: tuple[Rate, ...]) -> tuple[Limit, ...]:
        key = (id(rule), rates)
        found = self._dynamic.get(key)
        if found is None:
            if len(self._dynamic) >= 1024:  # a callable returning ever new rates: stay bounded
                self._dynamic.clear()
            found = self._dynamic[key] = _limits_of(rule, self.strategy, rates)
        return found

    def _checks(self, identity: str, limits: list[Limit]) -> IdentityLimits:
        prefix = f"{self.key_prefix}:{identity_tag(identity)}:"
        strategy = self.strategy
        checks = tuple(
            [
                LimitCheck(
                    prefix + limit.suffix,
                    strategy,
                    limit.rate.amount,
                    limit.rate.window,
                    limit.rule.cost,
                    limit.mode,
                )
                for limit in limits
            ]
        )
        counts_failures = any(limit.rule.count is Count.FAILURES for limit in limits)
        return IdentityLimits(identity, tuple(limits), checks, counts_failures)


def _limits_of(rule: Rule, strategy: Strategy, rates: tuple[Rate, ...]) -> tuple[Limit, ...]:
    # A "failures" rule is consumed on admission too and refunded when the response
    # succeeds: checked only (and counted after a failure), N concurrent guesses all
    # found the window open and all got through.
    mode = Mode.HIT
    limits = []
    for index, rate in enumerate(rates):
        policy = rule.name if index == 0 else f"{rule.name}-{index + 1}"
        limits.append(
            Limit(
                rule,
                rate,
                policy,
                f"{rule.name}:{rate.amount}/{rate.window}:{strategy.short}",
                mode,
                f'"{policy}";q={rate.amount};w={rate.window}'.encode(),
            )
        )
    return tuple(limits)
