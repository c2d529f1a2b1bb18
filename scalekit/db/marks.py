"""Read-your-writes marks: "key K wrote recently (up to GTID G)", shared or local.

A ``ReplicaSet`` marks a key after a write and looks it up before a read
for that key. :class:`MemoryMarks` serves one process; :class:`RedisMarks`
serves every instance (Redis standalone, Sentinel or Cluster: one key per
mark, so Cluster is fine).

A mark keeps, per GTID domain, the highest sequence number written under the
key — never the last writer's — so a slower writer cannot lower it.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from typing import Any, Protocol, runtime_checkable

from scalekit.errors import ConfigurationError, ScalekitError

from .._clock import Clock, get_clock
from .._redis import redis_errors, sync_from_url

__all__ = ["Mark", "MarkStore", "MarkStoreUnavailable", "MemoryMarks", "RedisMarks", "merge_gtids"]


class MarkStoreUnavailable(ScalekitError):
    """The mark store could not be reached; reads for the key go to the primary."""


@dataclasses.dataclass(frozen=True, slots=True)
class Mark:
    """A live mark: the key wrote recently; ``gtid`` is its highest GTID, if recorded."""

    gtid: str | None = None


@runtime_checkable
class MarkStore(Protocol):
    """Where read-your-writes marks live."""

    def mark(self, key: str, ttl: float, gtid: str | None = None) -> None:
        """Mark ``key`` for ``ttl`` seconds, raising its GTID to at least ``gtid``.

        Raises:
            MarkStoreUnavailable: the store could not be reached.
        """
        ...

    def lookup(self, key: str) -> Mark | None:
        """The live mark of ``key``, or None.

        Raises:
            MarkStoreUnavailable: the store could not be reached.
        """
        ...


def _parse_gtids(gtid: str | None) -> dict[str, tuple[str, int]]:
    """``"0-1-42,1-2-7"`` → ``{"0": ("1", 42), "1": ("2", 7)}``."""
    parsed: dict[str, tuple[str, int]] = {}
    for item in (gtid or "").split(","):
        item = item.strip()
        if not item:
            continue
        domain, server, sequence = item.split("-")
        parsed[domain] = (server, int(sequence))
    return parsed


def _format_gtids(gtids: dict[str, tuple[str, int]]) -> str | None:
    if not gtids:
        return None
    return ",".join(f"{d}-{s}-{n}" for d, (s, n) in sorted(gtids.items(), key=lambda i: int(i[0])))


def merge_gtids(*positions: str | None) -> str | None:
    """The per-domain highest of several GTID positions (``"0-1-5"``, ``"0-1-9,1-2-3"``)."""
    merged: dict[str, tuple[str, int]] = {}
    for position in positions:
        for domain, (server, sequence) in _parse_gtids(position).items():
            # Same sequence from two servers cannot happen in GTID strict mode;
            # break the tie by server id so the result does not depend on order.
            if domain not in merged or (merged[domain][1], merged[domain][0]) < (sequence, server):
                merged[domain] = (server, sequence)
    return _format_gtids(merged)


class MemoryMarks:
    """Marks in this process's memory (one instance, or tests).

    Args:
        clock: the clock for expiry (default ``get_clock()``).
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock = clock or get_clock()
        self._lock = threading.Lock()
        self._marks: dict[str, tuple[float, str | None]] = {}
        self._writes_since_sweep = 0

    def mark(self, key: str, ttl: float, gtid: str | None = None) -> None:
        now = self._clock.monotonic()
        with self._lock:
            until, old = self._marks.get(key, (0.0, None))
            if until <= now:
                old = None
            self._marks[key] = (max(until, now + ttl), merge_gtids(old, gtid))
            self._writes_since_sweep += 1
            if self._writes_since_sweep >= 1024:
                self._writes_since_sweep = 0
                self._marks = {k: v for k, v in self._marks.items() if v[0] > now}

    def lookup(self, key: str) -> Mark | None:
        with self._lock:
            found = self._marks.get(key)
        if found is None or found[0] <= self._clock.monotonic():
            return None
        return Mark(found[1])

    def __len__(self) -> int:
        return len(self._marks)


# KEYS[1] mark; ARGV: ttl ms, then domain, server, seq triples.
_MARK_SCRIPT = """
redis.call('HSET', KEYS[1], 'w', '1')
for i = 2, #ARGV, 3 do
  local field = 'd' .. ARGV[i]
  local old = redis.call('HGET', KEYS[1], field)
  local seq = tonumber(ARGV[i + 2])
  if (not old) or tonumber(string.match(old, '(%d+)$')) < seq then
    redis.call('HSET', KEYS[1], field, ARGV[i + 1] .. '-' .. ARGV[i + 2])
  end
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 1
"""


class RedisMarks:
    """Marks in Redis, shared by every instance: one hash per key, one round trip each way.

    A mark lives exactly as long as its key: Redis' own clock expires it
    ``ttl`` after the latest write, so clock skew between application hosts
    cannot shorten (or lengthen) a pin.

    Args:
        url: a scalekit Redis URL (``redis://``, ``redis+sentinel://``, ``redis+cluster://``).
        client: a blocking redis-py client to use instead of ``url``.
        prefix: prepended to every key.
        clock: deprecated and unused (expiry is Redis' TTL).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        prefix: str = "scalekit:rw:",
        clock: Clock | None = None,
    ) -> None:
        if (url is None) == (client is None):
            raise ConfigurationError("RedisMarks takes a url or a client (one of them)")
        if clock is not None:
            warnings.warn(
                "RedisMarks(clock=...) is unused: marks expire by Redis' own TTL; "
                "drop the argument",
                DeprecationWarning,
                stacklevel=2,
            )
        self._client = client if client is not None else sync_from_url(url or "")
        self._errors = redis_errors()
        self._prefix = prefix
        self._script = self._client.register_script(_MARK_SCRIPT)

    def mark(self, key: str, ttl: float, gtid: str | None = None) -> None:
        args: list[Any] = [max(int(ttl * 1000), 1)]
        for domain, (server, sequence) in _parse_gtids(gtid).items():
            args += [domain, server, sequence]
        try:
            self._script(keys=[self._prefix + key], args=args)
        except self._errors as exc:
            raise MarkStoreUnavailable(f"cannot write read-your-writes mark: {exc}") from exc

    def lookup(self, key: str) -> Mark | None:
        try:
            found = self._client.hgetall(self._prefix + key)
        except self._errors as exc:
            raise MarkStoreUnavailable(f"cannot read read-your-writes mark: {exc}") from exc
        if not found:
            return None  # never written, or expired by Redis
        fields = {_text(k): _text(v) for k, v in found.items()}
        gtids = {
            name[1:]: (value.rsplit("-", 1)[0], int(value.rsplit("-", 1)[1]))
            for name, value in fields.items()
            if name.startswith("d")
        }
        return Mark(_format_gtids(gtids))

    def close(self) -> None:
        """Close the Redis client."""
        self._client.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
