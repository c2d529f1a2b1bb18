"""HTTP header rules of the cache: Cache-Control, Vary, ETag, Cache-Status.

Header names and directives are compared case-insensitively; a header may
repeat and may hold several comma-separated directives.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Sequence

__all__ = [
    "RequestDirective",
    "cache_control",
    "cache_status",
    "etag_for",
    "header_values",
    "if_none_match_matches",
    "request_directive",
    "response_max_age",
    "revalidation_required",
    "vary_names",
]

RawHeaders = Sequence[tuple[bytes, bytes]]
CACHE_NAME = "scalekit"


def header_values(headers: RawHeaders, name: bytes) -> list[str]:
    """Every value of header ``name`` (lower-case bytes), in order; repeats kept."""
    return [value.decode("latin-1") for key, value in headers if key.lower() == name]


def _split(values: Iterable[str]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def cache_control(headers: RawHeaders) -> dict[str, str]:
    """The Cache-Control directives, lower-case names mapped to their (unquoted) values."""
    directives: dict[str, str] = {}
    for item in _split(header_values(headers, b"cache-control")):
        name, _, value = item.partition("=")
        directives.setdefault(name.strip().lower(), value.strip().strip('"'))
    return directives


def vary_names(headers: RawHeaders) -> tuple[str, ...]:
    """The response's Vary header names, lower-case, sorted, de-duplicated (``*`` kept)."""
    return tuple(sorted({name.lower() for name in _split(header_values(headers, b"vary"))}))


def etag_for(body: bytes) -> str:
    """A strong, quoted ETag from the body alone, so every process computes the same one."""
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def if_none_match_matches(values: Sequence[str], etag: str) -> bool:
    """Whether an ``If-None-Match`` (weak comparison, lists, ``*``) matches ``etag``."""
    wanted = etag.removeprefix("W/")
    return any(item == "*" or item.removeprefix("W/") == wanted for item in _split(values))


def cache_status(*params: str) -> tuple[bytes, bytes]:
    """A ``Cache-Status`` header (RFC 9211) naming scalekit, e.g. ``scalekit; hit``."""
    return b"cache-status", "; ".join((CACHE_NAME, *params)).encode("latin-1")


def response_max_age(directives: dict[str, str]) -> float | None:
    """Seconds a shared cache may keep a response fresh, by its own Cache-Control.

    ``s-maxage`` wins over ``max-age`` (it is meant for shared caches);
    ``None`` when neither is given. A value that is not a non-negative
    integer counts as 0 (RFC 9111 treats it as stale).
    """
    for name in ("s-maxage", "max-age"):
        if name in directives:
            value = directives[name]
            return float(value) if value.isdigit() else 0.0
    return None


def revalidation_required(directives: dict[str, str]) -> bool:
    """Whether a stale copy may never be served (``must-revalidate`` and kin).

    ``s-maxage`` implies ``proxy-revalidate`` (RFC 9111, 5.2.2.10).
    """
    return any(name in directives for name in ("must-revalidate", "proxy-revalidate", "s-maxage"))


class RequestDirective(enum.StrEnum):
    """What a request's own cache directives ask of a shared cache."""

    NONE = "none"
    REFRESH = "refresh"
    """``no-cache``, ``max-age=0`` or ``Pragma: no-cache``: answer from the origin."""
    NO_STORE = "no-store"
    """``no-store``: answer from the origin and store nothing."""


def request_directive(headers: RawHeaders) -> RequestDirective:
    """The request's cache directive (only acted on where a rule opts in)."""
    directives = cache_control(headers)
    if "no-store" in directives:
        return RequestDirective.NO_STORE
    if "no-cache" in directives or directives.get("max-age") == "0":
        return RequestDirective.REFRESH
    pragma = ",".join(header_values(headers, b"pragma")).lower()
    if not directives and "no-cache" in pragma:
        return RequestDirective.REFRESH
    return RequestDirective.NONE
