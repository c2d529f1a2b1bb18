"""Cache keys: what selects an entry, so no two different answers share one.

A key is made of: the method class (GET and HEAD share entries), the rule,
the scheme, the host, the ``root_path``, the path, the query (parameters
sorted by name, repeats kept in their order), the identity, and the values
of the vary headers. An absent request header keys differently from an
empty one. The tag versions an entry was computed under are stored with it
and compared on every read, which is the same as making them part of the key
without a second lookup.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote_plus

from starlette.types import Scope

from scalekit._redis import hash_tag

__all__ = [
    "EntryKeys",
    "RequestTarget",
    "base_digest",
    "entry_keys",
    "normalise_query",
    "request_target",
    "vary_values",
]

_ABSENT = "\x00absent"
_SEPARATOR = "\x1f"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalise_query(query_string: bytes) -> str:
    """The query string with its parameters in a canonical order.

    Parameters are sorted by their name as the app decodes it; parameters of
    the same name keep their order (``?page=2&page=1`` and ``?page=1&page=2`` are
    different requests). The raw bytes are kept as they came, so two queries
    an app could tell apart never share a key.
    """
    if not query_string:
        return ""
    parts = [part for part in query_string.decode("latin-1").split("&") if part]
    if len(parts) > 1:
        parts.sort(key=_decoded_name)
    return "&".join(parts)


def _decoded_name(part: str) -> str:
    # Decoded exactly as Starlette's QueryParams decodes it (UTF-8, undecodable bytes
    # replaced): names the app reads as one name must keep their relative order,
    # so ?%FF=1&%FE=2 and ?%FE=2&%FF=1 (both "\ufffd" to the app) stay apart.
    name = part.partition("=")[0]
    if "%" in name or "+" in name:
        return unquote_plus(name)
    return name


@dataclass(frozen=True, slots=True)
class RequestTarget:
    """Where a request went: scheme, host (as sent), ``root_path``, path."""

    scheme: str
    host: str
    root_path: str
    path: str


def request_target(scope: Scope) -> RequestTarget:
    """The target of ``scope`` as Starlette's ``Request.url`` sees it.

    The host is the first ``Host`` header exactly as sent (the app sees it
    so), else the server address; the port is dropped when it is the
    scheme's default.
    """
    scheme = str(scope.get("scheme", "http"))
    host = ""
    for key, value in scope.get("headers", ()):
        if key.lower() == b"host":
            host = value.decode("latin-1")
            break
    else:
        server = scope.get("server")
        if server:
            name, port = server[0], server[1]
            host = name if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{name}:{port}"
    return RequestTarget(scheme, host, str(scope.get("root_path", "")), str(scope["path"]))


def vary_values(headers: Sequence[tuple[bytes, bytes]], names: Sequence[str]) -> list[str]:
    """One string per header name: its values joined, or a marker when absent."""
    values = []
    for name in names:
        raw = name.encode("latin-1")
        found = [value.decode("latin-1") for key, value in headers if key.lower() == raw]
        values.append(f"{name}={','.join(found)}" if found else f"{name}{_ABSENT}")
    return values


def _digest(parts: Sequence[str]) -> str:
    return hashlib.sha256(_SEPARATOR.join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def base_digest(
    rule: str,
    target: RequestTarget,
    query: str,
    user: str | None,
    vary: Sequence[str],
) -> str:
    """The digest of everything that selects an entry before the response's own Vary."""
    method_class = "GET"  # GET and HEAD share entries; only GET responses are stored
    who = _ABSENT if user is None else f"user={user}"
    return _digest(
        (
            method_class,
            rule,
            target.scheme,
            target.host,
            target.root_path,
            target.path,
            query,
            who,
            *vary,
        )
    )


@dataclass(frozen=True, slots=True)
class EntryKeys:
    """The logical keys of one entry (the backend adds its prefix).

    ``base`` holds the entry, or a marker naming the response's Vary headers
    when the entry lives at ``variant``; ``lock`` is the fill lock. All share
    one hash tag, so on Redis Cluster they live in one slot.
    """

    base: str
    variant: str
    lock: str
    vary: tuple[str, ...]


def entry_keys(
    digest: str, tags: Sequence[str], vary: tuple[str, ...], values: list[str]
) -> EntryKeys:
    """Keys for ``digest``; the hash tag is the first tag's, else the digest's."""
    tag = hash_tag(tags[0]) if tags else hash_tag(digest)
    base = f"{tag}:e:{digest}"
    variant = f"{base}:{_digest(values)}" if vary else base
    return EntryKeys(base, variant, f"{tag}:l:{digest}", vary)
