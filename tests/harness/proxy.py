"""A TCP proxy that counts round trips and can drop a connection on cue.

Round trips: each accepted connection remembers who sent last. Client bytes
that arrive while the last sender was the server (or that are the first bytes
the client sends) start a new round trip; more client bytes before the server
answers belong to the same one. So a pipeline or a Lua call counts 1, ten
separate commands count 10, however the kernel splits the bytes into reads.

Reading ``round_trips`` is deterministic once a request has completed: the
proxy counts client bytes before it forwards them, so by the time the reply
reached the client the request was counted. Connection setup (handshake,
redis-py's ``CLIENT SETINFO``) counts too: open the connection with one
warm-up command and ``reset()`` before the part you measure. One burst can
count twice only if the client stops sending mid-burst long enough for the
server to answer the first part (a pipeline larger than the socket buffers).

It works with sync and async clients: it is plain sockets, two threads per
connection, independent of any event loop.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

from .ports import HOST

Predicate = Callable[[bytes], bool]


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _Connection:
    def __init__(self, proxy: CountingProxy, client: socket.socket, server: socket.socket):
        self.proxy = proxy
        self.client = client
        self.server = server
        self.last_sender: str | None = None
        self.burst = bytearray()
        self.drop_pending = False
        self.thread = threading.Thread(target=self.run, name="counting-proxy-conn", daemon=True)

    def run(self) -> None:
        upstream = threading.Thread(
            target=self.pump_server_to_client, name="counting-proxy-reply", daemon=True
        )
        upstream.start()
        self.pump_client_to_server()
        upstream.join()
        self.client.close()
        self.server.close()
        self.proxy._forget(self)

    def shutdown(self) -> None:
        _shutdown(self.client)
        _shutdown(self.server)

    def pump_client_to_server(self) -> None:
        proxy = self.proxy
        try:
            while data := self.client.recv(65536):
                with proxy._lock:
                    if self.last_sender != "client":
                        proxy._round_trips += 1
                        self.burst.clear()
                    self.last_sender = "client"
                    self.burst += data
                    predicate = proxy.drop_after_response_to
                    if predicate is not None and predicate(bytes(self.burst)):
                        self.drop_pending = True
                self.server.sendall(data)
        except OSError:
            pass
        finally:
            self.shutdown()

    def pump_server_to_client(self) -> None:
        proxy = self.proxy
        try:
            while data := self.server.recv(65536):
                with proxy._lock:
                    self.last_sender = "server"
                    drop = self.drop_pending
                    if drop:
                        proxy.drops += 1
                if drop:
                    # The server has executed and answered: the client never
                    # hears about it.
                    break
                self.client.sendall(data)
        except OSError:
            pass
        finally:
            self.shutdown()


class CountingProxy:
    """Forward a free 127.0.0.1 port to ``target_host:target_port``.

    Args:
        target_host: where to forward to.
        target_port: where to forward to.
        drop_after_response_to: optional predicate on the client bytes of a
            round trip (a request). When it returns True the request is
            forwarded, the server's first reply bytes are read, and then both
            sockets are closed without passing the reply on: the statement ran
            but the client sees a lost connection. May be set later too.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        drop_after_response_to: Predicate | None = None,
    ) -> None:
        self.target = (target_host, target_port)
        self.host = HOST
        self.drop_after_response_to = drop_after_response_to
        self.connections = 0
        self.drops = 0
        self._round_trips = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._open: set[_Connection] = set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, 0))
        self._listener.listen(64)
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._accepter = threading.Thread(target=self._accept, name="counting-proxy", daemon=True)
        self._accepter.start()

    @property
    def round_trips(self) -> int:
        with self._lock:
            return self._round_trips

    def reset(self) -> None:
        """Set ``round_trips`` back to 0 (open connections stay open)."""
        with self._lock:
            self._round_trips = 0

    def url_for(self, url: str) -> str:
        """``url`` with its host:port replaced by the proxy's (user, db, query kept)."""
        parts = urlsplit(url)
        if "," in parts.netloc:
            raise ValueError(f"cannot proxy a multi-host URL: {url}")
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@" if userinfo else ""
        return urlunsplit(parts._replace(netloc=f"{netloc}{self.host}:{self.port}"))

    def close_connections(self) -> None:
        """Cut every open connection (the listener stays up)."""
        with self._lock:
            connections = list(self._open)
        for connection in connections:
            connection.shutdown()
        for connection in connections:
            connection.thread.join(timeout=10)

    def close(self) -> None:
        """Stop listening and cut every open connection."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._accepter.join()
        self.close_connections()

    def __enter__(self) -> CountingProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<CountingProxy {self.host}:{self.port} -> {self.target[0]}:{self.target[1]}>"

    def _forget(self, connection: _Connection) -> None:
        with self._lock:
            self._open.discard(connection)

    def _accept(self) -> None:
        try:
            while not self._closed.is_set():
                try:
                    client, _ = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                try:
                    server = socket.create_connection(self.target, timeout=5)
                except OSError:
                    client.close()
                    continue
                server.settimeout(None)
                client.settimeout(None)
                for sock in (client, server):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                connection = _Connection(self, client, server)
                with self._lock:
                    self.connections += 1
                    self._open.add(connection)
                connection.thread.start()
        finally:
            self._listener.close()
