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

import structlog

__all__ = ["IDENTITY_SCOPE_KEY", "identity_of", "user_attribute", "user_identity"]

_logger = structlog.get_logger("scalekit")
_warned: set[type] = set()

IDENTITY_SCOPE_KEY = "scalekit.identity"
"""The scope key holding the request's identity (a string, or None for anonymous)."""


def identity_of(scope: MutableMapping[str, Any]) -> str | None:
    """The request's identity: the hook's answer if it ran, else ``scope["user"]``'s."""
    if IDENTITY_SCOPE_KEY in scope:
        found = scope[IDENTITY_SCOPE_KEY]
        return str(found) if found not in (None, "") else None
    return user_identity(scope.get("user"))


def user_attribute(user: Any, name: str) -> Any:
    """``user.<name>``, or None when the user's class does not provide it.

    Starlette's ``BaseUser`` raises ``NotImplementedError`` for a property a
    subclass leaves out, and its docs ask only for ``is_authenticated`` and
    ``display_name``: a missing ``identity`` must not turn into a 500.
    """
    try:
        return getattr(user, name, None)
    except NotImplementedError:
        return None


def user_identity(user: Any) -> str | None:
    """The ``identity`` of an authenticated ``scope["user"]``; None for anonymous or none.

    A user whose class has no ``identity`` has none (never its
    ``display_name``, which two users may share): ``vary_user`` rules then
    bypass it, and a warning says so once per class.
    """
    if user is None or not user_attribute(user, "is_authenticated"):
        return None
    identity = user_attribute(user, "identity")
    if identity is None or identity == "":
        if type(user) not in _warned:
            _warned.add(type(user))
            _logger.warning(
                "authenticated user has no identity",
                user_class=type(user).__qualname__,
                hint="implement BaseUser.identity (a unique id) or pass identity=; "
                "until then vary_user cache rules bypass this user",
            )
        return None
    return str(identity)
