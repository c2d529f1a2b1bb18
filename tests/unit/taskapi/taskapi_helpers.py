"""Helpers for the example task API's unit tests (imported by the tests and conftest)."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
from argon2 import PasswordHasher

_ROOT = Path(__file__).resolve().parents[3]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))  # ``examples`` is not installed, only checked out

from examples.taskapi.auth import Passwords  # noqa: E402

SECRET = "unit-test-secret-that-is-long-enough-for-hs256"


class Clock:
    """A settable clock for token issue and expiry."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def cheap_passwords() -> Passwords:
    # argon2id with the smallest cost: the tests check behaviour, not strength.
    return Passwords(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


async def signup(
    client: httpx.AsyncClient, name: str, password: str = "correct horse"
) -> dict[str, str]:
    """Register and log in ``name``; the Authorization header for it."""
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": f"{name}@example.com", "username": name, "password": password},
    )
    assert response.status_code == 201, response.text
    response = await client.post(
        "/api/v1/auth/login", json={"email": f"{name}@example.com", "password": password}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}
