"""Real redis-server, Redis Cluster and Redis Sentinel setups."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from .ports import free_port, wait_until
from .process import HarnessResource, ServerProcess, tail
from .tls import Certificates

SERVICE_NAME = "mymaster"
HEAL_TIMEOUT = 60.0
"""Seconds the harness waits for a Sentinel setup to converge (see ``wait_healthy``)."""
CLUSTER_NODE_TIMEOUT_MS = 1000


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


def _probe_client(host: str, port: int, **extra: Any) -> redis.Redis:
    # No retries: redis-py's default backs off for seconds, the harness polls.
    return redis.Redis(
        host=host,
        port=port,
        socket_timeout=2,
        socket_connect_timeout=2,
        retry=_no_retry(),
        **extra,
    )


class RedisServer(ServerProcess):
    """A real ``redis-server`` without persistence.

    ``replicaof`` (host, port) makes it start as a replica; ``cluster=True``
    enables cluster mode with its bus on a second free port.
    """

    name = "redis-server"

    def __init__(
        self,
        workdir: Path,
        *,
        binary: str = "redis-server",
        replicaof: tuple[str, int] | None = None,
        cluster: bool = False,
    ) -> None:
        super().__init__(workdir)
        self.binary = binary
        self.replicaof = replicaof
        self.cluster = cluster
        self.cluster_port = 0
        self._clients: list[redis.Redis] = []

    def allocate_ports(self) -> None:
        self.port = free_port()
        if self.cluster:
            self.cluster_port = free_port()

    def argv(self) -> Sequence[str]:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--daemonize", "no",
            "--logfile", "",
            # A replica's first sync waits 5 s for more replicas by default.
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        if self.replicaof is not None:
            args += ["--replicaof", self.replicaof[0], str(self.replicaof[1])]
        if self.cluster:
            args += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
                "--cluster-port", str(self.cluster_port),
            ]  # fmt: skip
        return args

    def connection_options(self) -> dict[str, Any]:
        """What a redis-py client needs besides host and port (TLS servers add theirs)."""
        return {}

    def probe(self) -> bool:
        with _probe_client(self.host, self.port, **self.connection_options()) as client:
            return bool(client.ping())

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A sync ``redis.Redis`` to this server; closed at session end if you forget.

        Without ``retry=`` it does not retry (redis-py's default backs off for
        seconds, which only slows a test that stops the server down).
        """
        kwargs.setdefault("retry", _no_retry())
        options = {**self.connection_options(), **kwargs}
        client = redis.Redis(host=self.host, port=self.port, **options)
        self._clients.append(client)
        return client

    def flushall(self) -> None:
        with _probe_client(self.host, self.port, **self.connection_options()) as client:
            client.flushall()

    def info(self, section: str | None = None) -> dict[str, Any]:
        with _probe_client(self.host, self.port, **self.connection_options()) as client:
            info: dict[str, Any] = client.info(section) if section else client.info()
            return info

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        super().close()


class TLSRedisServer(RedisServer):
    """A real ``redis-server`` that speaks only TLS, with a CA the harness made.

    Clients must present a certificate signed by the same CA
    (``--tls-auth-clients yes``). ``url`` is a ``rediss://`` URL carrying
    ``ssl_ca_certs``, ``ssl_certfile`` and ``ssl_keyfile``; ``certificates``
    holds the PEM paths.
    """

    name = "redis-server-tls"

    def __init__(self, workdir: Path, certificates: Certificates, *, binary: str) -> None:
        super().__init__(workdir, binary=binary)
        self.certificates = certificates

    def argv(self) -> Sequence[str]:
        args = list(super().argv())
        at = args.index("--port")
        args[at : at + 2] = ["--port", "0", "--tls-port", str(self.port)]
        certs = self.certificates
        return [
            *args,
            "--tls-cert-file", str(certs.server_cert),
            "--tls-key-file", str(certs.server_key),
            "--tls-ca-cert-file", str(certs.ca),
            "--tls-auth-clients", "yes",
        ]  # fmt: skip

    def connection_options(self) -> dict[str, Any]:
        certs = self.certificates
        return {
            "ssl": True,
            "ssl_ca_certs": str(certs.ca),
            "ssl_certfile": str(certs.client_cert),
            "ssl_keyfile": str(certs.client_key),
        }

    @property
    def url(self) -> str:
        certs = self.certificates
        query = urlencode(
            {
                "ssl_ca_certs": certs.ca,
                "ssl_certfile": certs.client_cert,
                "ssl_keyfile": certs.client_key,
            }
        )
        return f"rediss://{self.host}:{self.port}/0?{query}"


