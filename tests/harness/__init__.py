"""Real servers for integration tests: Redis, Redis Cluster, Sentinel, MariaDB.

The fixtures live in ``tests/conftest.py``; this package holds the classes.
Every server runs on free 127.0.0.1 ports in its own temp dir, is controlled
by its own PID (never by name) and is stopped at the end of the session.

Fixtures (session-scoped unless noted):

- ``redis_server`` -> ``RedisServer``: ``host``, ``port``, ``url``, ``pid``,
  ``log_path``, ``running``, ``start()`` (same port), ``stop()``, ``kill()``,
  ``freeze()``, ``thaw()``, ``client(**kwargs)`` (a ``redis.Redis`` that
  does not retry unless you pass ``retry=``), ``flushall()``, ``info()``.
- ``redis_tls_server`` -> ``TLSRedisServer``: a ``RedisServer`` that speaks
  only TLS and wants a client certificate; ``url`` is
  ``rediss://…?ssl_ca_certs=…&ssl_certfile=…&ssl_keyfile=…`` and
  ``certificates`` (``ca``, ``server_cert``, ``server_key``,
  ``client_cert``, ``client_key``) the PEM files of a CA made for the
  session with the openssl CLI (``harness.tls.make_certificates``).
- ``redis_cluster`` -> ``RedisCluster``: ``url``, ``nodes`` (RedisServer
  each), ``client()``, ``node_for_key(key)``, ``flushall()``,
  ``wait_ready()``. A node's ``start()`` waits for ``cluster_state:ok``.
- ``redis_sentinel`` -> ``RedisSentinel``: ``url``, ``service_name``,
  ``master``, ``replica``, ``sentinels``, ``kill_master()``,
  ``wait_for_failover(timeout)`` (returns the new master's (host, port)
  once every sentinel names it and it reports ``role:master``, and swaps
  ``master`` / ``replica``), ``master_address()``, ``heal()``.
- ``redis_sentinel_factory`` (function-scoped): ``factory()`` returns a fresh
  ``RedisSentinel`` on new ports, stopped when the test ends.
- ``mariadb_replication`` -> ``MariaDBReplication``: ``primary``,
  ``replica`` (``MariaDBServer``: ``host``, ``port``, ``pid``,
  ``log_path``, ``url``, ``start()``, ``stop()``, ``kill()``, ``admin()``,
  ``app_connect(db=...)``, ``query(sql)``), ``app_user``, ``app_password``,
  ``database``, ``set_delay(s)``, ``clear_delay()``,
  ``stop_replication(only=None|"sql"|"io")``, ``start_replication()``,
  ``wait_replicating(timeout)``, ``wait_caught_up(timeout)``,
  ``replication_status()`` (``SHOW SLAVE STATUS`` as a dict).
- ``NginxServer(workdir, upstreams)`` (no fixture; tests/e2e builds one): real
  nginx running ``examples/deploy/nginx.conf`` with only its ``# templated``
  lines rendered (``render_nginx_conf``): port, upstream addresses, paths.
- ``counting_proxy`` (function-scoped): ``factory(host, port, **options)``
  returns a ``CountingProxy`` (``port``, ``url_for(url)``, ``round_trips``,
  ``reset()``, ``drops``, ``close()``), closed when the test ends. How it
  counts: see ``harness/proxy.py``.

Test modules import from here as ``from harness import CountingProxy``
(``tests/conftest.py`` puts ``tests/`` on ``sys.path``).

Sentinel state after a failover: the session-scoped ``redis_sentinel``
restores itself. After every test that used a harness fixture the harness
calls its ``heal()``: frozen processes are thawed, stopped ones started again
(a killed Redis master comes back as a replica of the promoted one, and
``master`` / ``replica`` name the new roles), MariaDB replication is resumed
with no delay and caught up, and the cluster is ``ok`` again. Data is not
reset: use your own keys, tables or databases, or call ``flushall()``. A
test that wants a sentinel setup nobody else touched uses
``redis_sentinel_factory``.

A missing binary skips the test (``apt-get install ...``); under
``CI=true`` that skip is turned into a failure by ``tests/conftest.py``.
"""

from .mariadb_servers import APP_DATABASE, APP_PASSWORD, APP_USER, MariaDBReplication, MariaDBServer
from .nginx_server import NginxServer, render_nginx_conf
from .ports import HOST, free_port, wait_until
from .process import HarnessResource, ServerExited, ServerProcess
from .proxy import CountingProxy
from .redis_servers import (
    SERVICE_NAME,
    RedisCluster,
    RedisSentinel,
    RedisServer,
    SentinelProcess,
    TLSRedisServer,
)
from .skip import require_binary
from .tls import Certificates, make_certificates

__all__ = [
    "APP_DATABASE",
    "APP_PASSWORD",
    "APP_USER",
    "HOST",
    "SERVICE_NAME",
    "Certificates",
    "CountingProxy",
    "HarnessResource",
    "MariaDBReplication",
    "MariaDBServer",
    "NginxServer",
    "RedisCluster",
    "RedisSentinel",
    "RedisServer",
    "SentinelProcess",
    "ServerExited",
    "ServerProcess",
    "TLSRedisServer",
    "free_port",
    "make_certificates",
    "render_nginx_conf",
    "require_binary",
    "wait_until",
]
