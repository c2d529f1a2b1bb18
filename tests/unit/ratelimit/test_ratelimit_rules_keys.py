"""Rules (validation, matching) and key functions."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.authentication import SimpleUser, UnauthenticatedUser

import scalekit.ratelimit as ratelimit
from scalekit.ratelimit import RateLimitConfigError, Rule, client_ip, header, parse_rates, user
from scalekit.ratelimit.keys import CLIENT_IP_SCOPE_KEY, identity_of


def test_all_is_complete_and_sorted() -> None:
    public = {
        name
        for name in dir(ratelimit)
        if not name.startswith("_")
        and name
        not in {
            "backends",
            "errors",
            "failover",
            "keys",
            "memory",
            "middleware",
            "outcomes",
            "plan",
            "protocol",
            "redis_backend",
            "responses",
            "rules",
        }
        and name not in {"annotations"}
    }
    assert ratelimit.__all__ == sorted(ratelimit.__all__)
    assert set(ratelimit.__all__) == public


def test_rates_parse_with_limits() -> None:
    assert [(r.amount, r.window) for r in parse_rates("10/second;100/15 minutes")] == [
        (10, 1),
        (100, 900),
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": "lots"}, "does not parse"),
        ({"limit": "5/minute", "path": "login"}, "start with '/'"),
        ({"limit": "5/minute", "count": "errors"}, "'all' or 'failures'"),
        ({"limit": "5/minute", "cost": 0}, "cost"),
        ({"limit": "5/minute", "cost": 6}, "no request could pass"),
        ({"limit": "5/minute", "on_backend_error": "retry"}, "'allow', 'deny'"),
        ({"limit": "5/minute", "methods": "POST"}, "list"),
        ({"limit": "5/minute", "key": "ip"}, "callable"),
        ({"limit": "5/minute", "name": 'a"b'}, "quotes"),
    ],
)
def test_invalid_rules_say_what_to_fix(kwargs: dict[str, Any], message: str) -> None:
    limit = kwargs.pop("limit")
    with pytest.raises(RateLimitConfigError, match=message):
        Rule(limit, **kwargs)


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        Rule("5/minute", count="nope")


def test_matching_by_template_and_method() -> None:
    rule = Rule("5/minute", path="/items/{id}", methods=["get"])
    assert rule.matches("GET", "/items/42")
    assert not rule.matches("POST", "/items/42")
    assert not rule.matches("GET", "/items/42/parts")
    assert not rule.matches("GET", "/items")
    files = Rule("5/minute", path="/files/{rest:path}")
    assert files.matches("PUT", "/files/a/b/c")
    assert Rule("5/minute").matches("DELETE", "/anything")


def test_default_names() -> None:
    assert Rule("5/minute").name == "default"
    assert Rule("5/minute", path="/login").name == "/login"
    assert Rule("5/minute", name="api").name == "api"


def scope(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"type": "http", "client": ("198.51.100.1", 1234), "headers": []}
    base.update(extra)
    return base


def test_client_ip_reads_the_resolved_ip() -> None:
    assert client_ip(scope()) == "ip:198.51.100.1"
    assert client_ip(scope(**{CLIENT_IP_SCOPE_KEY: "10.9.9.9"})) == "ip:10.9.9.9"


def test_user_key_and_its_fallback_to_the_client_ip() -> None:
    assert identity_of(user, scope(user=SimpleUser("ana"))) == "user:ana"
    assert identity_of(user, scope(user=UnauthenticatedUser())) == "ip:198.51.100.1"
    assert identity_of(user, scope()) == "ip:198.51.100.1"
    assert identity_of(user, scope(state={"user": "bo"})) == "user:bo"


def test_header_key_and_its_fallback() -> None:
    api_key = header("X-API-Key")
    assert identity_of(api_key, scope(headers=[(b"x-api-key", b"k1")])) == "header:x-api-key:k1"
    assert identity_of(api_key, scope()) == "ip:198.51.100.1"
    with pytest.raises(ValueError, match="header name"):
        header(" ")


def test_a_user_named_like_an_ip_never_shares_its_counter() -> None:
    assert identity_of(user, scope(state={"user": "198.51.100.1"})) != client_ip(scope())


def test_callable_key() -> None:
    assert identity_of(lambda s: "tenant:7", scope()) == "tenant:7"
    assert identity_of(lambda s: None, scope()) == "ip:198.51.100.1"
