"""Security of the example: tokens, the secret, limits, and passwords kept out of logs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
from typing import Any

import jwt
import pytest
from taskapi_helpers import SECRET, Clock, signup

from examples.taskapi.auth import TokenError, Tokens
from examples.taskapi.config import ConfigError, TaskApiConfig
from scalekit.observability import configure_logging

pytestmark = pytest.mark.anyio

ME = "/api/v1/auth/me"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], key: bytes, digest: Any) -> str:
    """A token with any header, signed by HMAC with ``digest`` (or unsigned for None)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    if digest is None:
        return signing_input + "."
    signature = hmac.new(key, signing_input.encode(), digest).digest()
    return f"{signing_input}.{_b64(signature)}"


def claims_for(clock: Clock, user_id: int = 1, ttl: int = 3600) -> dict[str, Any]:
    return {"sub": str(user_id), "iat": int(clock.now), "exp": int(clock.now) + ttl}


def test_tokens_carry_sub_iat_exp_and_expire_on_the_clock() -> None:
    clock = Clock()
    tokens = Tokens(SECRET, ttl=60, now=clock)
    token = tokens.issue(42)
    claims = jwt.decode(
        token, SECRET, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False}
    )
    assert claims == {"sub": "42", "iat": int(clock.now), "exp": int(clock.now) + 60}
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert tokens.verify(token) == 42
    clock.now += 59
    assert tokens.verify(token) == 42
    clock.now += 1
    with pytest.raises(TokenError, match="expired"):
        tokens.verify(token)


def test_remembered_tokens_still_expire_and_the_memory_is_bounded() -> None:
    clock = Clock()
    tokens = Tokens(SECRET, ttl=60, now=clock, remember=2)
    first, second, third = (tokens.issue(user_id) for user_id in (1, 2, 3))
    assert [tokens.verify(token) for token in (first, second, third)] == [1, 2, 3]
    assert len(tokens._verified) == 2  # the oldest was forgotten
    with pytest.raises(TokenError, match="invalid token"):
        tokens.verify(third[:-2] + "AA")  # a remembered token's tampered twin
    clock.now += 60
    for token in (first, second, third):  # remembered or not, expiry is checked
        with pytest.raises(TokenError, match="expired"):
            tokens.verify(token)
    assert len(tokens._verified) == 0


@pytest.mark.parametrize(
    "case",
    ["alg-none", "hs512", "rs256-header", "tampered", "other-secret", "no-exp", "bad-sub", "junk"],
)
def test_tokens_that_do_not_authenticate(case: str) -> None:
    clock = Clock()
    key = SECRET.encode()
    claims = claims_for(clock)
    token = {
        "alg-none": lambda: forge({"alg": "none", "typ": "JWT"}, claims, key, None),
        "hs512": lambda: forge({"alg": "HS512", "typ": "JWT"}, claims, key, hashlib.sha512),
        # Key confusion: an RS256 header over an HMAC made with a key we know.
        "rs256-header": lambda: forge({"alg": "RS256", "typ": "JWT"}, claims, key, hashlib.sha256),
        "tampered": lambda: Tokens(SECRET, ttl=60, now=clock).issue(1)[:-2] + "AA",
        "other-secret": lambda: jwt.encode(claims, "x" * 40, algorithm="HS256"),
        "no-exp": lambda: jwt.encode({"sub": "1", "iat": claims["iat"]}, key, algorithm="HS256"),
        "bad-sub": lambda: jwt.encode({**claims, "sub": "admin"}, key, algorithm="HS256"),
        "junk": lambda: "not.a.token",
    }[case]()
    with pytest.raises(TokenError, match="invalid token"):
        Tokens(SECRET, ttl=60, now=clock).verify(token)


async def test_bad_tokens_are_401_json(make_client: Any, clock: Clock) -> None:
    async with make_client(TASKAPI_TOKEN_TTL="60") as client:
        auth = await signup(client, "ada")
        key = SECRET.encode()
        cases = {
            "missing bearer token: send 'Authorization: Bearer <token>'": {},
            "expected 'Authorization: Bearer <token>'": {"Authorization": "Basic YTpi"},
            "invalid token": {
                "Authorization": "Bearer " + forge({"alg": "none"}, claims_for(clock), key, None)
            },
        }
        for reason, headers in cases.items():
            response = await client.get(ME, headers=headers)
            assert response.status_code == 401
            assert response.json() == {"error": "unauthorized", "detail": reason}
            assert response.headers["www-authenticate"].startswith("Bearer")
        assert (await client.get(ME, headers=auth)).status_code == 200
        clock.now += 60
        expired = await client.get(ME, headers=auth)
        assert expired.status_code == 401
        assert expired.json() == {"error": "unauthorized", "detail": "token expired"}


