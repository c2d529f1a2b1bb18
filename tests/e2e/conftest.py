"""The example task API as it runs in production, started once per test session.

- MariaDB primary + GTID replica (the harness's ``mariadb_replication``) with
  three databases on the pair: ``scalekit_users`` and the shards
  ``scalekit_shard0`` / ``scalekit_shard1``, each made from ``schema.sql``;
- Redis (the harness's ``redis_server``) for the cache, the limits and the
  read-your-writes marks;
- three ``uvicorn examples.taskapi.app:app`` instances, one worker each;
- real nginx in front, running the shipped ``examples/deploy/nginx.conf``.

``taskapi`` is a harness resource: after each test it heals what the test
broke (a killed Redis, a stopped server, an instance restarted with other
settings, a replication delay).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import MariaDBReplication, RedisServer, require_binary
from taskapi_cluster import TaskApi


@pytest.fixture(scope="session")
def taskapi(
    tmp_path_factory: pytest.TempPathFactory,
    mariadb_replication: MariaDBReplication,
    redis_server: RedisServer,
) -> Iterator[TaskApi]:
    nginx = require_binary("nginx", "nginx")
    api = TaskApi(tmp_path_factory.mktemp("taskapi"), mariadb_replication, redis_server)
    try:
        api.start(nginx)
        yield api
    finally:
        api.close()
