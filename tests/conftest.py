"""Test-suite setup: markers from the path, real-server fixtures, CI rules.

- Every test under ``tests/unit``, ``tests/integration`` or ``tests/e2e`` is
  marked ``unit``, ``integration`` or ``e2e``.
- Under ``CI=true`` a skipped ``integration`` or ``e2e`` test is reported as
  failed, whatever skipped it: CI must never pass without its servers.
- When a test fails, the logs of the servers it used (the last 60 lines each)
  are added to its report.
- Server fixtures are described in ``tests/harness/__init__.py``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

_TESTS = Path(__file__).resolve().parent
if str(_TESTS) not in sys.path:
    # ``from harness import ...`` works the same from any test module.
    sys.path.insert(0, str(_TESTS))

from harness import (  # noqa: E402
    CountingProxy,
    HarnessResource,
    MariaDBReplication,
    RedisCluster,
    RedisSentinel,
    RedisServer,
    TLSRedisServer,
    make_certificates,
    require_binary,
)
from harness.process import LOG_TAIL_LINES, tail  # noqa: E402

_LAYERS = ("unit", "integration", "e2e")
_MUST_RUN_IN_CI = ("integration", "e2e")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            parts = item.path.resolve().relative_to(_TESTS).parts
        except ValueError:
            continue
        if parts and parts[0] in _LAYERS:
            item.add_marker(getattr(pytest.mark, parts[0]))


def _harness_resources(item: pytest.Item) -> list[HarnessResource]:
    funcargs: dict[str, Any] = getattr(item, "funcargs", None) or {}
    resources: list[HarnessResource] = []
    for value in funcargs.values():
        if isinstance(value, HarnessResource) and all(value is not r for r in resources):
            resources.append(value)
    return resources


def _attach_logs(item: pytest.Item, report: pytest.TestReport) -> None:
    seen: set[Path] = set()
    for resource in _harness_resources(item):
        for label, path in resource.log_files():
            if path in seen:
                continue
            seen.add(path)
            title = f"{label} log {path} (last {LOG_TAIL_LINES} lines)"
            report.sections.append((title, tail(path)))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        _attach_logs(item, report)
    if (
        report.skipped
        and os.environ.get("CI") == "true"
        and not hasattr(report, "wasxfail")
        and any(item.get_closest_marker(name) for name in _MUST_RUN_IN_CI)
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"integration/e2e tests must not be skipped under CI=true: {reason}"
    return report


@pytest.fixture(autouse=True)
def _heal_harness(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, undo what it did to shared servers (see harness docs)."""
    yield
    for resource in _harness_resources(request.node):
        resource.heal()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server (no persistence) for the whole session."""
    binary = require_binary("redis-server", "redis-server")
    server = RedisServer(tmp_path_factory.mktemp("redis"), binary=binary)
    try:
        server.start_on_free_port()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSRedisServer]:
    """A real redis-server speaking only TLS, with a CA and certificates made for the session."""
    binary = require_binary("redis-server", "redis-server")
    openssl = require_binary("openssl", "openssl")
    workdir = tmp_path_factory.mktemp("redis-tls")
    certificates = make_certificates(workdir / "certs", openssl=openssl)
    server = TLSRedisServer(workdir, certificates, binary=binary)
    try:
        server.start_on_free_port()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A real 3-master Redis Cluster for the whole session."""
    binary = require_binary("redis-server", "redis-server")
    cli = require_binary("redis-cli", "redis-tools")
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"), binary=binary, cli=cli)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def _new_sentinel_setup(tmp_path_factory: pytest.TempPathFactory) -> RedisSentinel:
    binary = require_binary("redis-server", "redis-server")
    sentinel_binary = require_binary("redis-sentinel", "redis-sentinel")
    return RedisSentinel(
        tmp_path_factory.mktemp("redis-sentinel"), binary=binary, sentinel_binary=sentinel_binary
    )


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    """Redis master + replica + 3 sentinels; heals itself after each test."""
    setup = _new_sentinel_setup(tmp_path_factory)
    try:
        setup.start()
        yield setup
    finally:
        setup.close()


class _Factory(HarnessResource):
    """A function-scoped factory whose products are closed when the test ends."""

    def __init__(self, make: Callable[..., Any]) -> None:
        self._make = make
        self.created: list[Any] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        product = self._make(*args, **kwargs)
        self.created.append(product)
        return product

    def log_files(self) -> list[tuple[str, Path]]:
        files: list[tuple[str, Path]] = []
        for product in self.created:
            if isinstance(product, HarnessResource):
                files += product.log_files()
        return files

    def close(self) -> None:
        for product in reversed(self.created):
            product.close()
        self.created.clear()


@pytest.fixture
def redis_sentinel_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Factory]:
    """``factory()`` -> a fresh, started ``RedisSentinel``; stopped at test end."""

    def make() -> RedisSentinel:
        setup = _new_sentinel_setup(tmp_path_factory)
        try:
            setup.start()
        except BaseException:
            setup.close()
            raise
        return setup

    factory = _Factory(make)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="session")
def mariadb_replication(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBReplication]:
    """A MariaDB primary + read-only GTID replica for the whole session."""
    binary = require_binary("mariadbd", "mariadb-server")
    install_db = require_binary("mariadb-install-db", "mariadb-server")
    setup = MariaDBReplication(
        tmp_path_factory.mktemp("mariadb"), binary=binary, install_db=install_db
    )
    try:
        setup.start()
        yield setup
    finally:
        setup.close()


@pytest.fixture
def counting_proxy() -> Iterator[_Factory]:
    """``factory(host, port, **options)`` -> a ``CountingProxy``, closed at test end."""
    factory = _Factory(CountingProxy)
    try:
        yield factory
    finally:
        factory.close()
