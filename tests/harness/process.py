"""One server process, controlled by its own PID (never by name)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from .ports import HOST, free_port, wait_until

LOG_TAIL_LINES = 60

_PR_SET_PDEATHSIG = 1


class ServerExited(RuntimeError):
    """The server process exited before it became ready."""


_prctl: Callable[[int, int], int] | None
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # If pytest itself is killed, the kernel kills the server too, so a hard
    # stop never leaves servers running. Looked up in the parent: the child
    # of a threaded parent must not dlopen. The signal follows the thread
    # that started the process, so it is only used from the main thread.
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines of a log file (or a note that it is missing)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


class HarnessResource:
    """Something a fixture hands to tests: it has logs and can repair itself."""

    def log_files(self) -> list[tuple[str, Path]]:
        """``(label, path)`` of every log worth printing when a test fails."""
        return []

    def heal(self) -> None:
        """Undo what a test did to the servers (restart, thaw, resume)."""


class ServerProcess(HarnessResource):
    """A server process on a loopback port, with its own work dir and log file.

    Subclasses give ``argv()`` and ``probe()``; the port (and any other port
    they need) is chosen by ``allocate_ports()`` and kept across restarts.
    """

    name = "server"
    start_timeout = 30.0
    stop_timeout = 30.0

    def __init__(self, workdir: Path) -> None:
        self.host = HOST
        self.port = 0
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{self.name}.log"
        self.frozen = False
        self._proc: subprocess.Popen[bytes] | None = None

    # -- to override ------------------------------------------------------
    def argv(self) -> Sequence[str]:
        raise NotImplementedError

    def probe(self) -> bool:
        """Return True once the server answers; may raise while it cannot."""
        raise NotImplementedError

    def allocate_ports(self) -> None:
        self.port = free_port()

    # -- state ------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """PID of the running process, or None when it is not running."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_files(self) -> list[tuple[str, Path]]:
        return [(f"{self.name} {self.host}:{self.port}", self.log_path)]

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return tail(self.log_path, lines)

    def heal(self) -> None:
        if self.frozen:
            self.thaw()
        if not self.running:
            self.start()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.host}:{self.port} pid={self.pid}>"

    # -- lifecycle --------------------------------------------------------
    def _check_alive(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            code = None if self._proc is None else self._proc.returncode
            self._reap()
            raise ServerExited(
                f"{self.name} on port {self.port} exited with code {code} before it was "
                f"ready; last lines of {self.log_path}:\n{self.log_tail()}"
            )

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait()
            self._proc = None

    def start(self) -> None:
        """Start the process on its current port and wait until it answers."""
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        self._reap()
        if self.port == 0:
            self.allocate_ports()
        in_main_thread = threading.current_thread() is threading.main_thread()
        with self.log_path.open("ab") as log:
            log.write(f"---- harness: starting {' '.join(self.argv())}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                list(self.argv()),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
                preexec_fn=_die_with_parent if in_main_thread else None,
            )
        self.frozen = False
        try:
            wait_until(
                self.probe,
                timeout=self.start_timeout,
                what=f"{self.name} on port {self.port}",
                alive=self._check_alive,
            )
        except TimeoutError as exc:
            self.kill()
            raise TimeoutError(
                f"{exc}; last lines of {self.log_path}:\n{self.log_tail()}"
            ) from None

    def start_on_free_port(self, attempts: int = 3) -> None:
        """Start on a fresh free port, trying new ports if the server cannot bind."""
        for attempt in range(attempts):
            self.allocate_ports()
            try:
                self.start()
            except ServerExited:
                if attempt == attempts - 1:
                    raise
            else:
                return

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, sig)

    def stop(self) -> None:
        """Shut the server down cleanly (SIGTERM), SIGKILL if it hangs."""
        if self._proc is None:
            return
        self._signal(signal.SIGTERM)
        if self.frozen:
            self._signal(signal.SIGCONT)
            self.frozen = False
        try:
            self._proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
        self._reap()

    def kill(self) -> None:
        """SIGKILL the server (no shutdown work at all) and reap it."""
        if self._proc is None:
            return
        self._signal(signal.SIGKILL)
        self.frozen = False
        self._reap()

    def freeze(self) -> None:
        """SIGSTOP: the process stays, its sockets stay open, nothing answers."""
        if self.running:
            self._signal(signal.SIGSTOP)
            self.frozen = True

    def thaw(self) -> None:
        """SIGCONT after ``freeze()``."""
        self._signal(signal.SIGCONT)
        self.frozen = False

    def close(self) -> None:
        """Stop the server for good (fixture teardown)."""
        self.stop()