class RedisCluster(HarnessResource):
    """Three real redis-server masters forming a Redis Cluster (no replicas).

    ``node.stop()`` / ``node.start()`` on a member waits, on start, until every
    node reports ``cluster_state:ok`` again.
    """

    def __init__(self, workdir: Path, *, binary: str = "redis-server", cli: str = "redis-cli"):
        self.workdir = workdir
        self.cli = cli
        self.nodes = [_ClusterNode(self, workdir / f"node{i}", binary=binary) for i in range(3)]
        self.log_path = workdir / "cluster-create.log"
        self._formed = False
        self._clients: list[redis.cluster.RedisCluster] = []

    def start(self) -> None:
        for node in self.nodes:
            node.start_on_free_port()
        argv = [self.cli, "--cluster", "create"]
        argv += [f"{node.host}:{node.port}" for node in self.nodes]
        argv += ["--cluster-replicas", "0", "--cluster-yes"]
        with self.log_path.open("ab") as log:
            result = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                timeout=60, check=False,
            )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{tail(self.log_path)}")
        self._formed = True
        self.wait_ready()

    def _all_ok(self) -> bool:
        for node in self.nodes:
            with _probe_client(node.host, node.port) as client:
                if client.cluster("info")["cluster_state"] != "ok":
                    return False
        return True

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until every node reports ``cluster_state:ok``."""
        wait_until(self._all_ok, timeout=timeout, what="cluster_state:ok on all nodes")

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{n.host}:{n.port}" for n in self.nodes)

    def client(self, **kwargs: Any) -> redis.cluster.RedisCluster:
        """A sync ``redis.cluster.RedisCluster``; closed at session end if you forget."""
        nodes = [redis.cluster.ClusterNode(n.host, n.port) for n in self.nodes]  # type: ignore[no-untyped-call]
        client = redis.cluster.RedisCluster(startup_nodes=nodes, **kwargs)
        self._clients.append(client)
        return client

    def node_for_key(self, key: str | bytes) -> RedisServer:
        """The master node that owns ``key``'s hash slot (CLUSTER KEYSLOT + SLOTS)."""
        node = next(n for n in self.nodes if n.running)
        with _probe_client(node.host, node.port) as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            ranges = client.execute_command("CLUSTER", "SLOTS")
        for entry in ranges:
            start, end, master = int(entry[0]), int(entry[1]), entry[2]
            if start <= slot <= end:
                port = int(master[1])
                return next(n for n in self.nodes if n.port == port)
        raise LookupError(f"no node owns slot {slot}")

    def flushall(self) -> None:
        for node in self.nodes:
            node.flushall()

    def log_files(self) -> list[tuple[str, Path]]:
        files = [("redis-cli --cluster create", self.log_path)]
        for node in self.nodes:
            files += node.log_files()
        return files

    def heal(self) -> None:
        for node in self.nodes:
            if node.frozen:
                node.thaw()
            if not node.running:
                # All nodes first: the cluster is ok only once all are back.
                node.start(wait_for_cluster=False)
        self.wait_ready()

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        for node in self.nodes:
            node.close()


class _ClusterNode(RedisServer):
    def __init__(self, cluster: RedisCluster, workdir: Path, *, binary: str) -> None:
        super().__init__(workdir, binary=binary, cluster=True)
        self._cluster = cluster

    def start(self, *, wait_for_cluster: bool = True) -> None:
        super().start()
        if wait_for_cluster and self._cluster._formed:
            self._cluster.wait_ready()


