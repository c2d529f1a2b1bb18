"""The example task API cluster the end-to-end tests run (see conftest.py)."""

from __future__ import annotations

import concurrent.futures
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from harness import (
    APP_PASSWORD,
    APP_USER,
    HarnessResource,
    MariaDBReplication,
    NginxServer,
    RedisServer,
    ServerProcess,
)

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples.taskapi.storage import schema_statements  # noqa: E402

DATABASES = ("scalekit_users", "scalekit_shard0", "scalekit_shard1")
JWT_SECRET = "e2e-secret-shared-by-every-instance-0123456789"
INSTANCES = 3
# Settings every instance starts with. The API limit is high so that tests
# other than the limit test never meet it; max_lag is high so that the
# delayed replica stays eligible for reads and only read-your-writes keeps a
# writer's reads fresh (pin_after_write must exceed it).
BASE_ENV = {
    "SCALEKIT_RATE_LIMIT": "1000000/15 minutes",
    "TASKAPI_LOGIN_LIMIT": "100000/15 minutes",
    "SCALEKIT_MAX_LAG": "30",
    "SCALEKIT_PIN_AFTER_WRITE": "35",
    "SCALEKIT_TRUSTED_PROXIES": "127.0.0.1/32",
    "TASKAPI_JWT_SECRET": JWT_SECRET,
}


class Instance(ServerProcess):
    """``uvicorn examples.taskapi.app:app`` on one port, one worker."""

    name = "uvicorn"
    start_timeout = 60.0

    def __init__(self, workdir: Path, index: int, env: Mapping[str, str]) -> None:
        super().__init__(workdir)
        self.index = index
        self.env = dict(env)

    def argv(self) -> list[str]:
        inherited = [
            f"-u{name}" for name in os.environ if name.startswith(("SCALEKIT_", "TASKAPI_"))
        ]
        assignments = [f"{name}={value}" for name, value in sorted(self.env.items())]
        return [
            "env", *inherited, f"PYTHONPATH={ROOT}", *assignments,
            sys.executable, "-m", "uvicorn", "examples.taskapi.app:app",
            "--host", self.host, "--port", str(self.port), "--no-proxy-headers",
            "--no-access-log", "--timeout-graceful-shutdown", "1",
        ]  # fmt: skip

    def probe(self) -> bool:
        return httpx.get(f"{self.url}/health/live", timeout=2).status_code == 200

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class TaskApi(HarnessResource):
    """Three instances behind nginx, on MariaDB + replica and Redis."""

    def __init__(self, workdir: Path, mariadb: MariaDBReplication, redis: RedisServer) -> None:
        self.workdir = workdir
        self.mariadb = mariadb
        self.redis = redis
        self.base_env = self._env()
        self.instances = [
            Instance(workdir / f"api{index}", index, self.base_env) for index in range(INSTANCES)
        ]
        self.nginx: NginxServer | None = None

    def _env(self) -> dict[str, str]:
        def url(server: Any, database: str) -> str:
            return f"mysql://{APP_USER}:{APP_PASSWORD}@{server.host}:{server.port}/{database}"

        primary, replica = self.mariadb.primary, self.mariadb.replica
        users, *shards = DATABASES
        return {
            **BASE_ENV,
            "SCALEKIT_DATABASE_URL": url(primary, users),
            "SCALEKIT_REPLICA_URLS": url(replica, users),
            "SCALEKIT_SHARD_URLS": ";".join(
                f"{url(primary, shard)},{url(replica, shard)}" for shard in shards
            ),
            # 1 s per Redis call instead of 50 ms: on a busy 2-core CI machine a
            # timed-out limiter call fails open, and the limit test counts exactly.
            "SCALEKIT_REDIS_URL": f"{self.redis.url}?socket_timeout=1",
        }

    def start(self, nginx_binary: str) -> None:
        for database in DATABASES:
            self.mariadb.primary.query(f"CREATE DATABASE IF NOT EXISTS `{database}`")
            for statement in schema_statements("mysql"):
                with self.mariadb.primary.admin(database=database) as conn, conn.cursor() as cur:
                    cur.execute(statement)
        self.mariadb.wait_caught_up()
        for instance in self.instances:
            instance.start_on_free_port()
        self.nginx = NginxServer(
            self.workdir / "nginx",
            [f"{instance.host}:{instance.port}" for instance in self.instances],
            binary=nginx_binary,
        )
        self.nginx.start_on_free_port()

    @property
    def url(self) -> str:
        assert self.nginx is not None
        return self.nginx.url

    def restart_instances(self, **env: str) -> None:
        """Restart every instance with ``env`` over the base settings (same ports)."""
        self._restart({**self.base_env, **env})

    def _restart(self, env: dict[str, str]) -> None:
        def restart(instance: Instance) -> None:
            instance.stop()
            instance.env = dict(env)
            instance.start()

        with concurrent.futures.ThreadPoolExecutor(len(self.instances)) as pool:
            list(pool.map(restart, self.instances))

    def upstreams_used(self, *, request: str = "", status: int | None = None) -> set[str]:
        """The instances nginx's access log names so far, for requests starting
        with ``request`` (``"GET /path"``) and answered with ``status``."""
        assert self.nginx is not None
        text = self.nginx.access_log.read_text(encoding="utf-8", errors="replace")
        found = set()
        # log_format upstream: $remote_addr "$request" $status $bytes upstream=... rt=...
        for line in text.splitlines():
            _, quoted, rest = line.split('"', 2)
            fields = rest.split()
            if not quoted.startswith(request) or (status is not None and fields[0] != str(status)):
                continue
            found |= {field.split("=", 1)[1] for field in fields if field.startswith("upstream=")}
        return found

    def metric(self, name: str, **labels: str) -> float:
        """The sum over the instances of one Prometheus sample (0 when absent)."""
        total = 0.0
        for instance in self.instances:
            text = httpx.get(f"{instance.url}/metrics", timeout=5).text
            for line in text.splitlines():
                if not line.startswith(name + "{") and not line.startswith(name + " "):
                    continue
                if all(f'{key}="{value}"' in line for key, value in labels.items()):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def shard_rows(self, user_id: int, *, server: str = "primary") -> int:
        """The user's tasks counted straight on a server, across both shards."""
        target = self.mariadb.primary if server == "primary" else self.mariadb.replica
        total = 0
        for db in DATABASES[1:]:
            rows = target.query(
                f"SELECT COUNT(*) AS n FROM `{db}`.tasks WHERE user_id = %s", (user_id,)
            )
            total += int(rows[0]["n"])
        return total

    # -- harness ------------------------------------------------------------
    def log_files(self) -> list[tuple[str, Path]]:
        files = [f for instance in self.instances for f in instance.log_files()]
        if self.nginx is not None:
            files += self.nginx.log_files()
        return files + self.mariadb.log_files() + self.redis.log_files()

    def heal(self) -> None:
        self.redis.heal()
        self.mariadb.heal()
        if any(instance.env != self.base_env for instance in self.instances):
            self._restart(self.base_env)
        for instance in self.instances:
            instance.heal()
        if self.nginx is not None:
            self.nginx.heal()

    def close(self) -> None:
        if self.nginx is not None:
            self.nginx.close()
        for instance in self.instances:
            instance.close()
