"""What a guarded ``ShardSet`` statement does after meeting a bucket fence."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ... import events
from ..errors import BucketMoved
from .fence import Fenced, FenceState

if TYPE_CHECKING:
    from .shard_set import Route, ShardSet

__all__ = ["FenceRetry"]


class FenceRetry:
    """What a guarded statement does after meeting a fence: wait, reload, or give up."""

    def __init__(self, shard_set: ShardSet) -> None:
        self.shard_set = shard_set
        self.deadline: float | None = None
        self.delay = 0.005
        self.reloads = 0

    def after(self, fenced: Fenced, route: Route) -> float:
        """Seconds to wait before the next attempt (the caller reloads the map first).

        Raises:
            BucketMoved: frozen past ``freeze_timeout``, or moved and no way to reload.
        """
        shard_set, bucket, index = self.shard_set, route.bucket, route.index
        assert bucket is not None
        if events.bus.has_listeners(events.DbRouting):
            events.emit(events.DbRouting(route.replica_set.name, f"bucket_{fenced.state}",
                                         f"bucket {bucket}", index))  # fmt: skip
        if fenced.state is FenceState.MOVED:
            self.reloads += 1
            if not shard_set.follows or self.reloads > 3:
                raise BucketMoved(
                    f"bucket {bucket} has moved away from shard {index} "
                    + (
                        "and reloading the map did not find its new shard"
                        if shard_set.follows
                        else "; pass map_store= (or reload=) to the ShardSet to follow moves"
                    ),
                    bucket=bucket,
                    state=FenceState.MOVED.value,
                ) from None
            return 0.0
        now = shard_set.clock.monotonic()
        if self.deadline is None:
            self.deadline = now + shard_set.freeze_timeout
        if now >= self.deadline:
            raise BucketMoved(
                f"bucket {bucket} stayed frozen for a move longer than "
                f"freeze_timeout={shard_set.freeze_timeout}s: is a mover stuck? rerun "
                "`scalekit shards move` to finish it",
                bucket=bucket,
                state=FenceState.FROZEN.value,
            ) from None
        delay, self.delay = self.delay, min(self.delay * 2, 0.2)
        return delay