class SentinelProcess(ServerProcess):
    """One real ``redis-sentinel`` watching ``mymaster``."""

    name = "redis-sentinel"

    def __init__(self, workdir: Path, master: tuple[str, int], *, binary: str) -> None:
        super().__init__(workdir)
        self.binary = binary
        self.master = master
        self.config_path = workdir / "sentinel.conf"

    def argv(self) -> Sequence[str]:
        if not self.config_path.exists():
            # Written once: sentinel rewrites it with what it learns, and a
            # restart must keep that.
            self.config_path.write_text(
                f"port {self.port}\n"
                f"bind {self.host}\n"
                f"dir {self.workdir}\n"
                'logfile ""\n'
                "daemonize no\n"
                f"sentinel monitor {SERVICE_NAME} {self.master[0]} {self.master[1]} 2\n"
                f"sentinel down-after-milliseconds {SERVICE_NAME} 1000\n"
                f"sentinel failover-timeout {SERVICE_NAME} 3000\n"
                f"sentinel parallel-syncs {SERVICE_NAME} 1\n"
            )
        return [self.binary, str(self.config_path)]

    def probe(self) -> bool:
        with _probe_client(self.host, self.port) as client:
            return bool(client.ping())

    def client(self) -> redis.Redis:
        """A short-lived client to this sentinel; use it in a ``with`` block."""
        return _probe_client(self.host, self.port)

    def master_address(self) -> tuple[str, int] | None:
        with self.client() as client:
            reply = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE_NAME)
        if not reply:
            return None
        host, port = reply
        return (host.decode() if isinstance(host, bytes) else host, int(port))


