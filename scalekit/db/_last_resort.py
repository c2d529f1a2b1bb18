"""Reads while the primary fails: which replica may still serve them, and how long to wait.

A replica whose last status was good serves. One whose IO thread is
reconnecting serves only if it lost the primary *with* the set — it was last
seen replicating at most ``max_lag`` + 1 s + ``lag_check_interval`` (the
staleness bound of a serving replica) before the set first found the primary
failing — and has applied everything it received
(``detached``), waiting up to ``max_lag`` for that when it is still applying
it (``catching_up``, MariaDB with GTID). A read that must see a GTID gets it
there or not at all. The waits of one read share one deadline; reads rotate
over the replicas.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence

from .._clock import Clock
from ._deadline import Deadline
from ._replica_health import LAG_RESOLUTION, ReplicaHealth, ReplicaState
from ._types import Params, Row
from .marks import merge_gtids

__all__ = ["LastResort"]

_READ_MARGIN = 0.5
"""Seconds of a replica read's deadline left for the read after a GTID wait."""

ReplicaRead = Callable[
    [str, Params, "str | None", Iterator[ReplicaHealth], "float | None"],
    tuple[bool, list[Row], str],
]
"""``ReplicaSet._replica_read``: (sql, params, gtid, candidates, wait) -> (served, rows, why)."""


class LastResort:
    """A ``ReplicaSet``'s reads while its primary fails."""

    def __init__(
        self,
        replicas: Sequence[ReplicaHealth],
        *,
        max_lag: float,
        causal_timeout: float,
        lag_check_interval: float,
        clock: Clock,
        read: ReplicaRead,
    ) -> None:
        self._replicas = list(replicas)
        self.max_lag = max_lag
        self.causal_timeout = causal_timeout
        # A serving replica may be this far behind (whole-second lag, checked
        # once per interval); a detached one is trusted no further.
        self._resolution = max_lag + LAG_RESOLUTION + lag_check_interval
        self._clock = clock
        self._read = read
        self._turn = itertools.count()
        self.failed_at: float | None = None
        """When the set first found the primary failing since it last answered: a
        detached replica last seen replicating well before that lost the primary
        earlier, and misses what it acknowledged since."""

    def primary_answered(self) -> None:
        self.failed_at = None

    def primary_failed(self) -> None:
        if self.failed_at is None:
            self.failed_at = self._clock.monotonic()

    def read(self, sql: str, params: Params, gtid: str | None) -> tuple[bool, list[Row], str]:
        """The read on a replica while the primary fails (and why none served).

        A replica qualifies when its last status was good, or when it was last
        seen replicating at most ``max_lag`` + 1 s + ``lag_check_interval``
        before the set found the primary failing and has applied everything
        it received — waiting up to ``max_lag`` for that (``catching_up``) on
        MariaDB with GTID. A read that must see a GTID gets it there or not at all.
        """
        replicas = self._replicas
        start = next(self._turn) % len(replicas)
        failed_at = self.failed_at
        if failed_at is None:  # pragma: no cover - query() records it first
            failed_at = self._clock.monotonic()
        timeouts = [r.pool.read_timeout for r in replicas]
        deadline = Deadline(None if None in timeouts else max(t or 0.0 for t in timeouts))
        reasons: list[str] = []
        for replica in replicas[start:] + replicas[:start]:
            left = deadline.remaining()
            if left is not None and left <= _READ_MARGIN:
                reasons.append("no time left for another replica")
                break
            standing = replica.last_resort()
            state, received = standing.state, standing.received
            name = replica.pool.name
            detached = state in (ReplicaState.DETACHED, ReplicaState.CATCHING_UP)
            if detached and standing.serving_at < failed_at - self._resolution:
                reasons.append(
                    f"{name} was last seen replicating {failed_at - standing.serving_at:.1f}s "
                    f"(more than {self._resolution:g}s) before this set found the primary "
                    "down: it may have lost the primary earlier"
                )
                continue
            if detached and not _covers(received, gtid):
                reasons.append(f"{name} never received GTID {gtid}")
                continue  # its IO thread is gone: waiting cannot help
            if state in (ReplicaState.SERVING, ReplicaState.DETACHED):
                need, wait = gtid, self.causal_timeout
            elif state is ReplicaState.CATCHING_UP and received is not None:
                need, wait = merge_gtids(gtid, received), max(self.max_lag, self.causal_timeout)
            else:
                reasons.append(f"{name} is {state.value}")
                continue
            read_timeout = replica.pool.read_timeout
            if read_timeout is not None:  # the wait and the read share one deadline
                wait = max(min(wait, read_timeout - _READ_MARGIN), 0.0)
            if left is not None:  # and all replicas tried share the read's
                wait = max(min(wait, left - _READ_MARGIN), 0.0)
            served, rows, why = self._read(sql, params, need, iter([replica]), wait)
            if served:
                return True, rows, ""
            if state is ReplicaState.CATCHING_UP and received is not None and why != "busy":
                replica.did_not_catch_up(received)
                reasons.append(
                    f"{name} was catching up and did not apply what it received within {wait:g}s"
                )
            else:
                reasons.append(f"{name} could not serve it")
        return False, [], ("; " + "; ".join(reasons)) if reasons else ""


def _covers(received: str | None, gtid: str | None) -> bool:
    """Whether a replica that received ``received`` has (or can apply) ``gtid``
    (True when either is unknown: the GTID wait decides then)."""
    if received is None or gtid is None:
        return True
    return merge_gtids(received, gtid) == merge_gtids(received)
