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

Errors::

    ScalekitError
    └── RateLimitError
        ├── RateLimitConfigError (also a ConfigurationError, a ValueError)
        └── BackendUnavailable
"""

from scalekit._net import ForwardedHeader
from scalekit.ratelimit.backends import (
    Backend,
    Check,
    CheckResult,
    MemoryBackend,
    Mode,
    RedisBackend,
    Strategy,
    Verdict,
    backend_from_url,
)
from scalekit.ratelimit.errors import BackendUnavailable, RateLimitConfigError, RateLimitError
from scalekit.ratelimit.keys import KeyFunction, client_ip, header, identity_tag, user
from scalekit.ratelimit.middleware import RateLimitMiddleware
from scalekit.ratelimit.rules import Count, LimitSource, OnBackendError, Rate, Rule, parse_rates

__all__ = [
    "Backend",
    "BackendUnavailable",
    "Check",
    "CheckResult",
    "Count",
    "ForwardedHeader",
    "KeyFunction",
    "LimitSource",
    "MemoryBackend",
    "Mode",
    "OnBackendError",
    "Rate",
    "RateLimitConfigError",
    "RateLimitError",
    "RateLimitMiddleware",
    "RedisBackend",
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
