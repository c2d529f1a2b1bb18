"""Two real mariadbd servers with GTID replication (primary -> read-only replica)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import pymysql
import pymysql.cursors

from .ports import wait_until
from .process import HarnessResource, ServerProcess, tail

APP_USER = "app"
APP_PASSWORD = "app-secret"
APP_DATABASE = "scalekit_test"
REPL_USER = "repl"
REPL_PASSWORD = "repl-secret"


class MariaDBServer(ServerProcess):
    """One real ``mariadbd`` in its own datadir, with binlog and GTID strict mode."""

    name = "mariadbd"
    start_timeout = 60.0
    stop_timeout = 60.0

    def __init__(
        self,
        workdir: Path,
        *,
        server_id: int,
        role: str,
        binary: str = "mariadbd",
        install_db: str = "mariadb-install-db",
        read_only: bool = False,
    ) -> None:
        super().__init__(workdir)
        self.server_id = server_id
        self.role = role
        self.binary = binary
        self.install_db = install_db
        self.read_only = read_only
        self.datadir = workdir / "data"
        self.socket_path = workdir / "mysqld.sock"
        self.pid_file = workdir / "mysqld.pid"
        self.log_path = workdir / "mariadbd.log"

    def install(self) -> None:
        """Create the system tables (``mariadb-install-db``) in an empty datadir."""
        argv = [
            self.install_db,
            "--no-defaults",
            "--user=root",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            f"--datadir={self.datadir}",
        ]
        with self.log_path.open("ab") as log:
            result = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                timeout=120, check=False,
            )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed:\n{tail(self.log_path)}")

    def argv(self) -> Sequence[str]:
        return [
            self.binary,
            "--no-defaults",
            "--user=root",
            f"--datadir={self.datadir}",
            f"--socket={self.socket_path}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            f"--server-id={self.server_id}",
            "--log-bin",
            f"--log-basename={self.role}",
            "--binlog-format=ROW",
            "--gtid-strict-mode=1",
            "--performance-schema=ON",
            "--skip-name-resolve",
            f"--pid-file={self.pid_file}",
            f"--log-error={self.log_path}",
            f"--tmpdir={self.workdir}",
            f"--read-only={int(self.read_only)}",
            # Speed only: a killed process (not a crashed OS) loses nothing.
            "--innodb-flush-log-at-trx-commit=2",
            "--innodb-buffer-pool-size=64M",
        ]

    def probe(self) -> bool:
        with self.admin() as conn, conn.cursor() as cursor:
            cursor.execute("SELECT 1")
            return bool(cursor.fetchone() == (1,))

    @property
    def url(self) -> str:
        return f"mysql://{APP_USER}:{APP_PASSWORD}@{self.host}:{self.port}/{APP_DATABASE}"

    def admin(self, **kwargs: Any) -> pymysql.connections.Connection[Any]:
        """A root connection over the unix socket, autocommit on (close it)."""
        conn = pymysql.connect(
            unix_socket=str(self.socket_path),
            user="root",
            password="",
            autocommit=True,
            connect_timeout=5,
            defer_connect=True,
            **kwargs,
        )
        # pymysql leaks the unix socket when connect() fails (a server still
        # starting): connect it here and hand it over.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(5)
            sock.connect(str(self.socket_path))
        except OSError as exc:
            sock.close()
            raise pymysql.err.OperationalError(
                2002, f"Can't connect through socket {self.socket_path} ({exc})"
            ) from exc
        conn.connect(sock)
        return conn

    def app_connect(
        self, db: str | None = APP_DATABASE, **kwargs: Any
    ) -> pymysql.connections.Connection[Any]:
        """A TCP connection as the application user ``app`` (close it)."""
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 5)
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=APP_USER,
            password=APP_PASSWORD,
            database=db,
            **kwargs,
        )

    def query(self, sql: str, args: Any = None) -> list[dict[str, Any]]:
        """Run one statement as root; return its rows as dicts."""
        with self.admin(cursorclass=pymysql.cursors.DictCursor) as conn, conn.cursor() as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall())

    def log_files(self) -> list[tuple[str, Path]]:
        return [(f"mariadbd {self.role} {self.host}:{self.port}", self.log_path)]


class MariaDBReplication(HarnessResource):
    """A MariaDB primary and a GTID replica (``read_only=1``) of it.

    The application user ``app`` (password ``APP_PASSWORD``) has ALL on
    ``scalekit%``.* (so tests may create ``scalekit_shard_0`` ...), plus
    SLAVE MONITOR, REPLICATION CLIENT, PROCESS and SELECT on
    performance_schema. Root is only reachable over each server's socket.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        binary: str = "mariadbd",
        install_db: str = "mariadb-install-db",
    ) -> None:
        self.workdir = workdir
        self.primary = MariaDBServer(
            workdir / "primary", server_id=1, role="primary", binary=binary, install_db=install_db
        )
        self.replica = MariaDBServer(
            workdir / "replica",
            server_id=2,
            role="replica",
            binary=binary,
            install_db=install_db,
            read_only=True,
        )
        self.app_user = APP_USER
        self.app_password = APP_PASSWORD
        self.database = APP_DATABASE

    def start(self) -> None:
        self.primary.install()
        # A copy of the same fresh install: mariadb-install-db writes no
        # binlog, so the replica starts with no GTIDs of its own and strict
        # mode holds; everything after this replicates from the primary.
        shutil.copytree(self.primary.datadir, self.replica.datadir)
        self.primary.start_on_free_port()
        self.replica.start_on_free_port()
        with self.primary.admin() as conn, conn.cursor() as cursor:
            for host in ("127.0.0.1", "%"):
                user = f"'{APP_USER}'@'{host}'"
                cursor.execute(f"CREATE USER {user} IDENTIFIED BY {conn.escape(APP_PASSWORD)}")
                cursor.execute(f"GRANT ALL PRIVILEGES ON `scalekit%`.* TO {user}")
                cursor.execute(f"GRANT SLAVE MONITOR, REPLICATION CLIENT, PROCESS ON *.* TO {user}")
                cursor.execute(f"GRANT SELECT ON performance_schema.* TO {user}")
            cursor.execute(
                f"CREATE USER '{REPL_USER}'@'127.0.0.1' IDENTIFIED BY {conn.escape(REPL_PASSWORD)}"
            )
            cursor.execute(f"GRANT REPLICATION SLAVE ON *.* TO '{REPL_USER}'@'127.0.0.1'")
            cursor.execute(f"CREATE DATABASE `{APP_DATABASE}`")
        with self.replica.admin() as conn, conn.cursor() as cursor:
            cursor.execute(
                "CHANGE MASTER TO MASTER_HOST=%s, MASTER_PORT=%s, MASTER_USER=%s, "
                "MASTER_PASSWORD=%s, MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
                (self.primary.host, self.primary.port, REPL_USER, REPL_PASSWORD),
            )
            cursor.execute("START SLAVE")
        self.wait_replicating()
        self.wait_caught_up()

    # -- replication control ---------------------------------------------
    def replication_status(self) -> dict[str, Any]:
        """``SHOW SLAVE STATUS`` on the replica as a dict ({} if not configured)."""
        rows = self.replica.query("SHOW SLAVE STATUS")
        return rows[0] if rows else {}

    def _replicating(self) -> bool:
        status = self.replication_status()
        return status.get("Slave_IO_Running") == "Yes" and status.get("Slave_SQL_Running") == "Yes"

    def wait_replicating(self, timeout: float = 30.0) -> None:
        """Wait until both ``Slave_IO_Running`` and ``Slave_SQL_Running`` are Yes."""
        wait_until(self._replicating, timeout=timeout, what="replica IO and SQL threads running")

    def wait_caught_up(self, timeout: float = 30.0) -> None:
        """Wait until the replica has applied the primary's ``@@gtid_binlog_pos``.

        Raises:
            TimeoutError: the replica did not get there in time (delayed,
                stopped, or the primary is unreachable).
        """
        (row,) = self.primary.query("SELECT @@gtid_binlog_pos AS pos")
        position = row["pos"]
        if not position:
            return
        (row,) = self.replica.query(
            "SELECT MASTER_GTID_WAIT(%s, %s) AS waited", (position, timeout)
        )
        if row["waited"] != 0:
            raise TimeoutError(
                f"replica did not reach primary GTID {position} in {timeout}s: "
                f"{self.replication_status()}"
            )

    def set_delay(self, seconds: int) -> None:
        """Make the replica apply events ``seconds`` after the primary (MASTER_DELAY)."""
        with self.replica.admin() as conn, conn.cursor() as cursor:
            cursor.execute("STOP SLAVE")
            cursor.execute("CHANGE MASTER TO MASTER_DELAY=%s", (int(seconds),))
            cursor.execute("START SLAVE")

    def clear_delay(self) -> None:
        self.set_delay(0)

    def stop_replication(self, only: Literal["sql", "io"] | None = None) -> None:
        """``STOP SLAVE`` (or only its SQL / IO thread)."""
        thread = {None: "", "sql": " SQL_THREAD", "io": " IO_THREAD"}[only]
        self.replica.query(f"STOP SLAVE{thread}")

    def start_replication(self) -> None:
        self.replica.query("START SLAVE")

    # -- harness ----------------------------------------------------------
    @property
    def servers(self) -> list[MariaDBServer]:
        return [self.primary, self.replica]

    def log_files(self) -> list[tuple[str, Path]]:
        return self.primary.log_files() + self.replica.log_files()

    def heal(self) -> None:
        for server in self.servers:
            server.heal()
        status = self.replication_status()
        if status.get("SQL_Delay"):
            self.clear_delay()
        elif status.get("Slave_IO_Running") != "Yes" or status.get("Slave_SQL_Running") != "Yes":
            # START SLAVE starts whichever thread is stopped; harmless if it
            # is only reconnecting.
            self.start_replication()
        self.wait_replicating()
        self.wait_caught_up()

    def close(self) -> None:
        self.replica.close()
        self.primary.close()
