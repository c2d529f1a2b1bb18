"""``Settings``: every option of :func:`scalekit.install`, from keywords or ``SCALEKIT_*``.

``Settings.from_env()`` only turns environment variables into the same
keyword arguments; nothing here connects to anything.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Iterable, Mapping
from typing import cast

from scalekit._net import ForwardedHeader

__all__ = ["Environment", "Settings", "ShardStrategyName"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class Environment(enum.StrEnum):
    """Where the app runs: ``development`` lets an app relax what production requires."""

    DEVELOPMENT = "development"
    PRODUCTION = "production"


class ShardStrategyName(enum.StrEnum):
    """How ``shard_urls`` spread keys: ``jump-hash`` (default) or ``modulo`` (``key % N``)."""

    JUMP_HASH = "jump-hash"
    MODULO = "modulo"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """What :func:`scalekit.install` sets up.

    With no URLs, everything runs in-process: no database pools, an in-memory
    cache and in-memory rate-limit counters (fine for one instance and tests).

    Args:
        database_url: the primary, e.g. ``mysql://app:pw@db:3306/tasks`` or
            ``sqlite:///data/app.db``; ``None`` opens no pool.
        replica_urls: read replicas of the primary.
        redis_url: shared cache, rate-limit counters and read-your-writes marks;
            ``None`` keeps them in process.
        trusted_proxies: CIDRs of the proxies whose ``forwarded_header`` is believed.
        forwarded_header: the one header those proxies put the client address
            in: ``"x-forwarded-for"`` (default), ``"forwarded"`` or ``"x-real-ip"``.
        rate_limit: a default rule for every request, e.g. ``"100/15 minutes"``;
            ``None`` for none.
        max_lag: seconds of replica lag beyond which a replica gets no reads.
        pin_after_write: seconds reads stay on the primary after a write.
        access_log: one structured access line per request.
        metrics_path: where the Prometheus endpoint is mounted.
        shard_urls: one tuple of URLs per shard, the shard's primary first and
            its replicas after it; builds ``Stack.shards`` (a ``ShardSet``).
        shard_strategy: how keys are spread over ``shard_urls``.
        env: ``production`` (default) or ``development``; scalekit itself
            changes nothing by it, apps read it (the example task API accepts
            a missing JWT secret only in ``development``).
    """

    database_url: str | None = None
    replica_urls: tuple[str, ...] = ()
    redis_url: str | None = None
    trusted_proxies: tuple[str, ...] = ()
    forwarded_header: ForwardedHeader | str = ForwardedHeader.X_FORWARDED_FOR
    rate_limit: str | None = None
    max_lag: float = 2.0
    pin_after_write: float = 5.0
    access_log: bool = True
    metrics_path: str = "/metrics"
    shard_urls: tuple[tuple[str, ...], ...] = ()
    shard_strategy: ShardStrategyName = ShardStrategyName.JUMP_HASH
    env: Environment = Environment.PRODUCTION

    def __post_init__(self) -> None:
        object.__setattr__(self, "forwarded_header", ForwardedHeader.parse(self.forwarded_header))
        # A bare string is a shard with no replicas: ("sqlite:///a.db", "sqlite:///b.db").
        shards = tuple(
            (shard,) if isinstance(shard, str) else tuple(cast(Iterable[str], shard))
            for shard in cast(tuple[object, ...], self.shard_urls)
        )
        if any(not shard or not all(shard) for shard in shards):
            raise ValueError(
                f"shard_urls={self.shard_urls!r}: every shard needs its primary's URL first"
            )
        object.__setattr__(self, "shard_urls", shards)
        try:
            object.__setattr__(self, "shard_strategy", ShardStrategyName(self.shard_strategy))
        except ValueError:
            raise ValueError(
                f"shard_strategy={self.shard_strategy!r}: use 'jump-hash' or 'modulo'"
            ) from None
        try:
            object.__setattr__(self, "env", Environment(self.env))
        except ValueError:
            raise ValueError(f"env={self.env!r}: use 'development' or 'production'") from None
        if self.pin_after_write <= self.max_lag:
            raise ValueError(
                f"pin_after_write={self.pin_after_write!r} must exceed max_lag={self.max_lag!r}"
            )
        if self.replica_urls and not self.database_url:
            raise ValueError("replica_urls need a database_url for the primary")
        if not self.metrics_path.startswith("/"):
            raise ValueError(f"metrics_path must start with '/', got {self.metrics_path!r}")

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, prefix: str = "SCALEKIT_"
    ) -> Settings:
        """Settings from ``SCALEKIT_DATABASE_URL``, ``SCALEKIT_REPLICA_URLS`` (comma
        separated), ``SCALEKIT_REDIS_URL``, ``SCALEKIT_TRUSTED_PROXIES`` (comma
        separated), ``SCALEKIT_FORWARDED_HEADER``, ``SCALEKIT_RATE_LIMIT``, ``SCALEKIT_MAX_LAG``,
        ``SCALEKIT_PIN_AFTER_WRITE``, ``SCALEKIT_ACCESS_LOG``, ``SCALEKIT_METRICS_PATH``,
        ``SCALEKIT_SHARD_URLS`` (shards separated by ``;``, each shard's primary
        then its replicas separated by ``,``), ``SCALEKIT_SHARD_STRATEGY``, ``SCALEKIT_ENV``.

        Raises:
            ValueError: a variable that does not parse; the message names it.
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            name = prefix + field.name.upper()
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                continue
            raw = raw.strip()
            if field.name in ("replica_urls", "trusted_proxies"):
                values[field.name] = tuple(part.strip() for part in raw.split(",") if part.strip())
            elif field.name in ("max_lag", "pin_after_write"):
                try:
                    values[field.name] = float(raw)
                except ValueError:
                    raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
            elif field.name == "shard_urls":
                values[field.name] = tuple(
                    tuple(url.strip() for url in shard.split(",") if url.strip())
                    for shard in raw.split(";")
                    if shard.strip()
                )
            elif field.name in ("shard_strategy", "env"):
                choices: type[enum.StrEnum] = (
                    ShardStrategyName if field.name == "shard_strategy" else Environment
                )
                if raw not in set(choices):
                    allowed = " or ".join(repr(choice.value) for choice in choices)
                    raise ValueError(f"{name} must be {allowed}, got {raw!r}")
                values[field.name] = choices(raw)
            elif field.name == "forwarded_header":
                values[field.name] = ForwardedHeader.parse(raw, setting=name)
            elif field.name == "access_log":
                if raw.lower() not in _TRUE | _FALSE:
                    raise ValueError(f"{name} must be true or false, got {raw!r}")
                values[field.name] = raw.lower() in _TRUE
            else:
                values[field.name] = raw
        return cls(**values)  # type: ignore[arg-type]
