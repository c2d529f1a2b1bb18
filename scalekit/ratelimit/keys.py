"""Who a request counts against: the client IP, the user, a header, or your own callable.

A key function takes the ASGI scope and returns the identity string, or
``None`` to fall back to the client IP. The built-ins prefix their identity
(``ip:``, ``user:``, ``header:x-api-key:``) so a user named like an address
never shares a counter with that address.

The middleware resolves the client IP once per request (through
:class:`scalekit._net.ClientIP`, honouring ``trusted_proxies``) and leaves it
in the scope under ``"scalekit.client_ip"``, where :func:`client_ip` reads it.

Counters are stored under a digest of the identity (:func:`identity_tag`),
never the identity itself: any string a key function returns, braces,
colons and all, gets its own counter, and every rule of one identity shares
one Redis Cluster hash slot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from starlette.types import Scope

from scalekit._identity import IDENTITY_SCOPE_KEY, user_attribute
from scalekit._net import ClientIP
from scalekit.errors import ConfigurationError

__all__ = [
    "CLIENT_IP_SCOPE_KEY",
    "KeyFunction",
    "client_ip",
    "header",
    "identity_of",
    "identity_tag",
    "user",
]

KeyFunction = Callable[[Scope], "str | None"]
"""A key function: ASGI scope in, identity out (``None`` means "use the client IP")."""

CLIENT_IP_SCOPE_KEY = "scalekit.client_ip"

_fallback_ip = ClientIP()


def _ip_of(scope: Any) -> str:
    ip = scope.get(CLIENT_IP_SCOPE_KEY)
    return str(ip) if ip is not None else _fallback_ip(scope)


def client_ip(scope: Any) -> str:
    """Key by client IP: the TCP peer, or the forwarded client behind a trusted proxy."""
    return "ip:" + _ip_of(scope)


def user(scope: Any) -> str | None:
    """Key by the authenticated user; ``None`` (so the client IP) when nobody is logged in.

    Reads ``scope["user"]`` as Starlette's ``AuthenticationMiddleware`` sets it
    (``identity``, else ``display_name``; an object whose ``is_authenticated``
    is false counts as nobody), or ``scope["state"]["user"]`` when an earlier
    middleware put a plain string there. Put the authentication middleware
    outside the rate limiter so the user is known when the limit is checked.
    With ``install(identity=...)``, the identity that hook computed wins.
    """
    if IDENTITY_SCOPE_KEY in scope:  # install(identity=...) ran for this request
        hooked = scope[IDENTITY_SCOPE_KEY]
        return "user:" + str(hooked) if hooked not in (None, "") else None
    found = scope.get("user")
    if found is None:
        state = scope.get("state")
        found = state.get("user") if isinstance(state, dict) else None
    if found is None:
        return None
    if isinstance(found, str):
        return "user:" + found if found else None
    if not getattr(found, "is_authenticated", True):
        return None
    name = user_attribute(found, "identity") or user_attribute(found, "display_name")
    return "user:" + str(name) if name else None


def header(name: str) -> KeyFunction:
    """Key by the value of request header ``name`` (e.g. ``"X-API-Key"``); absent: client IP.

    The client chooses the value: a made-up one per request is a new counter
    each time. Pair it with a ``client_ip`` rule, or key on a verified identity.

    Raises:
        ValueError: ``name`` is empty.
    """
    if not name or not name.strip():
        raise ConfigurationError('header() needs a header name, e.g. header("X-API-Key")')
    wanted = name.strip().lower().encode("latin-1")
    prefix = "header:" + wanted.decode("latin-1") + ":"

    def key(scope: Any) -> str | None:
        header_name: bytes
        value: bytes
        for header_name, value in scope.get("headers") or ():
            if header_name.lower() == wanted and value:
                return prefix + value.decode("latin-1")
        return None

    key.__name__ = f"header({name!r})"
    key.__qualname__ = key.__name__
    return key


def identity_of(key: KeyFunction, scope: Any) -> str:
    """The identity ``key`` gives ``scope``, falling back to the client IP."""
    if key is client_ip:
        return client_ip(scope)
    found: str | None = key(scope)
    return found if found else client_ip(scope)


def identity_tag(identity: str) -> str:
    """The Redis hash tag that holds ``identity``'s counters: ``{`` 32 hex digits ``}``.

    The digits are a BLAKE2b-128 digest of the identity, so two identities
    share counters only if they are equal (a client cannot reach another's
    counter by adding or removing characters), the key's length is fixed
    whatever a header carries, and the braces make every rule of one identity
    land in one Redis Cluster slot. To find a client's counters::

        identity_tag("ip:203.0.113.7")  # rl:{…}:<rule>:<limit>/<window>:<strategy>
    """
    digest = hashlib.blake2b(identity.encode("utf-8", "surrogatepass"), digest_size=16)
    return "{" + digest.hexdigest() + "}"
