"""After ``fork()``: objects holding sockets and locks start fresh in the child.

A pool warmed in a parent (gunicorn ``--preload``, ``multiprocessing``) must
not share its connections with the child, and a lock another parent thread
held at fork time would never be released in the child.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable

__all__ = ["register"]

_callbacks: list[weakref.WeakMethod[Callable[[], None]]] = []
_lock = threading.Lock()


def register(method: Callable[[], None]) -> None:
    """Call the bound ``method`` in every child forked from now on (held weakly)."""
    with _lock:
        _callbacks[:] = [ref for ref in _callbacks if ref() is not None]
        _callbacks.append(weakref.WeakMethod(method))


def _reset_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # a parent thread may have held it at fork time
    for ref in list(_callbacks):
        method = ref()
        if method is not None:
            method()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)
