"""Deciding: what a request may do with the cache, and what a lookup found.

:func:`plan` turns a request a rule matched into a :class:`CacheRequest`
(its keys and tags, computed once) or a :class:`Bypass` naming why the cache
stays out of it. :func:`classify` says whether a lookup found a
:class:`Fresh` entry, a :class:`Stale` one still inside its window, or
nothing usable (:class:`Missing`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from starlette.requests import Request
from starlette.types import Scope

from scalekit._identity import user_attribute
from scalekit._identity import user_identity as _user_identity
from scalekit.cache.entry import Entry
from scalekit.cache.headers import (
    RequestDirective,
    cache_control,
    request_directive,
    revalidation_required,
)
from scalekit.cache.keys import (
    EntryKeys,
    base_digest,
    entry_keys,
    normalise_query,
    request_target,
    vary_values,
)
from scalekit.cache.protocol import Lookup
from scalekit.cache.rules import CacheRule

__all__ = [
    "Bypass",
    "CacheRequest",
    "Fresh",
    "IdentityFunction",
    "Missing",
    "Stale",
    "classify",
    "has_identity",
    "plan",
    "user_identity",
]

IdentityFunction = Callable[[Scope], str | None]

_CREDENTIAL_HEADERS = (b"authorization", b"cookie")


def user_identity(scope: Scope) -> str | None:
    """The default identity: ``scope["user"].identity`` when authenticated, else ``None``.

    ``scope["user"]`` is set by Starlette's ``AuthenticationMiddleware``; a
    user whose class does not implement ``identity`` has none.
    """
    return _user_identity(scope.get("user"))


def has_identity(scope: Scope, identity: IdentityFunction) -> bool:
    """Whether the request carries credentials or an identity, by any means.

    A credential header, an authenticated ``scope["user"]`` (whatever the
    authentication backend read), or an answer from ``identity``.
    """
    if any(key.lower() in _CREDENTIAL_HEADERS for key, _ in scope["headers"]):
        return True
    user = scope.get("user")
    if user is not None and user_attribute(user, "is_authenticated"):
        return True
    return identity(scope) is not None


class CacheRequest(NamedTuple):
    """Everything one cacheable GET/HEAD request needs, computed once (immutable).

    ``refresh``: the rule honours request directives and this request asked
    for a fresh answer.
    """

    rule: CacheRule
    scope: Scope
    headers: Sequence[tuple[bytes, bytes]]
    digest: str
    tags: tuple[str, ...]
    keys: EntryKeys
    head: bool
    refresh: bool

    def with_vary(self, vary: tuple[str, ...]) -> CacheRequest:
        """This request keyed on the values of the request headers ``vary`` names."""
        if vary == self.keys.vary:
            return self
        values = vary_values(self.headers, vary)
        return self._replace(keys=entry_keys(self.digest, self.tags, vary, values))


@dataclass(frozen=True, slots=True)
class Bypass:
    """The request goes to the app, past the cache, for ``reason``."""

    reason: str


def plan(
    rule: CacheRule,
    params: dict[str, Any],
    scope: Scope,
    *,
    identity: IdentityFunction,
    vary: tuple[str, ...],
) -> CacheRequest | Bypass:
    """What a GET/HEAD request ``rule`` matched does with the cache.

    Args:
        rule: the rule that matched.
        params: the path parameters the rule's template matched.
        scope: the request.
        identity: the identity function (``vary_user`` keys and bypasses).
        vary: the response ``Vary`` names learned for this rule so far.
    """
    headers = scope["headers"]
    user = None
    if rule.vary_user:
        user = identity(scope)
        if user is None:
            return Bypass("no-identity")
    elif has_identity(scope, identity):
        return Bypass("credentials")
    directive = (
        request_directive(headers) if rule.honor_request_directives else RequestDirective.NONE
    )
    if directive is RequestDirective.NO_STORE:
        return Bypass("request-no-store")
    tags = rule.tags_for(
        params,
        user,
        lambda: Request({**scope, "path_params": {**scope.get("path_params", {}), **params}}),
    )
    digest = base_digest(
        rule.name,
        request_target(scope),
        normalise_query(scope.get("query_string", b"")),
        user,
        vary_values(headers, tuple(rule.vary_headers)),
    )
    keys = entry_keys(digest, tags, vary, vary_values(headers, vary))
    return CacheRequest(
        rule,
        scope,
        headers,
        digest,
        tags,
        keys,
        scope["method"] == "HEAD",
        directive is RequestDirective.REFRESH,
    )


@dataclass(frozen=True, slots=True)
class Fresh:
    """A fresh entry: serve it."""

    entry: Entry


@dataclass(frozen=True, slots=True)
class Stale:
    """An entry ``-ttl`` seconds stale, still inside the rule's stale window."""

    entry: Entry
    ttl: int


@dataclass(frozen=True, slots=True)
class Missing:
    """No entry to serve (none, expired, invalidated, or ``"corrupt"``)."""

    reason: str


def classify(found: Lookup, now: float, rule: CacheRule) -> Fresh | Stale | Missing:
    """What a lookup found, at ``now``; an entry that cannot be read is a miss."""
    if not found.usable or found.data is None:
        return Missing("")
    try:
        entry = Entry.decode(found.data)
    except ValueError:
        return Missing("corrupt")
    if now <= found.fresh_until:
        return Fresh(entry)
    if now <= found.fresh_until + rule.stale_ttl and not revalidation_required(
        cache_control(entry.headers)
    ):
        return Stale(entry, int(found.fresh_until - now))
    return Missing("")
