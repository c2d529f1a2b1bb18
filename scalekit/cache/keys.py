"""Cache keys: method class + path + normalised query + vary values.

A key never depends on the order of query parameters, and an absent request
header keys differently from an empty one. The tag versions an entry was
computed under are stored with it and compared on every read, which is the
same as making them part of the key without a second lookup.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from scalekit._redis import hash_tag

__all__ = ["EntryKeys", "base_digest", "entry_keys", "normalise_query", "vary_values"]

_ABSENT = "\x00absent"
_SEPARATOR = "\x1f"


def normalise_query(query_string: bytes) -> str:
    """The query string with parameters sorted (repeats and blank values kept)."""
    if not query_string:
        return ""
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    return urlencode(sorted(pairs))


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
    path: str,
    query: str,
    user: str | None,
    vary: Sequence[str],
) -> str:
    """The digest of everything that selects an entry before the response's own Vary."""
    method_class = "GET"  # GET and HEAD share entries; only GET responses are stored
    who = _ABSENT if user is None else f"user={user}"
    return _digest((method_class, rule, path, query, who, *vary))


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
