"""Opening connections to one server: timeouts, one TLS context, back-off while it is down.

Why a connector: pymysql builds a new ``SSLContext`` (loading the system
CA store, ~30 ms of CPU) on every ``connect()`` in its default "preferred"
TLS mode, even when the server offers no TLS; during an outage a pool that
reconnects on every checkout burns the CPU its callers need. Here one
context per pool is made once, and a server that failed a connect is not
tried again before its back-off ends — callers get "server down" at once.
"""

from __future__ import annotations

import contextlib
import enum
import ssl
import threading
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Any

from .._clock import Clock
from ._deadline import Deadline
from ._driver_errors import ConnectFailure

__all__ = [
    "SLACK",
    "TRIAL_DEFAULT",
    "TRIAL_SLACK",
    "TRIAL_STEPS",
    "Connector",
    "ServerBackoff",
    "SslMode",
]

SLACK = 0.1
"""Seconds an operation may overrun its deadline rather than reset socket timeouts."""

TRIAL_DEFAULT = 10.0
"""Seconds a trial connect with no timeout holds its lease (pymysql's default connect_timeout)."""

TRIAL_SLACK = 1.0
"""Seconds a trial's lease outlasts its connect steps."""

TRIAL_STEPS = 4
"""Socket steps of one connect that may each take ``connect_timeout``: the TCP
connect, the greeting, the login and the session statements."""


class SslMode(enum.StrEnum):
    """TLS to the server, named as MySQL's ``--ssl-mode``."""

    DISABLED = "disabled"
    PREFERRED = "preferred"
    """TLS when the server offers it, no certificate check (pymysql's default)."""
    REQUIRED = "required"
    """TLS or no connection; the certificate is checked when ``ssl_ca`` is given."""


_SSL_ARGS = frozenset({"ssl", "ssl_ca", "ssl_cert", "ssl_key", "ssl_disabled", "ssl_verify_cert"})


class ServerBackoff:
    """Connect back-off for one server: one outage is one step, a success ends it.

    A server that refused a TCP connect (nothing listens: an attempt costs
    one round trip) is tried again every ``base`` seconds, so a restarted
    server serves again within ``base`` of coming back. Any other failure —
    no answer (every attempt holds its caller for up to ``connect_timeout``),
    a server that rejects the connect (1045 access denied, 1040 too many
    connections, 1129 host blocked: each attempt adds to the problem) — is
    tried again after ``base`` seconds, doubling per outage step up to
    ``cap``. Failures of attempts that started before the current back-off
    (many threads failing together) do not lengthen it.

    While the server is out, at most one caller at a time tries a connect
    (``attempt``); the others get "server down" at once. That caller holds
    a *lease* (``trial_until``) rather than a lock: a caller that never ends
    its trial (an exception raised by a signal handler at the wrong moment)
    blocks the others only until the lease runs out.
    """

    def __init__(self, clock: Clock, *, base: float = 0.05, cap: float = 1.0) -> None:
        self._clock = clock
        self.base = base
        self.cap = cap
        self._lock = threading.Lock()
        self.failures = 0
        self.until = 0.0
        self.cause = ConnectFailure.REFUSED
        self.last_error = ""
        self.trial_until = 0.0
        """While the clock is before this, a caller is trying a connect (its lease)."""
        self._trials = 0

    def remaining(self) -> float:
        """Seconds before the next connect may be tried (0: now)."""
        return max(self.until - self._clock.monotonic(), 0.0)

    @property
    def unresponsive(self) -> bool:
        """The last failure was a timeout: the server did not answer."""
        return bool(self.failures) and self.cause is ConnectFailure.UNANSWERED

    @property
    def trying(self) -> bool:
        """A caller is trying a connect to a server that is out."""
        return self._clock.monotonic() < self.trial_until

    @contextlib.contextmanager
    def attempt(self, timeout: float | None) -> Iterator[bool]:
        """Whether this caller may connect now: always while the server is in,
        else once its back-off ended and no other caller is trying.

        Args:
            timeout: the seconds the connect may take (None: no limit). The
                trial's lease lasts ``TRIAL_STEPS`` times that (``TRIAL_DEFAULT``
                when None) plus ``TRIAL_SLACK``: each socket step of a connect
                may take the whole timeout.
        """
        if not self.failures:
            yield True
            return
        trial = self._start_trial(timeout)
        if trial is None:
            yield False
            return
        try:
            yield True
        finally:
            self._end_trial(trial)

    def _start_trial(self, timeout: float | None) -> int | None:
        lease = TRIAL_STEPS * (TRIAL_DEFAULT if timeout is None else timeout) + TRIAL_SLACK
        with self._lock:
            now = self._clock.monotonic()
            if now < self.until or now < self.trial_until:
                return None
            self._trials += 1
            self.trial_until = now + lease
            return self._trials

    def _end_trial(self, trial: int) -> None:
        with self._lock:
            if trial == self._trials:  # not a later trial taken once this lease ran out
                self.trial_until = 0.0

    def failed(self, error: str, *, cause: ConnectFailure) -> None:
        now = self._clock.monotonic()
        with self._lock:
            self.last_error = error
            self.cause = cause
            if now < self.until:
                return  # the same outage, already counted
            self.failures += 1
            if cause is ConnectFailure.REFUSED:
                step = self.base
            else:  # the exponent is bounded: a float overflows past 2 ** 1023
                step = self.base * 2 ** min(self.failures - 1, 64)
            self.until = now + min(step, self.cap)

    def succeeded(self) -> None:
        if self.failures:
            with self._lock:
                self.failures = 0
                self.until = 0.0
                self.trial_until = 0.0

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self.trial_until = 0.0  # the parent's trial, not ours


