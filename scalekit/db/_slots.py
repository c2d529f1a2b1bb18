"""Slot accounting for a pool: who holds a connection, who waits, in what order.

Nothing here talks to a server. :class:`Slots` counts connections (in use,
idle, being opened) against ``max_connections`` and hands a released
connection — or the right to open one — to the longest waiter first (FIFO):
a caller that arrives while others wait queues behind them, so under
contention every caller gets its turn.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Counts", "Exhausted", "Slot", "Slots"]


class Slot:
    """One open connection and its bookkeeping."""

    __slots__ = (
        "created",
        "epoch",
        "error_generation",
        "last_used",
        "session_generation",
        "steady",
    )

    def __init__(
        self, steady: Any, now: float, error_generation: int, session_generation: int, epoch: int
    ) -> None:
        self.steady = steady
        self.epoch = epoch
        self.created = now
        self.last_used = now
        self.error_generation = error_generation
        self.session_generation = session_generation

    @property
    def raw(self) -> Any:
        """The driver's own connection."""
        return self.steady._con

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.steady.close()

    def abandon(self) -> None:
        """Drop the connection without a word to the server (it belongs to another process)."""
        force_close = getattr(self.raw, "_force_close", None)  # pymysql: no COM_QUIT
        if force_close is not None:
            with contextlib.suppress(Exception):
                force_close()
            self.steady._closed = True  # SteadyDB's finalizer must not send a QUIT either
        else:
            _ABANDONED.append(self)  # never finalized: the parent's session stays alive


_ABANDONED: list[Slot] = []


class Exhausted(Exception):
    """No slot became free in time (the pool turns this into ``PoolTimeout``)."""

    def __init__(self, counts: Counts) -> None:
        super().__init__(counts)
        self.counts = counts


@dataclasses.dataclass(frozen=True, slots=True)
class Counts:
    """A consistent snapshot of the counters."""

    in_use: int
    idle: int
    waiting: int
    open: int
    connecting: int
    opened: int
    errors: int


class _Waiter:
    __slots__ = ("condition", "granted", "slot")

    def __init__(self, lock: threading.Lock) -> None:
        self.condition = threading.Condition(lock)
        self.granted = False
        self.slot: Slot | None = None


class Slots:
    """The counters, the idle connections and the queue of waiters of one pool.

    ``reserve`` returns an idle slot, or None meaning "you may open a new
    connection" (counted as ``connecting`` until ``opened`` or
    ``release(None, discard=True)``). Every reservation ends in exactly one
    ``release``.
    """

    def __init__(self, max_connections: int, max_idle: int) -> None:
        self.max_connections = max_connections
        self.max_idle = max_idle
        self._lock = threading.Lock()
        self._idle: collections.deque[Slot] = collections.deque()
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self.in_use = 0
        self.open = 0
        self.connecting = 0
        self.opened = 0
        self.errors = 0
        self.error_generation = 0
        self.session_generation = 0
        self.closed = False

    # -- checkout ------------------------------------------------------------
    def reserve(
        self, wait: float, expired: Callable[[Slot, int], bool], dead: list[Slot]
    ) -> tuple[Slot | None, int]:
        """A slot (or None: open one) and the current error generation.

        Idle slots that ``expired(slot, idle_count)`` are appended to ``dead``
        for the caller to close outside the lock.

        Raises:
            Exhausted: nothing became free within ``wait`` seconds.
            RuntimeError: the pool is closed.
        """
        with self._lock:
            self._check_open()
            if not self._waiters:
                granted, slot = self._take(expired, dead)
                if granted:
                    return slot, self.error_generation
            waiter = _Waiter(self._lock)
            self._waiters.append(waiter)
            deadline = time.monotonic() + wait
            try:
                while not waiter.granted:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self.closed:
                        break
                    waiter.condition.wait(remaining)
            finally:
                if not waiter.granted:
                    self._waiters.remove(waiter)
            if not waiter.granted:
                self._check_open()
                raise Exhausted(self._counts())
            return waiter.slot, self.error_generation

    def _take(
        self, expired: Callable[[Slot, int], bool], dead: list[Slot]
    ) -> tuple[bool, Slot | None]:
        while self._idle:
            candidate = self._idle.pop()  # the most recently used: the others can expire
            if expired(candidate, len(self._idle) + 1):
                dead.append(candidate)
                self.open -= 1
                continue
            self.in_use += 1
            return True, candidate
        if self.open < self.max_connections:
            self.open += 1
            self.in_use += 1
            return True, None
        return False, None

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("closed")

    @contextlib.contextmanager
    def connecting_one(self) -> Iterator[None]:
        """Count a connect in progress (for stats and the ``PoolTimeout`` message)."""
        with self._lock:
            self.connecting += 1
        try:
            yield
        finally:
            with self._lock:
                self.connecting -= 1

    def opened_one(self) -> None:
        with self._lock:
            self.opened += 1

    # -- return ----------------------------------------------------------------
    def release(
        self, slot: Slot | None, *, discard: bool, now: float, failed: bool = False
    ) -> bool:
        """Give back a reservation; True when the caller must close ``slot``.

        The oldest waiter gets the slot itself, or — when it is discarded —
        the right to open a new connection. ``failed``: the checkout itself
        failed (counted in ``errors``).
        """
        with self._lock:
            self.in_use -= 1
            if failed:
                self.errors += 1
            keep = (
                slot is not None
                and not discard
                and not self.closed
                and slot.session_generation == self.session_generation
            )
            if keep and slot is not None:
                slot.last_used = now
                if self._waiters:
                    self._grant(slot)
                    return False
                if len(self._idle) < self.max_idle:
                    self._idle.append(slot)
                    return False
            self.open -= 1
            if self._waiters and not self.closed and self.open < self.max_connections:
                self.open += 1
                self._grant(None)
            return slot is not None

    def _grant(self, slot: Slot | None) -> None:
        waiter = self._waiters.popleft()
        waiter.granted = True
        waiter.slot = slot
        self.in_use += 1
        waiter.condition.notify()

    # -- errors, sessions, lifecycle ---------------------------------------------
    def connection_failed(self) -> None:
        with self._lock:
            self.errors += 1
            self.error_generation += 1

    def new_session_generation(self) -> None:
        with self._lock:
            self.session_generation += 1

    def close(self) -> list[Slot]:
        """Refuse new checkouts, wake every waiter; returns the idle slots to close."""
        with self._lock:
            self.closed = True
            idle = list(self._idle)
            self._idle.clear()
            self.open -= len(idle)
            for waiter in self._waiters:
                waiter.condition.notify()
            return idle

    def forget(self) -> list[Slot]:
        """After ``fork()``: start empty; returns every idle slot (to abandon, not close)."""
        idle = list(self._idle)
        self._lock = threading.Lock()
        self._idle = collections.deque()
        self._waiters = collections.deque()
        self.in_use = self.open = self.connecting = 0
        return idle

    def counts(self) -> Counts:
        with self._lock:
            return self._counts()

    def _counts(self) -> Counts:
        return Counts(
            in_use=self.in_use,
            idle=len(self._idle),
            waiting=len(self._waiters),
            open=self.open,
            connecting=self.connecting,
            opened=self.opened,
            errors=self.errors,
        )
