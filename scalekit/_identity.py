"""Who a request is: the one answer the cache and the rate limiter share.

``install(identity=...)`` computes it once per request, from a callable of
the request (a JWT decoder, an API-key lookup), and leaves it in the scope
under :data:`IDENTITY_SCOPE_KEY`; the cache's ``vary_user`` and credentialed
bypass and the limiter's ``user`` key read it there. Without the hook, an
authenticated ``scope["user"]`` (Starlette's ``AuthenticationMiddleware``)
is the identity.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

__all__ = ["IDENTITY_SCOPE_KEY", "identity_of"]

IDENTITY_SCOPE_KEY = "scalekit.identity"
"""The scope key holding the request's identity (a string, or None for anonymous)."""


def identity_of(scope: MutableMapping[str, Any]) -> str | None:
    """The request's identity: the hook's answer if it ran, else ``scope["user"]``'s."""
    if IDENTITY_SCOPE_KEY in scope:
        found = scope[IDENTITY_SCOPE_KEY]
        return str(found) if found not in (None, "") else None
    user = scope.get("user")
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    identity = getattr(user, "identity", None)
    return None if identity is None or identity == "" else str(identity)
