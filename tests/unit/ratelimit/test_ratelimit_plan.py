"""The limiter's stages: a pure plan, named outcomes, StrEnums for its closed sets."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any

import pytest
import starlette.types
from rl_helpers import client, make_app

import scalekit.ratelimit.middleware as middleware_module
from scalekit.ratelimit import (
    Count,
    LimitCheck,
    MemoryRateLimitBackend,
    Mode,
    OnBackendError,
    RateLimitConfigError,
    RateLimitMiddleware,
    Rule,
    Strategy,
    Verdict,
    header,
    identity_tag,
    user,
)
from scalekit.ratelimit.plan import NOTHING, Plan


class _CountingBackend(MemoryRateLimitBackend):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[LimitCheck]] = []
        self.at: list[float | None] = []
        self.verdicts: list[Verdict] = []

    async def check(self, checks: Sequence[LimitCheck], at: float | None = None) -> Verdict:
        self.calls.append(list(checks))
        self.at.append(at)
        verdict = await super().check(checks, at)
        self.verdicts.append(verdict)
        return verdict


def http_scope(path: str = "/", method: str = "GET", **extra: Any) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": "",
        "client": ("203.0.113.7", 5000),
        "headers": [],
    }
    scope.update(extra)
    return scope


def test_plan_groups_limits_by_identity_without_touching_backend_or_scope() -> None:
    backend = _CountingBackend()
    rules = [
        Rule("10/second;100/hour", name="api"),
        Rule("5/minute", path="/items/{id}", name="items"),
        Rule("3/minute", key=header("X-API-Key"), name="per-key"),
        Rule("1/minute", path="/other", name="other"),
    ]
    limiter = RateLimitMiddleware(make_app(), backend, rules, strategy="fixed-window")
    scope = http_scope("/items/7", headers=[(b"x-api-key", b"k1")])
    before = copy.deepcopy(scope)

    plan = limiter.plan(scope)

    assert isinstance(plan, Plan)
    assert scope == before
    assert backend.calls == []
    assert plan.client_ip == "203.0.113.7"
    assert [group.identity for group in plan.groups] == ["ip:203.0.113.7", "header:x-api-key:k1"]
    by_ip, by_key = plan.groups
    assert [limit.policy for limit in by_ip.limits] == ["api", "api-2", "items"]
    tag = identity_tag("ip:203.0.113.7")
    assert [check.key for check in by_ip.checks] == [
        f"rl:{tag}:api:10/1:fixed",
        f"rl:{tag}:api:100/3600:fixed",
        f"rl:{tag}:items:5/60:fixed",
    ]
    assert {check.strategy for check in by_ip.checks} == {Strategy.FIXED_WINDOW}
    assert [limit.policy for limit in by_key.limits] == ["per-key"]
    assert [check.mode for check in by_key.checks] == [Mode.HIT]


def test_plan_of_an_uncovered_request_is_nothing() -> None:
    limiter = RateLimitMiddleware(make_app(), "memory://", [Rule("1/minute", path="/other")])
    assert limiter.plan(http_scope("/")) is NOTHING
    assert NOTHING.groups == ()


def test_key_functions_see_the_resolved_client_ip() -> None:
    seen: list[Any] = []

    def tenant(scope: Any) -> str | None:
        seen.append(scope.get("scalekit.client_ip"))
        return None  # falls back to the client IP

    limiter = RateLimitMiddleware(
        make_app(),
        "memory://",
        [Rule("1/minute", key=tenant, name="tenant"), Rule("2/minute", key=user, name="user")],
        trusted_proxies=["127.0.0.1"],
    )
    scope = http_scope(client=("127.0.0.1", 1), headers=[(b"x-forwarded-for", b"198.51.100.4")])
    plan = limiter.plan(scope)
    assert seen == ["198.51.100.4"]
    assert [group.identity for group in plan.groups] == ["ip:198.51.100.4"]
    assert "scalekit.client_ip" not in scope


def test_closed_sets_are_str_enums_accepting_their_values() -> None:
    assert Strategy("moving-window") is Strategy.MOVING_WINDOW
    assert Strategy("sliding") is Strategy.SLIDING_WINDOW_COUNTER  # the short name keys use
    assert Strategy.FIXED_WINDOW.short == "fixed"
    assert Count("failures") is Count.FAILURES
    assert OnBackendError("deny") is OnBackendError.DENY
    assert Mode("refund") is Mode.REFUND
    check = LimitCheck("k", "moving", 5, 60, mode="peek")
    assert (check.strategy, check.mode) == (Strategy.MOVING_WINDOW, Mode.PEEK)
    rule = Rule("5/minute", count="failures", on_backend_error="deny")
    assert rule.count is Count.FAILURES
    assert rule.on_backend_error is OnBackendError.DENY
    limiter = RateLimitMiddleware(
        make_app(), "memory://", [], strategy="moving-window", on_backend_error="deny"
    )
    assert limiter.strategy is Strategy.MOVING_WINDOW
    assert limiter.on_backend_error is OnBackendError.DENY
    with pytest.raises(
        RateLimitConfigError,
        match="strategy must be 'fixed-window', 'sliding-window-counter' or 'moving-window'",
    ):
        RateLimitMiddleware(make_app(), "memory://", [], strategy="token-bucket")
    with pytest.raises(RateLimitConfigError, match="'allow', 'deny' or None, got 3"):
        Rule("5/minute", on_backend_error=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="token-bucket"):
        LimitCheck("k", "token-bucket", 1, 1)


def test_the_request_path_fits_on_one_screen() -> None:
    # plan -> enforce -> respond: __call__ only dispatches; ASGI types are Starlette's
    call = inspect.getsource(RateLimitMiddleware.__call__)
    assert len(call.splitlines()) <= 20
    assert "nonlocal" not in inspect.getsource(middleware_module)
    assert middleware_module.Scope is starlette.types.Scope
    assert middleware_module.ASGIApp is starlette.types.ASGIApp


@pytest.mark.anyio
async def test_failures_are_counted_without_a_closure() -> None:
    # consumed on admission; a success is refunded at the admission's timestamp
    backend = _CountingBackend()
    limiter = RateLimitMiddleware(
        make_app(), backend, [Rule("2/minute", path="/login", count="failures", name="login")]
    )
    async with client(limiter) as http:
        assert (await http.post("/login?ok=1")).status_code == 200
        assert [check.mode for checks in backend.calls for check in checks] == [
            Mode.HIT,
            Mode.REFUND,
        ]
        assert backend.at[-1] == backend.verdicts[0].at
        assert (await http.post("/login?ok=0")).status_code == 401
        assert [check.mode for check in backend.calls[-1]] == [Mode.HIT]
        assert len(backend.calls) == 3
