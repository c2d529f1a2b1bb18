"""Attacks on the example task API that once got through, kept as regression tests."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import httpx
import jwt
import pytest
from argon2 import PasswordHasher
from taskapi_helpers import SECRET, Clock, signup

from examples.taskapi.auth import Passwords, TokenError, Tokens
from examples.taskapi.config import TaskApiConfig

pytestmark = pytest.mark.anyio

TASKS = "/api/v1/tasks"
REGISTER = "/api/v1/auth/register"
LOGIN = "/api/v1/auth/login"


@pytest.mark.parametrize("sub", ["9223372036854775808", "9999999999999999999"])
async def test_a_sub_past_64_bit_ids_is_401_not_500(
    make_client: Any, clock: Clock, sub: str
) -> None:
    # Validly signed (a leaked or mis-issued token), but no database id fits.
    now = int(clock.now)
    token = jwt.encode({"sub": sub, "iat": now, "exp": now + 60}, SECRET, algorithm="HS256")
    headers = {"Authorization": f"Bearer {token}"}
    async with make_client() as client:
        for method, path in (("GET", TASKS), ("GET", "/api/v1/auth/me"), ("POST", TASKS)):
            response = await client.request(method, path, headers=headers, json={"title": "t"})
            assert response.status_code == 401, response.text
            assert response.json() == {"error": "unauthorized", "detail": "invalid token"}
    with pytest.raises(TokenError):
        Tokens(SECRET, ttl=60, now=clock).verify(token)


async def test_an_email_in_compatibility_form_is_the_same_address(make_client: Any) -> None:
    # MariaDB's utf8mb4_unicode_ci compares fullwidth "ada" equal to "ada";
    # SQLite's NOCASE did not: two accounts on one backend, one on the other.
    async with make_client() as client:
        await signup(client, "ada", password="right password")
        twin = {"email": "\uff41da@\uff45xample.com", "username": "twin", "password": "12345678"}
        response = await client.post(REGISTER, json=twin)
        assert response.status_code == 409, response.text
        login = {"email": "\uff21\uff24\uff21@example.com", "password": "right password"}
        assert (await client.post(LOGIN, json=login)).status_code == 200
        # A fullwidth at sign is checked as the "@" it becomes: no second one slips in.
        two_ats = {"email": "a\uff20b@example.com", "username": "ats", "password": "12345678"}
        response = await client.post(REGISTER, json=two_ats)
        assert response.status_code == 422, response.text
        assert response.json()["fields"][0]["loc"] == ["body", "email"]


@pytest.mark.parametrize("invisible", ["\u00ad", "\u200b", "\u200d", "\ufeff", "\u202e", "\u2060"])
async def test_an_email_with_an_invisible_character_is_422(
    make_client: Any, invisible: str
) -> None:
    # "ada@example.com" with a soft hyphen or a zero-width space reads the same:
    # a look-alike second account on SQLite; on MariaDB (utf8mb4_unicode_ci
    # ignores them) the same account under another spelling.
    async with make_client() as client:
        await signup(client, "ada")
        for spelled in (f"ad{invisible}a@example.com", f"ada@exam{invisible}ple.com"):
            body = {"email": spelled, "username": "twin", "password": "12345678"}
            response = await client.post(REGISTER, json=body)
            assert response.status_code == 422, response.text
            assert response.json()["fields"][0]["loc"] == ["body", "email"]
            # refused by the schema's own pattern (printable ASCII after NFKC)
            assert "pattern" in response.json()["fields"][0]["message"]


@pytest.mark.parametrize("declared", [b"+13", b" 13", b"1_3", b"0x0d", b""])
async def test_a_content_length_that_is_not_digits_is_400(
    make_client: Any, declared: bytes
) -> None:
    async with make_client() as client:
        headers = await signup(client, "ada")
        response = await client.post(
            TASKS,
            content=b'{"title":"a"}',
            headers={**headers, "content-type": "application/json", "content-length": declared},
        )
        assert response.status_code == 400, response.text
        assert response.json() == {"error": "bad_request", "detail": "invalid Content-Length"}


class _MeteredHasher(PasswordHasher):
    """Counts argon2 computations running at once; ``barrier`` trips if more than allowed."""

    def __init__(self, allowed: int) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.barrier = threading.Barrier(allowed + 1, timeout=2)
        self.exceeded = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            pass  # at most ``allowed`` were ever waiting together: the bound held
        else:
            self.exceeded += 1
        return super().verify(hash, password)


async def test_argon2_runs_at_most_concurrency_hashes_at_once() -> None:
    # 64 MiB per default argon2 hash; anyio's 40 threads allowed 2.5 GiB at once.
    hasher = _MeteredHasher(allowed=2)
    passwords = Passwords(hasher, concurrency=2)
    stored = hasher.hash("right password")
    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(passwords.verify, stored, "wrong password")
    assert hasher.exceeded == 0
    with pytest.raises(ValueError, match="concurrency"):
        Passwords(hasher, concurrency=-1)


def test_the_default_hashing_bound_does_not_grow_with_the_host(monkeypatch: Any) -> None:
    # A 64-CPU host would otherwise allow 64 x 64 MiB, more than anyio's 40 threads did.
    hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert Passwords(hasher).concurrency == 4
    monkeypatch.setattr("os.cpu_count", lambda: None)
    assert Passwords(hasher).concurrency == 1


def test_the_jwt_secret_is_not_in_the_config_repr(tmp_path: Any) -> None:
    # Settings hides its URLs' passwords; the signing key showed in full.
    config = TaskApiConfig.from_env(
        {"TASKAPI_JWT_SECRET": SECRET, "TASKAPI_DATA_DIR": str(tmp_path)}
    )
    assert SECRET not in repr(config)
    assert "token_ttl=3600" in repr(config)
    assert config.jwt_secret == SECRET


async def test_the_embedded_data_folder_is_owner_only(make_client: Any, tmp_path: Any) -> None:
    # users.db holds the password hashes; it was created world-readable (755/644).
    async with make_client() as client:
        await signup(client, "ada")
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700


async def test_an_error_outside_the_routes_is_a_json_500(make_client: Any) -> None:
    # A bug in the authentication backend (which runs in scalekit's stack,
    # outside the example's JSON 500) was answered "Internal Server Error"
    # in plain text.
    async with make_client() as client:
        headers = await signup(client, "ada")

        def broken(token: str) -> int:
            raise RuntimeError("bug in verify")

        client.app.state.taskapi.tokens.verify = broken
        transport = httpx.ASGITransport(app=client.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as raw:
            response = await raw.get(TASKS, headers=headers)
    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"


async def test_a_trailing_slash_is_a_json_404_not_a_redirect_to_the_host_header(
    make_client: Any,
) -> None:
    # It was an empty 307 whose Location came from the client's Host header
    # (http://evil.example/api/v1/tasks); curl without -L printed nothing.
    async with make_client() as client:
        headers = await signup(client, "ada")
        for method in ("GET", "POST"):
            response = await client.request(
                method,
                TASKS + "/",
                json={"title": "t"},
                headers={**headers, "Host": "evil.example"},
            )
            assert response.status_code == 404, response.text
            assert "location" not in response.headers
            assert response.json() == {
                "error": "not_found",
                "detail": "no route for /api/v1/tasks/; without the trailing slash: /api/v1/tasks",
            }
