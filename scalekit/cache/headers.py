"""HTTP header rules of the cache: Cache-Control, Vary, ETag, Cache-Status.

Header names and directives are compared case-insensitively; a header may
repeat and may hold several comma-separated directives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

__all__ = [
    "cache_control",
    "cache_status",
    "etag_for",
    "header_values",
    "if_none_match_matches",
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
