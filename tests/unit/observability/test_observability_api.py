"""The public surface of scalekit.observability and its import rules."""

from __future__ import annotations

import subprocess
import sys

import scalekit.observability as observability


def test_all_is_sorted_and_complete() -> None:
    exported = list(observability.__all__)
    assert exported == sorted(exported)
    for name in exported:
        assert hasattr(observability, name), name
    public = {
        name
        for name, value in vars(observability).items()
        if not name.startswith("_") and (isinstance(value, type) or callable(value))
    }
    assert public <= set(exported), public - set(exported)


def test_issue_and_design_names_are_exported() -> None:
    for name in (
        "MetricsMiddleware",
        "metrics_endpoint",
        "RequestContextMiddleware",
        "configure_logging",
        "Health",
        "PoolCheck",
        "ReplicaSetCheck",
        "RedisCheck",
        "CallableCheck",
        "subscribe_component_metrics",
    ):
        assert name in observability.__all__, name


def test_importing_configures_nothing_and_imports_no_other_component() -> None:
    code = """
import logging, sys
import structlog
before_root = list(logging.getLogger().handlers)
before_config = structlog.get_config()
import scalekit.observability
assert logging.getLogger().handlers == before_root, "root logging handlers changed"
assert structlog.get_config() == before_config, "structlog was configured"
for component in ("scalekit.db", "scalekit.cache", "scalekit.ratelimit", "scalekit.stack"):
    assert component not in sys.modules, component
for extra in ("redis", "pymysql", "dbutils", "limits"):
    assert extra not in sys.modules, extra
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
