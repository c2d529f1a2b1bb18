"""The in-process rate-limit backend (``memory://``): counters under a lock, the injected clock."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

from scalekit._clock import Clock, get_clock
from scalekit.ratelimit.protocol import LimitCheck, LimitResult, Mode, Strategy, Verdict

__all__ = ["MemoryRateLimitBackend"]


class MemoryRateLimitBackend:
    """Counters in this process; for one-process apps and tests.

    Args:
        clock: read for the time (``clock.time()``); defaults to the process clock.
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._fixed: dict[str, tuple[int, float]] = {}  # key -> (used, expires_at)
        self._sliding: dict[str, tuple[int, int, int]] = {}  # key -> (index, current, previous)
        self._moving: dict[str, list[float]] = {}  # key -> timestamps, newest first

    async def check(self, checks: Sequence[LimitCheck], at: float | None = None) -> Verdict:
        """Run ``checks`` atomically against the in-process counters."""
        with self._lock:
            now = at if at is not None else (self._clock or get_clock()).time()
            results = [self._evaluate(check, now) for check in checks]
            allowed = all(result.ok for result in results)
            if allowed:
                for check in checks:
                    self._apply(check, now)
            return Verdict(allowed, now, tuple(results))

    async def aclose(self) -> None:
        """Nothing to release."""

    def _evaluate(self, check: LimitCheck, now: float) -> LimitResult:
        limit, window, cost = check.limit, check.window, check.cost
        checking = check.mode is Mode.HIT or check.mode is Mode.PEEK
        consuming = check.cost if check.mode is Mode.HIT or check.mode is Mode.ADD else 0
        if check.strategy is Strategy.FIXED_WINDOW:
            used, expires = self._fixed.get(check.key, (0, 0.0))
            if expires <= now:
                used, expires = 0, now + window
            if checking and used + cost > limit:
                # failures counted after admission ("add") can pass the limit
                return LimitResult(False, max(0, limit - used), expires - now)
            return LimitResult(True, max(0, limit - used - consuming), expires - now)
        if check.strategy is Strategy.SLIDING_WINDOW_COUNTER:
            _, current, previous = self._sliding_state(check.key, window, now)
            # the same expression as limits' MemoryStorage, so both agree to the bit
            left = (1 - (((now - window) / window) % 1)) * window
            weighted = math.floor(previous * left / window + current)
            if checking and weighted + cost > limit:
                into = window - left
                if current + cost > limit:
                    wait = left + max(0.0, window - (limit - cost + 1) * window / current)
                else:
                    wait = max(window - (limit - current - cost + 1) * window / previous - into, 0)
                return LimitResult(False, max(0, limit - weighted), wait + 0.001)
            return LimitResult(True, max(0, limit - weighted - consuming), left)
        entries = self._moving.get(check.key, [])
        if checking and len(entries) > limit - cost and entries[limit - cost] >= now - window:
            return LimitResult(False, 0, entries[limit - cost] + window - now + 0.001)
        inside = [stamp for stamp in entries[:limit] if stamp >= now - window]
        oldest = inside[-1] if inside else now
        return LimitResult(True, max(0, limit - len(inside) - consuming), oldest + window - now)

    def _sliding_state(self, key: str, window: int, now: float) -> tuple[int, int, int]:
        index = int(now // window)
        stored_index, current, previous = self._sliding.get(key, (index, 0, 0))
        if stored_index == index:
            return index, current, previous
        if stored_index == index - 1:
            return index, 0, current
        return index, 0, 0

    def _apply(self, check: LimitCheck, now: float) -> None:
        if check.mode is Mode.PEEK:
            return
        cost = check.cost
        refund = check.mode is Mode.REFUND
        # A refund gives a hit made at ``now`` back to the window that hit went to;
        # once that window is over (a long request), there is nothing to give back,
        # and the window counting now must not lose a hit (or, sliding, be reset).
        if check.strategy is Strategy.FIXED_WINDOW:
            used, expires = self._fixed.get(check.key, (0, 0.0))
            if refund:
                if expires - check.window <= now < expires:
                    self._fixed[check.key] = (max(0, used - cost), expires)
                return
            if expires <= now:
                used, expires = 0, now + check.window
            self._fixed[check.key] = (used + cost, expires)
        elif check.strategy is Strategy.SLIDING_WINDOW_COUNTER:
            if refund:
                stored = self._sliding.get(check.key)
                if stored is not None and stored[0] == int(now // check.window):
                    index, current, previous = stored
                    self._sliding[check.key] = (index, max(0, current - cost), previous)
                return
            index, current, previous = self._sliding_state(check.key, check.window, now)
            self._sliding[check.key] = (index, current + cost, previous)
        else:
            entries = self._moving.setdefault(check.key, [])
            if refund:
                for _ in range(cost):
                    if now in entries:
                        entries.remove(now)
            else:
                entries[:0] = [now] * cost
                del entries[check.limit :]
