"""The task API's configuration: scalekit's ``Settings`` plus the example's own ``TASKAPI_*``.

Everything scalekit knows (databases, shards, Redis, proxies, the API-wide
limit) comes from ``Settings.from_env()`` and its ``SCALEKIT_*`` variables.
What only this app needs comes from ``TASKAPI_*``:

- ``TASKAPI_JWT_SECRET``: the HS256 key, at least 32 characters; required
  unless ``SCALEKIT_ENV=development`` (then a random one per process);
- ``TASKAPI_TOKEN_TTL``: seconds an access token lives (default 3600);
- ``TASKAPI_LOGIN_LIMIT``: failed logins per client IP (default ``5/15 minutes``);
- ``TASKAPI_DATA_DIR``: where the embedded default keeps its SQLite files
  (default ``.taskapi-data``).

With no ``SCALEKIT_DATABASE_URL`` and no ``SCALEKIT_SHARD_URLS`` the app runs
embedded: ``users.db`` plus two shard files in ``TASKAPI_DATA_DIR``.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from scalekit import Settings
from scalekit.settings import Environment

__all__ = ["DEFAULT_API_LIMIT", "ConfigError", "TaskApiConfig"]

DEFAULT_API_LIMIT = "100/15 minutes"
DEFAULT_LOGIN_LIMIT = "5/15 minutes"
EMBEDDED_SHARDS = 2
MIN_SECRET_LENGTH = 32


class ConfigError(ValueError):
    """The configuration is incomplete or does not parse; the message says how to fix it."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskApiConfig:
    """Everything the task API needs to start.

    Args:
        settings: scalekit's settings (``database_url`` is the users database,
            ``shard_urls`` the task shards).
        jwt_secret: the HS256 key.
        secret_generated: the key was made up for this process (development only).
        token_ttl: seconds an access token lives.
        api_limit: the API-wide limit per user (or per IP before login).
        login_limit: failed logins per client IP.
        data_dir: the SQLite files' folder when embedded, else None.
    """

    settings: Settings
    # Kept out of repr: a config printed or logged (a start-up error, a
    # debugger, a traceback's locals) must not carry the signing key.
    jwt_secret: str = dataclasses.field(repr=False)
    secret_generated: bool = False
    token_ttl: int = 3600
    api_limit: str = DEFAULT_API_LIMIT
    login_limit: str = DEFAULT_LOGIN_LIMIT
    data_dir: Path | None = None

    def __post_init__(self) -> None:
        if len(self.jwt_secret) < MIN_SECRET_LENGTH:
            raise ConfigError(
                f"the JWT secret has {len(self.jwt_secret)} characters; HS256 needs at least "
                f"{MIN_SECRET_LENGTH}: set TASKAPI_JWT_SECRET, e.g. to the output of "
                "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
            )
        if self.token_ttl < 1:
            raise ConfigError(f"TASKAPI_TOKEN_TTL must be at least 1 second, got {self.token_ttl}")
        if self.settings.shard_urls and not self.settings.database_url:
            raise ConfigError(
                "SCALEKIT_SHARD_URLS is set but SCALEKIT_DATABASE_URL is not: the users "
                "database needs its own URL"
            )

    @property
    def embedded(self) -> bool:
        """No database URL configured: SQLite files in ``data_dir``."""
        return self.data_dir is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TaskApiConfig:
        """The configuration from ``SCALEKIT_*`` and ``TASKAPI_*`` variables.

        Raises:
            ConfigError: a ``TASKAPI_*`` variable is missing or does not parse.
            ValueError: a ``SCALEKIT_*`` variable does not parse (from ``Settings``).
        """
        env = os.environ if environ is None else environ
        settings = Settings.from_env(env)
        secret = env.get("TASKAPI_JWT_SECRET", "").strip()
        generated = False
        if not secret:
            if settings.env is not Environment.DEVELOPMENT:
                raise ConfigError(
                    "TASKAPI_JWT_SECRET is not set: set it to a random string of at least "
                    f"{MIN_SECRET_LENGTH} characters, or set SCALEKIT_ENV=development to run "
                    "with a random secret that changes on every start"
                )
            secret = secrets.token_urlsafe(48)
            generated = True
        ttl_text = env.get("TASKAPI_TOKEN_TTL", "3600").strip()
        try:
            ttl = int(ttl_text)
        except ValueError:
            raise ConfigError(
                f"TASKAPI_TOKEN_TTL must be a whole number of seconds, got {ttl_text!r}"
            ) from None
        data_dir: Path | None = None
        if not settings.database_url and not settings.shard_urls:
            data_dir = Path(env.get("TASKAPI_DATA_DIR", "").strip() or ".taskapi-data")
            settings = dataclasses.replace(
                settings,
                database_url=f"sqlite:///{data_dir / 'users.db'}",
                shard_urls=tuple(
                    (f"sqlite:///{data_dir / f'shard{index}.db'}",)
                    for index in range(EMBEDDED_SHARDS)
                ),
            )
        return cls(
            settings=settings,
            jwt_secret=secret,
            secret_generated=generated,
            token_ttl=ttl,
            api_limit=settings.rate_limit or DEFAULT_API_LIMIT,
            login_limit=env.get("TASKAPI_LOGIN_LIMIT", "").strip() or DEFAULT_LOGIN_LIMIT,
            data_dir=data_dir,
        )