class RedisSentinel(HarnessResource):
    """A Redis master + 1 replica watched by 3 ``redis-sentinel`` (quorum 2).

    ``master`` / ``replica`` always name the current roles: after
    ``wait_for_failover()`` they are swapped. ``heal()`` (run by the harness
    after every test that used the session fixture) restarts a killed node
    as a replica of the current master and waits until all sentinels see a
    healthy master + replica again.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        binary: str = "redis-server",
        sentinel_binary: str = "redis-sentinel",
    ) -> None:
        self.workdir = workdir
        self.service_name = SERVICE_NAME
        self.master = RedisServer(workdir / "redis-a", binary=binary)
        self.replica = RedisServer(workdir / "redis-b", binary=binary)
        self._sentinel_binary = sentinel_binary
        self.sentinels: list[SentinelProcess] = []
        self._master_address: tuple[str, int] = ("", 0)

    def start(self) -> None:
        self.master.start_on_free_port()
        self.replica.replicaof = (self.master.host, self.master.port)
        self.replica.start_on_free_port()
        wait_until(
            lambda: self.replica.info("replication")["master_link_status"] == "up",
            timeout=30,
            what="replica link up",
        )
        self._master_address = (self.master.host, self.master.port)
        self.sentinels = [
            SentinelProcess(
                self.workdir / f"sentinel{i}", self._master_address, binary=self._sentinel_binary
            )
            for i in range(3)
        ]
        for sentinel in self.sentinels:
            sentinel.start_on_free_port()
        self.wait_healthy()

    @property
    def url(self) -> str:
        hosts = ",".join(f"{s.host}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service_name}"

    @property
    def servers(self) -> list[RedisServer]:
        return [self.master, self.replica]

    def master_address(self) -> tuple[str, int] | None:
        """The master address the first reachable sentinel reports."""
        for sentinel in self.sentinels:
            if sentinel.running and not sentinel.frozen:
                try:
                    return sentinel.master_address()
                except redis.RedisError:
                    continue
        return None

    def problems(self) -> list[str]:
        """What keeps the setup from being healthy, one line per problem (empty: healthy)."""
        expected = (self.master.host, self.master.port)
        replica = (self.replica.host, self.replica.port)
        found: list[str] = []
        for index, sentinel in enumerate(self.sentinels):
            name = f"sentinel{index} :{sentinel.port}"
            try:
                with sentinel.client() as client:
                    state = client.sentinel_master(self.service_name)
                    replicas = client.sentinel_slaves(self.service_name)
            except redis.RedisError as exc:
                found.append(f"{name}: {exc!r}")
                continue
            if (state["ip"], int(state["port"])) != expected:
                found.append(f"{name}: master is {state['ip']}:{state['port']}, not {expected}")
            flags = set(state["flags"].split(","))
            bad = flags & {"s_down", "o_down", "failover_in_progress", "disconnected"}
            if bad:
                found.append(f"{name}: master flags {sorted(bad)}")
            if int(state["num-other-sentinels"]) != len(self.sentinels) - 1:
                found.append(f"{name}: knows {state['num-other-sentinels']} other sentinels")
            seen = [r for r in replicas if (r["ip"], int(r["port"])) == replica]
            if not seen:
                found.append(f"{name}: does not list replica {replica}")
            for entry in seen:
                if entry["is_sdown"] or entry["is_disconnected"]:
                    found.append(f"{name}: replica flags {entry['flags']}")
                if entry["master-link-status"] != "ok":
                    found.append(
                        f"{name}: replica master-link-status {entry['master-link-status']}"
                    )
        try:
            link = self.replica.info("replication").get("master_link_status")
        except redis.RedisError as exc:
            found.append(f"replica :{self.replica.port}: {exc!r}")
        else:
            if link != "up":
                found.append(f"replica :{self.replica.port}: master_link_status {link}")
        return found

    def _healthy(self) -> bool:
        return not self.problems()

    def wait_healthy(self, timeout: float = HEAL_TIMEOUT) -> None:
        """Wait until every sentinel sees the master, the replica and the other sentinels.

        A sentinel that was starved of CPU for 2 s enters TILT mode and updates
        nothing for 30 s, and it re-reads a replica's INFO only every 10 s:
        on a busy machine convergence takes longer than 30 s, so the default
        wait is longer. On a timeout the message lists what was still wrong.
        """
        last: list[str] = []

        def healthy() -> bool:
            last[:] = self.problems()
            return not last

        try:
            wait_until(
                healthy, timeout=timeout, interval=0.1, what="sentinels to see master + replica"
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; still: {'; '.join(last) or '?'}") from None

    def kill_master(self) -> RedisServer:
        """SIGKILL the current master and return it (see ``wait_for_failover``)."""
        killed = self.master
        killed.kill()
        return killed

    def wait_for_failover(self, timeout: float = HEAL_TIMEOUT) -> tuple[str, int]:
        """Wait until all sentinels name a new master that reports ``role:master``.

        Then swap ``master`` / ``replica`` and return the new master address.
        """
        old = self._master_address

        def promoted() -> tuple[str, int] | None:
            addresses = {s.master_address() for s in self.sentinels}
            if len(addresses) != 1:
                return None
            (address,) = addresses
            if address is None or address == old:
                return None
            server = next(s for s in self.servers if (s.host, s.port) == address)
            if server.info("replication")["role"] != "master":
                return None
            return address

        address = wait_until(promoted, timeout=timeout, what=f"failover away from {old}")
        new_master = next(s for s in self.servers if (s.host, s.port) == address)
        old_master = next(s for s in self.servers if s is not new_master)
        new_master.replicaof = None
        old_master.replicaof = address
        self.master, self.replica = new_master, old_master
        self._master_address = address
        return address

    def log_files(self) -> list[tuple[str, Path]]:
        files: list[tuple[str, Path]] = []
        for process in [*self.servers, *self.sentinels]:
            files += process.log_files()
        return files

    def heal(self) -> None:
        processes: list[ServerProcess] = [*self.servers, *self.sentinels]
        for process in processes:
            if process.frozen:
                process.thaw()
        for sentinel in self.sentinels:
            if not sentinel.running:
                sentinel.start()
        if not self.master.running or self.master_address() != self._master_address:
            self.wait_for_failover()
        if not self.replica.running:
            self.replica.replicaof = (self.master.host, self.master.port)
            self.replica.start()
        self.wait_healthy()

    def close(self) -> None:
        for process in [*self.sentinels, *self.servers]:
            process.close()
