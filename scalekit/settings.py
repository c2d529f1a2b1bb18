"""``Settings``: what differs between deployments, from keywords or ``SCALEKIT_*`` variables.

``Settings.from_env()`` only turns environment variables into the same
keyword arguments; nothing here connects to anything. Every value is checked
when the object is built: a bad one raises :class:`SettingsError` naming the
field (or the ``SCALEKIT_*`` variable it came from) and what it expects, so
a typo fails the deploy instead of the first request.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import cast

from scalekit._net import ForwardedHeader
from scalekit.errors import ConfigurationError

__all__ = ["Environment", "Settings", "SettingsError", "ShardStrategyName"]

_TRUE = {"1", "true", "yes", "on"}
# The password part of ``scheme://user:password@host`` (also ``//:password@``).
_URL_PASSWORD = re.compile(r"(//[^/@:]*:)[^@/]*@")


def _redacted(value: object) -> object:
    """``value`` with the password of every URL in it replaced by ``***``."""
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1***@", value)
    if isinstance(value, tuple):
        return tuple(_redacted(item) for item in value)
    return value


_FALSE = {"0", "false", "no", "off"}


class SettingsError(ConfigurationError):
    """A :class:`Settings` value is invalid.

    Attributes:
        field: the keyword (``"rate_limit"``).
        variable: the environment variable it came from (``"SCALEKIT_RATE_LIMIT"``), if any.
        problem: what is wrong with it, without the name.
    """

    def __init__(self, field: str, problem: str, *, variable: str | None = None) -> None:
        self.field = field
        self.variable = variable
        self.problem = problem
        super().__init__(f"{variable or field} {problem}")


class Environment(enum.StrEnum):
    """Where the app runs: ``development`` lets an app relax what production requires."""

    DEVELOPMENT = "development"
    PRODUCTION = "production"


class ShardStrategyName(enum.StrEnum):
    """How ``shard_urls`` spread keys: ``jump-hash`` (default) or ``modulo`` (``key % N``)."""

    JUMP_HASH = "jump-hash"
    MODULO = "modulo"


# -- one checker per kind of value: returns the normalised value or raises ValueError


def _strings(value: object, what: str) -> tuple[str, ...]:
    """A comma-separated string or an iterable of strings, as a tuple."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if not isinstance(value, Iterable):
        raise ValueError(f"must be a list of {what}, got {value!r}")
    items = tuple(value)
    if not all(isinstance(item, str) and item.strip() for item in items):
        raise ValueError(f"must be a list of {what}, got {value!r}")
    return tuple(item.strip() for item in items)


def _database_url(url: str) -> str:
    from scalekit.db._config import parse_url, redact

    if not isinstance(url, str) or not url:
        raise ValueError(f"must be a database URL such as mysql://user:pw@host/db, got {url!r}")
    try:
        parse_url(url)
    except ValueError as exc:
        raise ValueError(f"is not a usable database URL ({redact(url)}): {exc}") from None
    return url


def _redis_url(url: object) -> str | None:
    if url is None:
        return None
    from scalekit import _redis

    if not isinstance(url, str) or not url:
        raise ValueError(f"must be a Redis URL such as redis://host:6379/0, got {url!r}")
    try:
        _redis.parse_url(url)  # the scheme, hosts and every query option
    except ValueError as exc:
        raise ValueError(f"is not a usable Redis URL: {exc}") from None
    return url


def _seconds(value: object, what: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what + ' ' if what else ''}must be a number of seconds, got {value!r}")
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise ValueError(
            f"{what + ' ' if what else ''}must be a finite number of seconds >= 0, got {value!r}"
        )
    return float(value)


def _proxy(entry: str) -> str:
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        raise ValueError(
            f"has {entry!r}, which is not an IP address or CIDR (write e.g. '10.0.0.0/8' or "
            "'127.0.0.1'; several are separated by commas)"
        ) from None
    return entry


def _rate(value: object) -> str | None:
    if value is None:
        return None
    from scalekit._rates import RateSyntaxError, parse_rates

    try:
        parse_rates(cast(str, value))
    except RateSyntaxError as exc:
        raise ValueError(f"is not a rate limit: {exc}") from None
    return cast(str, value)


def _metrics_path(value: object) -> str:
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or any(char in value for char in "{}?# \t\r\n")
    ):
        raise ValueError(
            f"must start with '/' and be a fixed path (no parameters, query or spaces), "
            f"got {value!r}"
        )
    return value


