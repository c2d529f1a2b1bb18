"""A cache lookup that travels with the rate-limit check: one round trip for both.

When ``install()`` puts the rate limiter and the cache on the same standalone
Redis, the limiter asks the cache, through a hook the stack wires in, for the
lookup it would make for the request (:class:`Prefetch`: a script call that
takes no fill lock) and sends it in the same write as its check, on its held
connection. The reply reaches the cache in the request's scope under
:data:`SCOPE_KEY`; the cache serves a fresh hit from it and otherwise looks up
as it always does (a miss then takes the fill lock with its own call). A
rejected request never reaches the cache, so its lookup is dropped.

Neither :mod:`scalekit.cache` nor :mod:`scalekit.ratelimit` imports the other:
both use this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.types import Scope

__all__ = ["SCOPE_KEY", "Prefetch", "Prefetcher"]

SCOPE_KEY = "scalekit.prefetched"
"""The scope key the answered :class:`Prefetch` is handed on under."""


class Prefetch:
    """One script call (``EVALSHA``) to send along with a rate-limit check.

    Args:
        script: the script's source (for a caller that must reload it).
        sha: its SHA1.
        keys: the script's keys.
        args: its arguments.
    """

    __slots__ = ("answered", "args", "keys", "reply", "script", "sha")

    def __init__(self, script: str, sha: str, keys: list[str], args: list[Any]) -> None:
        self.script = script
        self.sha = sha
        self.keys = keys
        self.args = args
        self.reply: Any = None
        self.answered = False

    def answer(self, reply: Any) -> None:
        """Record the script's reply."""
        self.reply, self.answered = reply, True

    def forget(self) -> None:
        """Drop the reply (the round trip that carried it failed)."""
        self.reply, self.answered = None, False


Prefetcher = Callable[[Scope], "Prefetch | None"]
"""The cache's hook: the lookup to send for a request, or None."""