class Connector:
    """Connect arguments for one pool's server, and the connect call SteadyDB makes.

    Args:
        creator: the DB-API module or connect callable.
        connect_args: keyword arguments for every connect.
        pymysql_driver: the creator is pymysql: TLS context reuse and
            per-operation socket timeouts apply.
        ssl_mode: TLS (pymysql only, and only when ``connect_args`` sets no
            ``ssl*`` argument itself).
        ssl_ca: a CA file to verify the server certificate against.
    """

    def __init__(
        self,
        creator: Any,
        connect_args: Mapping[str, Any],
        *,
        pymysql_driver: bool,
        ssl_mode: SslMode,
        ssl_ca: str | None,
    ) -> None:
        self._creator = creator
        self.connect_args = dict(connect_args)
        self._pymysql = pymysql_driver
        self._manage_tls = pymysql_driver and not (_SSL_ARGS & set(connect_args))
        self.ssl_mode = ssl_mode
        self.ssl_ca = ssl_ca
        self._context: ssl.SSLContext | None = None
        self._context_lock = threading.Lock()
        self.contexts_made = 0
        """TLS contexts built so far (one per pool at most)."""
        # SteadyDB reads ``.dbapi`` to find the driver's exception classes.
        self.dbapi: ModuleType | None = creator if isinstance(creator, ModuleType) else None

    def _tls_context(self) -> ssl.SSLContext:
        with self._context_lock:
            if self._context is None:
                context = ssl.create_default_context(cafile=self.ssl_ca)
                if self.ssl_ca is None:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                self._context = context
                self.contexts_made += 1
            return self._context

    def connect(self, **kwargs: Any) -> Any:
        """Open one connection (SteadyDB calls this with the arguments from ``arguments``)."""
        connect = getattr(self._creator, "connect", self._creator)
        if not self._manage_tls or "ssl_disabled" in kwargs:
            return connect(**kwargs)
        if self.ssl_mode is SslMode.REQUIRED:
            return connect(ssl=self._tls_context(), **kwargs)
        connection = connect(ssl_disabled=True, defer_connect=True, **kwargs)
        if hasattr(connection, "_ssl_required"):  # pymysql >= 1.1.2 knows "preferred"
            connection.ssl = True
            connection._ssl_required = False
            connection.ctx = self._tls_context()
        connection.connect()
        return connection

    def arguments(self, connect_timeout: float | None, deadline: Deadline) -> dict[str, Any]:
        """The connect arguments for one attempt, its timeout cut to the deadline."""
        arguments = dict(self.connect_args)
        if self._manage_tls and self.ssl_mode is SslMode.DISABLED:
            arguments["ssl_disabled"] = True
        limit = deadline.cap(connect_timeout)
        if limit is not None:
            arguments["connect_timeout"] = max(limit, 0.001)
        return arguments

    @staticmethod
    def limit(raw: Any, seconds: float | None) -> bool:
        """Cut a pymysql connection's socket timeouts to ``seconds``; True if changed.

        Timeouts within ``SLACK`` of ``seconds`` are left alone: changing them
        costs a ``settimeout`` per statement, and the hot path (a fresh
        deadline equal to ``read_timeout``) would otherwise pay it every time.
        """
        if seconds is None or not hasattr(raw, "_read_timeout"):
            return False
        seconds = max(seconds, 0.001)
        current_read, current_write = raw._read_timeout, raw._write_timeout
        if (current_read is not None and current_read <= seconds + SLACK) and (
            current_write is not None and current_write <= seconds + SLACK
        ):
            return False
        read = seconds if current_read is None else min(current_read, seconds)
        write = seconds if current_write is None else min(current_write, seconds)
        raw._read_timeout = read
        raw._write_timeout = write
        return True

    @staticmethod
    def restore(raw: Any, read: float | None, write: float | None) -> None:
        """Put back the configured socket timeouts after ``limit``."""
        raw._read_timeout = read
        raw._write_timeout = write
