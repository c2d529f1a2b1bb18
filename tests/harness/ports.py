"""Free loopback ports and small polling helpers."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

HOST = "127.0.0.1"

T = TypeVar("T")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The port is released before it is returned, so another process may take
    it first: servers started on it retry on a new port when they fail to
    come up (see ``ServerProcess.start_on_free_port``).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
    alive: Callable[[], None] | None = None,
) -> T:
    """Poll ``probe`` until it returns something truthy; return that value.

    ``probe`` may raise: the error is remembered and reported if the time
    runs out. ``alive`` is called each round and should raise when the thing
    being waited for can no longer happen (a server process exited).

    Raises:
        TimeoutError: ``probe`` did not succeed within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        if alive is not None:
            alive()
        try:
            result = probe()
        except Exception as exc:
            last_error = exc
        else:
            if result:
                return result
            last_error = None
        if time.monotonic() >= deadline:
            detail = f": last error {last_error!r}" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}{detail}")
        time.sleep(interval)
