"""Authentication: argon2 password hashes, HS256 access tokens, a Starlette backend.

The backend runs in scalekit's stack before the rate limiter and the cache,
so both know the user (``scope["user"].identity`` is the user id). It never
rejects a request itself: a missing or bad token leaves the request
anonymous with the reason in the scope, and the routes that need a user
answer 401 with a JSON body (:func:`examples.taskapi.app.current_user`).
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable
from typing import Any

import anyio.to_thread
import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.requests import HTTPConnection

__all__ = [
    "ALGORITHM",
    "AUTH_ERROR_KEY",
    "BearerBackend",
    "Passwords",
    "TaskUser",
    "TokenError",
    "Tokens",
]

ALGORITHM = "HS256"
AUTH_ERROR_KEY = "taskapi.auth_error"
"""Scope key holding why a request carrying a token is anonymous."""

_MAX_USER_ID = 2**63 - 1
MAX_HASHING = 4
"""Default bound on argon2 hashes at once: 256 MiB at the default memory cost."""
_CLOCK_SKEW = 30.0  # seconds a token's iat may lie ahead of our clock


class TokenError(Exception):
    """A token that does not authenticate; ``reason`` is safe to show the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Tokens:
    """Issues and checks HS256 access tokens carrying ``sub`` (the user id), ``iat``, ``exp``.

    The algorithm is pinned: a token whose header names another algorithm
    (``none``, HS512, RS256 signed with anything) is rejected whatever its
    signature. Expiry is checked against ``now`` (injectable for tests).

    Args:
        secret: the HMAC key.
        ttl: seconds a token lives.
        now: the clock, seconds since the epoch.
    """

    def __init__(
        self,
        secret: str,
        *,
        ttl: int,
        now: Callable[[], float] = time.time,
        remember: int = 10_000,
    ) -> None:
        self._secret = secret
        self.ttl = ttl
        self._now = now
        # Tokens already verified: (user id, exp), most recent last. The same
        # string always verifies the same way, so only expiry is checked again;
        # this saves the HMAC and JSON work (about 100 us) on every request.
        self._verified: collections.OrderedDict[str, tuple[int, int]] = collections.OrderedDict()
        self._remember = remember

    def issue(self, user_id: int) -> str:
        """A signed token for ``user_id``."""
        issued = int(self._now())
        claims = {"sub": str(user_id), "iat": issued, "exp": issued + self.ttl}
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> int:
        """The user id in a valid token.

        Raises:
            TokenError: malformed, wrong algorithm, bad signature, expired,
                issued in the future, or without a numeric ``sub``.
        """
        known = self._verified.get(token)
        if known is not None:
            if known[1] <= self._now():
                del self._verified[token]
                raise TokenError("token expired")
            self._verified.move_to_end(token)
            return known[0]
        user_id, exp = self._decode(token)
        self._verified[token] = (user_id, exp)
        if len(self._verified) > self._remember:
            self._verified.popitem(last=False)
        return user_id

    def _decode(self, token: str) -> tuple[int, int]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={
                    "require": ["exp", "iat", "sub"],
                    # Checked below against the injectable clock.
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidTokenError:
            raise TokenError("invalid token") from None
        now = self._now()
        exp, iat, sub = claims["exp"], claims["iat"], claims["sub"]
        if not all(isinstance(value, int) and not isinstance(value, bool) for value in (exp, iat)):
            raise TokenError("invalid token")
        if exp <= now:
            raise TokenError("token expired")
        if iat > now + _CLOCK_SKEW:
            raise TokenError("invalid token")
        if not (isinstance(sub, str) and sub.isascii() and sub.isdigit() and 0 < len(sub) <= 19):
            raise TokenError("invalid token")
        # 19 digits reach past the databases' signed 64-bit ids (SQLite raised
        # OverflowError: a 500 on every route).
        if not 0 < int(sub) <= _MAX_USER_ID:
            raise TokenError("invalid token")
        return int(sub), exp


class Passwords:
    """argon2id hashing off the event loop.

    At most ``concurrency`` hashes run at once: each argon2 computation
    takes ``memory_cost`` (64 MiB by default), and without a bound anyio's
    40 worker threads let 40 concurrent logins or registrations claim
    2.5 GiB. The others wait their turn (and stay within the rate limits).

    Args:
        hasher: an ``argon2.PasswordHasher`` (default parameters if None;
            tests pass a cheap one).
        concurrency: hashes computed at once (default: the CPU count, at
            most 4 — each hash already runs its 4 lanes in parallel).
    """

    def __init__(self, hasher: PasswordHasher | None = None, *, concurrency: int = 0) -> None:
        self._hasher = hasher or PasswordHasher()
        self._concurrency = concurrency or min(os.cpu_count() or 1, MAX_HASHING)
        if self._concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self._limiter: anyio.CapacityLimiter | None = None
        # Verified when the user does not exist, so that an unknown email
        # costs as much time as a wrong password.
        self._dummy = self._hasher.hash("not a password of anyone")

    @property
    def concurrency(self) -> int:
        """How many hashes may run at once."""
        return self._concurrency

    def _threads(self) -> anyio.CapacityLimiter:
        # Made on first use, inside the event loop that uses it.
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self._concurrency)
        return self._limiter

    async def hash(self, password: str) -> str:
        """The argon2id hash of ``password`` (computed in a worker thread)."""
        return await anyio.to_thread.run_sync(self._hasher.hash, password, limiter=self._threads())

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether ``password`` matches; ``None`` (no such user) takes as long and is False."""

        def check() -> bool:
            try:
                return self._hasher.verify(password_hash or self._dummy, password)
            except (VerificationError, InvalidHashError):
                return False

        matched = await anyio.to_thread.run_sync(check, limiter=self._threads())
        return matched and password_hash is not None


class TaskUser(BaseUser):
    """An authenticated user; ``identity`` (the id as text) keys the cache and the limits."""

    def __init__(self, user_id: int) -> None:
        self.id = user_id

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return str(self.id)

    @property
    def identity(self) -> str:
        return str(self.id)


class BearerBackend(AuthenticationBackend):
    """``Authorization: Bearer <token>`` → :class:`TaskUser`; anything else stays anonymous."""

    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        header = conn.headers.get("authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            conn.scope[AUTH_ERROR_KEY] = "expected 'Authorization: Bearer <token>'"
            return None
        try:
            user_id = self.tokens.verify(token)
        except TokenError as exc:
            conn.scope[AUTH_ERROR_KEY] = exc.reason
            return None
        return AuthCredentials(["authenticated"]), TaskUser(user_id)
