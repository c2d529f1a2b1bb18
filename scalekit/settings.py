"""``Settings``: every option of :func:`scalekit.install`, from keywords or ``SCALEKIT_*``.

``Settings.from_env()`` only turns environment variables into the same
keyword arguments; nothing here connects to anything.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

__all__ = ["Settings"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


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
        trusted_proxies: CIDRs whose ``X-Forwarded-For`` is believed.
        rate_limit: a default rule for every request, e.g. ``"100/15 minutes"``;
            ``None`` for none.
        max_lag: seconds of replica lag beyond which a replica gets no reads.
        pin_after_write: seconds reads stay on the primary after a write.
        access_log: one structured access line per request.
        metrics_path: where the Prometheus endpoint is mounted.
    """

    database_url: str | None = None
    replica_urls: tuple[str, ...] = ()
    redis_url: str | None = None
    trusted_proxies: tuple[str, ...] = ()
    rate_limit: str | None = None
    max_lag: float = 2.0
    pin_after_write: float = 5.0
    access_log: bool = True
    metrics_path: str = "/metrics"

    def __post_init__(self) -> None:
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
        separated), ``SCALEKIT_RATE_LIMIT``, ``SCALEKIT_MAX_LAG``,
        ``SCALEKIT_PIN_AFTER_WRITE``, ``SCALEKIT_ACCESS_LOG``, ``SCALEKIT_METRICS_PATH``.

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
            elif field.name == "access_log":
                if raw.lower() not in _TRUE | _FALSE:
                    raise ValueError(f"{name} must be true or false, got {raw!r}")
                values[field.name] = raw.lower() in _TRUE
            else:
                values[field.name] = raw
        return cls(**values)  # type: ignore[arg-type]