def _choice(kind: type[enum.StrEnum]) -> Callable[[object], enum.StrEnum]:
    def convert(value: object) -> enum.StrEnum:
        try:
            return kind(cast(str, value))
        except ValueError:
            allowed = " or ".join(repr(choice.value) for choice in kind)
            raise ValueError(f"must be {allowed}, got {value!r}") from None

    return convert


def _forwarded_header(value: object) -> ForwardedHeader:
    try:
        return ForwardedHeader(cast(str, value))
    except ValueError:
        choices = ", ".join(repr(member.value) for member in ForwardedHeader)
        raise ValueError(
            f"must be one of {choices} (the header your proxy sets), got {value!r}"
        ) from None


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _shards(value: object) -> tuple[tuple[str, ...], ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(
            f"must be a list of shards, each a list of URLs (primary first), got {value!r}"
        )
    # A bare string is a shard with no replicas: ("sqlite:///a.db", "sqlite:///b.db").
    shards = tuple(
        (shard,) if isinstance(shard, str) else tuple(cast(Iterable[str], shard)) for shard in value
    )
    if any(not shard or not all(shard) for shard in shards):
        raise ValueError(f"must give every shard its primary's URL first, got {value!r}")
    for shard in shards:
        for url in shard:
            _database_url(url)
    return shards


def _optional(check: Callable[[str], str]) -> Callable[[object], str | None]:
    def convert(value: object) -> str | None:
        return None if value is None else check(cast(str, value))

    return convert


_CHECKS: dict[str, Callable[[object], object]] = {
    "database_url": _optional(_database_url),
    "replica_urls": lambda value: tuple(
        _database_url(url) for url in _strings(value, "database URLs")
    ),
    "redis_url": _redis_url,
    "trusted_proxies": lambda value: tuple(
        _proxy(entry) for entry in _strings(value, "IP addresses or CIDRs")
    ),
    "forwarded_header": _forwarded_header,
    "rate_limit": _rate,
    "max_lag": _seconds,
    "pin_after_write": _seconds,
    "access_log": _boolean,
    "metrics_path": _metrics_path,
    "shard_urls": _shards,
    "shard_strategy": _choice(ShardStrategyName),
    "env": _choice(Environment),
}
"""How each field is checked and normalised; ``from_env`` parses text first (``_FROM_TEXT``)."""


def _float_text(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"must be a number of seconds, got {text!r}") from None


def _bool_text(text: str) -> bool:
    if text.lower() not in _TRUE | _FALSE:
        raise ValueError(f"must be true or false, got {text!r}")
    return text.lower() in _TRUE


def _shards_text(text: str) -> tuple[tuple[str, ...], ...]:
    shards = text.rstrip("; \t\r\n").split(";")  # a trailing ';' moves no shard
    for number, shard in enumerate(shards, 1):
        if not shard.strip():
            # Never skipped: dropping one would shift every later shard's index,
            # and with it where keys live.
            raise ValueError(
                f"has an empty shard (number {number} of {len(shards)}): write each shard's "
                "URLs, primary first, and separate shards by one ';'"
            )
    return tuple(tuple(url.strip() for url in shard.split(",") if url.strip()) for shard in shards)


_FROM_TEXT: dict[str, Callable[[str], object]] = {
    "max_lag": _float_text,
    "pin_after_write": _float_text,
    "access_log": _bool_text,
    "shard_urls": _shards_text,
}
"""Fields whose environment text is not already the keyword's value."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """What :func:`scalekit.install` sets up.

    With no URLs, everything runs in-process: no database pools, an in-memory
    cache and in-memory rate-limit counters (fine for one instance and tests).

    Args:
        database_url: the primary, e.g. ``mysql://app:pw@db:3306/tasks`` or
            ``sqlite:///data/app.db``; ``None`` opens no pool.
        replica_urls: read replicas of the primary (a list, or one string
            separated by commas).
        redis_url: shared cache, rate-limit counters and read-your-writes marks;
            ``None`` keeps them in process. Needs the ``redis`` extra.
        trusted_proxies: CIDRs of the proxies whose ``forwarded_header`` is
            believed (a list, or one string separated by commas).
        forwarded_header: the one header those proxies put the client address
            in: ``"x-forwarded-for"`` (default), ``"forwarded"`` or ``"x-real-ip"``.
        rate_limit: a default rule, e.g. ``"100/15 minutes"``, for the requests
            no route-level rule covers; ``None`` for none.
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

    Raises:
        SettingsError: a value is invalid; the message names the field and what it expects.
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

    def __repr__(self) -> str:
        # Settings end up in start-up logs and tracebacks: never print a password.
        fields = ", ".join(
            f"{field.name}={_redacted(getattr(self, field.name))!r}"
            for field in dataclasses.fields(self)
        )
        return f"{type(self).__name__}({fields})"

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            check = _CHECKS.get(field.name)
            if check is None:
                continue
            try:
                value = check(getattr(self, field.name))
            except ValueError as exc:
                raise SettingsError(field.name, str(exc)) from None
            object.__setattr__(self, field.name, value)
        if self.pin_after_write <= self.max_lag + 2:
            # ReplicaSet's bound: max_lag + 1 (whole-second lag) + lag_check_interval (1 s).
            raise SettingsError(
                "pin_after_write",
                f"({self.pin_after_write!r}) must exceed max_lag + 2 = {self.max_lag + 2:g} "
                f"(max_lag is {self.max_lag!r}; lag is reported in whole seconds and checked "
                "every second): reads return to replicas only once they have the write",
            )
        if self.replica_urls and not self.database_url:
            raise SettingsError("replica_urls", "need a database_url for the primary")

    @classmethod
    def known_variables(cls, prefix: str = "SCALEKIT_") -> tuple[str, ...]:
        """The environment variables :meth:`from_env` reads."""
        return tuple(prefix + field.name.upper() for field in dataclasses.fields(cls))

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        prefix: str = "SCALEKIT_",
        app_variables: Iterable[str] = (),
    ) -> Settings:
        """Settings from ``SCALEKIT_DATABASE_URL``, ``SCALEKIT_REPLICA_URLS`` (comma
        separated), ``SCALEKIT_REDIS_URL``, ``SCALEKIT_TRUSTED_PROXIES`` (comma
        separated), ``SCALEKIT_FORWARDED_HEADER``, ``SCALEKIT_RATE_LIMIT``,
        ``SCALEKIT_MAX_LAG``, ``SCALEKIT_PIN_AFTER_WRITE``, ``SCALEKIT_ACCESS_LOG``,
        ``SCALEKIT_METRICS_PATH``,
        ``SCALEKIT_SHARD_URLS`` (shards separated by ``;``, each shard's primary
        then its replicas separated by ``,``), ``SCALEKIT_SHARD_STRATEGY``, ``SCALEKIT_ENV``.

        An empty variable counts as unset.

        Args:
            environ: the variables (default ``os.environ``).
            prefix: the prefix of every variable.
            app_variables: other variables with the prefix that your app reads
                itself (``"SCALEKIT_JWT_SECRET"``), so they are not reported as unknown.

        Raises:
            SettingsError: a variable that does not parse, or an unknown
                variable with the prefix (a typo); the message names it.
        """
        env = os.environ if environ is None else environ
        known = dict(zip(cls.known_variables(prefix), dataclasses.fields(cls), strict=True))
        allowed = set(known) | set(app_variables)
        for name in sorted(env):
            if (
                name not in allowed
                and not name.startswith(prefix)
                and name.upper().startswith(prefix.upper())
            ):
                # scalekit_rate_limit: environment names are case-sensitive, so it is never read.
                suffixes = [known_name.removeprefix(prefix) for known_name in known]
                close = difflib.get_close_matches(name[len(prefix) :].upper(), suffixes, n=1)
                wanted = prefix + (close[0] if close else name[len(prefix) :].upper())
                raise SettingsError(
                    name[len(prefix) :].lower(),
                    f"is not read: variable names are case-sensitive; did you mean {wanted}? "
                    f"(pass app_variables=[{name!r}] if your app reads it)",
                    variable=name,
                )
            if name.startswith(prefix) and name not in allowed:
                # Compare without the prefix, which every name shares.
                suffixes = [known_name.removeprefix(prefix) for known_name in known]
                close = difflib.get_close_matches(name.removeprefix(prefix), suffixes, n=1)
                hint = (
                    f"did you mean {prefix + close[0]}?" if close else f"known: {', '.join(known)}"
                )
                raise SettingsError(
                    name.removeprefix(prefix).lower(),
                    f"is not a scalekit setting; {hint} (pass app_variables=[{name!r}] "
                    "if your app reads it)",
                    variable=name,
                )
        values: dict[str, object] = {}
        for name, field in known.items():
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                continue
            raw = raw.strip()
            parse = _FROM_TEXT.get(field.name)
            try:
                values[field.name] = parse(raw) if parse is not None else raw
            except ValueError as exc:
                raise SettingsError(field.name, str(exc), variable=name) from None
        try:
            return cls(**values)  # type: ignore[arg-type]
        except SettingsError as exc:
            variable = prefix + exc.field.upper()
            raise SettingsError(exc.field, exc.problem, variable=variable) from None
