"""Rate limiting for Starlette/FastAPI: exact, one Redis round trip, safe behind proxies.

::

    from scalekit.ratelimit import RateLimitMiddleware, Rule, user

    app = RateLimitMiddleware(app, storage="redis://localhost:6379/0", rules=[
        Rule("100/15 minutes"),
        Rule("5/15 minutes", path="/api/v1/auth/login", methods=["POST"], count="failures"),
    ], trusted_proxies=["10.0.0.0/8"])

Closed sets are StrEnums that also accept their string values:
:class:`Strategy`, :class:`Count`, :class:`OnBackendError`,
:class:`ForwardedHeader` and :class:`Mode`.

Names follow one scheme with :mod:`scalekit.cache`: the rule, the backend
protocol and the unavailable-backend error carry the component's name
(``CacheRule``/``RateLimitRule``, ``CacheBackend``/``RateLimitBackend``,
``CacheUnavailable``/``RateLimitUnavailable``). ``Rule`` is the short name
of ``RateLimitRule`` (the same class, not deprecated). The old spellings
(``Backend``, ``MemoryBackend``, ``RedisBackend``, ``BackendUnavailable``,
``Check``, ``CheckResult``) still import, with a ``DeprecationWarning``.

Errors::

    ScalekitError
    └── RateLimitError
        ├── RateLimitConfigError (also a ConfigurationError, a ValueError)
        └── RateLimitUnavailable
"""

from scalekit._net import ForwardedHeader
from scalekit.ratelimit.backends import (
    LimitCheck,
    LimitResult,
    MemoryRateLimitBackend,
    Mode,
    RateLimitBackend,
    RedisRateLimitBackend,
    Strategy,
    Verdict,
    backend_from_url,
)
from scalekit.ratelimit.errors import RateLimitConfigError, RateLimitError, RateLimitUnavailable
from scalekit.ratelimit.keys import KeyFunction, client_ip, header, identity_tag, user
from scalekit.ratelimit.middleware import RateLimitMiddleware
from scalekit.ratelimit.rules import (
    Count,
    LimitSource,
    OnBackendError,
    Rate,
    RateLimitRule,
    Rule,
    parse_rates,
)

__all__ = [
    "Count",
    "ForwardedHeader",
    "KeyFunction",
    "LimitCheck",
    "LimitResult",
    "LimitSource",
    "MemoryRateLimitBackend",
    "Mode",
    "OnBackendError",
    "Rate",
    "RateLimitBackend",
    "RateLimitConfigError",
    "RateLimitError",
    "RateLimitMiddleware",
    "RateLimitRule",
    "RateLimitUnavailable",
    "RedisRateLimitBackend",
    "Rule",
    "Strategy",
    "Verdict",
    "backend_from_url",
    "client_ip",
    "header",
    "identity_tag",
    "parse_rates",
    "user",
]

_RENAMED = {
    "Backend": "RateLimitBackend",
    "BackendUnavailable": "RateLimitUnavailable",
    "Check": "LimitCheck",
    "CheckResult": "LimitResult",
    "MemoryBackend": "MemoryRateLimitBackend",
    "RedisBackend": "RedisRateLimitBackend",
}


def __getattr__(name: str) -> object:
    new = _RENAMED.get(name)
    if new is None:
        raise AttributeError(f"module 'scalekit.ratelimit' has no attribute {name!r}")
    import warnings

    warnings.warn(
        f"scalekit.ratelimit.{name} is now {new} (one naming scheme with scalekit.cache); "
        f"the old name will be removed after 0.1",
        DeprecationWarning,
        stacklevel=2,
    )
    return globals()[new]
