"""The stored form of a response: status, headers, body, when it was stored."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

__all__ = ["Entry"]

_LENGTH = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Entry:
    """A cached response.

    ``headers`` exclude hop-by-hop and per-response ones (``Cache-Status``,
    ``Age``); ``stored_at`` is wall-clock seconds from the injected clock.
    """

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    etag: str
    stored_at: float

    def encode(self) -> bytes:
        """Bytes for the backend: a length-prefixed JSON head, then the body (no pickle)."""
        head = json.dumps(
            [
                self.status,
                [[key.decode("latin-1"), value.decode("latin-1")] for key, value in self.headers],
                self.etag,
                self.stored_at,
            ],
            separators=(",", ":"),
        ).encode("latin-1")
        return _LENGTH.pack(len(head)) + head + self.body

    @classmethod
    def decode(cls, data: bytes) -> Entry:
        """The entry ``encode`` produced.

        Raises:
            ValueError: the bytes are not an entry (corrupt or foreign data).
        """
        try:
            (length,) = _LENGTH.unpack_from(data)
            if 4 + length > len(data):
                raise ValueError("the head is longer than the data")
            status, headers, etag, stored_at = json.loads(data[4 : 4 + length])
            if not isinstance(status, int) or not 100 <= status <= 599:
                raise ValueError(f"status {status!r}")
            return cls(
                status,
                tuple((key.encode("latin-1"), value.encode("latin-1")) for key, value in headers),
                bytes(data[4 + length :]),
                str(etag),
                float(stored_at),
            )
        except (struct.error, ValueError, TypeError, AttributeError, OverflowError) as exc:
            raise ValueError(f"not a scalekit cache entry: {exc}") from exc
