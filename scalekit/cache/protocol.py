"""What a cache backend is: the storage seam of the cache middleware.

:class:`CacheBackend` is the protocol every backend follows (see
:mod:`scalekit.cache.backends` for what they promise); :class:`Lookup` is what
a lookup returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from scalekit.cache.keys import EntryKeys

__all__ = ["CacheBackend", "Lookup", "join_versions"]


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a backend found for a key.

    Attributes:
        data: the encoded entry, or ``None``.
        fresh_until: wall-clock seconds until which ``data`` is fresh.
        entry_versions: the tag versions ``data`` was computed under.
        versions: the current versions of the request's tags (comma-joined).
        marker: the Vary names stored at the base key, if any.
        final: ``False`` when ``marker`` names other Vary headers than the
            lookup assumed: look up again with them.
        lock_token: set when this lookup took the fill lock.
    """

    data: bytes | None
    fresh_until: float
    entry_versions: str | None
    versions: str
    marker: str | None
    final: bool
    lock_token: str | None

    @property
    def usable(self) -> bool:
        """An entry exists and no tag of it was invalidated since it was computed."""
        return self.data is not None and self.entry_versions == self.versions


@runtime_checkable
class CacheBackend(Protocol):
    """The storage seam of :class:`~scalekit.cache.CacheMiddleware`."""

    async def lookup(
        self,
        keys: EntryKeys,
        tags: Sequence[str],
        *,
        now: float,
        lock_ttl: float | None,
    ) -> Lookup:
        """Read an entry and its tags' versions; take the fill lock if asked and not fresh."""
        ...

    async def store(
        self,
        keys: EntryKeys,
        tags: Sequence[str],
        *,
        data: bytes,
        versions: str,
        fresh_until: float,
        expire: float,
        lock_token: str | None,
    ) -> bool:
        """Store unless a tag was invalidated since ``versions`` were read; release the lock."""
        ...

    async def release(self, keys: EntryKeys, lock_token: str) -> None:
        """Release a fill lock this process holds."""
        ...

    async def invalidate(self, *tags: str) -> None:
        """Make every entry depending on one of ``tags`` a miss (one counter bump per tag).

        Raises:
            CacheBackendError: the invalidation may not have happened.
        """
        ...

    def invalidate_sync(self, *tags: str) -> None:
        """The thread-safe blocking twin of :meth:`invalidate`, for worker threads."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def join_versions(versions: Sequence[int | bytes | str | None]) -> str:
    """Tag versions as a lookup reports them: comma-joined, an absent counter as ``0``."""
    return ",".join(
        "0" if version is None else version.decode() if isinstance(version, bytes) else str(version)
        for version in versions
    )