def test_the_secret_is_required_outside_development() -> None:
    with pytest.raises(ConfigError, match="TASKAPI_JWT_SECRET") as raised:
        TaskApiConfig.from_env({})
    assert "SCALEKIT_ENV=development" in str(raised.value)
    with pytest.raises(ConfigError, match="at least 32"):
        TaskApiConfig.from_env({"TASKAPI_JWT_SECRET": "short"})
    with pytest.raises(ConfigError, match="TASKAPI_TOKEN_TTL"):
        TaskApiConfig.from_env({"TASKAPI_JWT_SECRET": SECRET, "TASKAPI_TOKEN_TTL": "1h"})
    first = TaskApiConfig.from_env({"SCALEKIT_ENV": "development"})
    second = TaskApiConfig.from_env({"SCALEKIT_ENV": "development"})
    assert first.secret_generated
    assert len(first.jwt_secret) >= 32
    assert first.jwt_secret != second.jwt_secret  # per process start, never a constant
    configured = TaskApiConfig.from_env(
        {"SCALEKIT_ENV": "development", "TASKAPI_JWT_SECRET": SECRET}
    )
    assert not configured.secret_generated
    assert configured.jwt_secret == SECRET


def test_embedded_unless_a_database_is_configured(tmp_path: Any) -> None:
    embedded = TaskApiConfig.from_env({"TASKAPI_JWT_SECRET": SECRET, "TASKAPI_DATA_DIR": "d"})
    assert embedded.embedded
    assert embedded.settings.database_url == "sqlite:///d/users.db"
    assert embedded.settings.shard_urls == (("sqlite:///d/shard0.db",), ("sqlite:///d/shard1.db",))
    served = TaskApiConfig.from_env(
        {"TASKAPI_JWT_SECRET": SECRET, "SCALEKIT_DATABASE_URL": "mysql://u:p@db/users"}
    )
    assert not served.embedded
    assert served.settings.shard_urls == ()
    with pytest.raises(ConfigError, match="SCALEKIT_DATABASE_URL"):
        TaskApiConfig.from_env({"TASKAPI_JWT_SECRET": SECRET, "SCALEKIT_SHARD_URLS": "mysql://x/s"})


async def test_the_api_limit_is_per_user_and_spares_health(make_client: Any) -> None:
    async with make_client(SCALEKIT_RATE_LIMIT="4/15 minutes") as client:
        ada = await signup(client, "ada")  # register + login count against the IP
        bob = await signup(client, "bob")
        statuses = [(await client.get(ME, headers=ada)).status_code for _ in range(6)]
        assert statuses == [200] * 4 + [429] * 2
        limited = await client.get(ME, headers=ada)
        assert limited.json()["error"] == "rate_limited"
        assert int(limited.headers["retry-after"]) > 0
        assert (await client.get(ME, headers=bob)).status_code == 200
        for _ in range(10):
            assert (await client.get("/health/live")).status_code == 200


async def test_failed_logins_are_limited_per_ip_successes_are_not(make_client: Any) -> None:
    async with make_client(TASKAPI_LOGIN_LIMIT="3/15 minutes") as client:
        await signup(client, "ada", password="right password")
        good = {"email": "ada@example.com", "password": "right password"}
        bad = {"email": "ada@example.com", "password": "wrong password"}
        for _ in range(5):
            assert (await client.post("/api/v1/auth/login", json=good)).status_code == 200
        failures = [
            (await client.post("/api/v1/auth/login", json=bad)).status_code for _ in range(4)
        ]
        assert failures == [401, 401, 401, 429]
        assert (await client.post("/api/v1/auth/login", json=good)).status_code == 429
        unknown = {"email": "nobody@example.com", "password": "whatever1"}
        assert (await client.post("/api/v1/auth/login", json=unknown)).status_code == 429


async def test_passwords_never_reach_the_logs(make_client: Any, monkeypatch: Any) -> None:
    password = "pw-that-must-never-be-logged"
    stream = io.StringIO()
    configure_logging(json=True, stream=stream, level="DEBUG")
    try:
        async with make_client() as client:
            await signup(client, "ada", password=password)
            wrong = {"email": "ada@example.com", "password": password + "-wrong"}
            assert (await client.post("/api/v1/auth/login", json=wrong)).status_code == 401
            short = {"email": "b@example.com", "username": "bob", "password": password[:6]}
            assert (await client.post("/api/v1/auth/register", json=short)).status_code == 422

            async def broken(self: Any, password_hash: Any, plain: str) -> bool:
                raise RuntimeError("hasher broke")

            monkeypatch.setattr(type(client.app.state.taskapi.passwords), "verify", broken)
            login = {"email": "ada@example.com", "password": password}
            assert (await client.post("/api/v1/auth/login", json=login)).status_code == 500
    finally:
        import structlog

        structlog.reset_defaults()
    logged = stream.getvalue()
    assert "hasher broke" in logged  # the failure itself is logged...
    assert password[:6] not in logged  # ...never the password, whole or in part
