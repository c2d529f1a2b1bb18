"""Request ids and structured logs, Prometheus metrics, health checks.

Everything here stands alone: it never imports ``scalekit.db``,
``scalekit.cache`` or ``scalekit.ratelimit``. Those report through
:mod:`scalekit.events`, which :func:`subscribe_component_metrics` turns into
Prometheus series; health checks take pools and Redis clients duck-typed.
Importing this package configures nothing; call :func:`configure_logging`
from your application if you want scalekit's logging setup.
"""

from __future__ import annotations

from scalekit.observability.component_metrics import ComponentMetrics, subscribe_component_metrics
from scalekit.observability.context import (
    RequestContextMiddleware,
    current_request_id,
    new_request_id,
)
from scalekit.observability.health import (
    CallableCheck,
    Check,
    CheckResult,
    Health,
    HealthReport,
    HealthStatus,
    PoolCheck,
    RedisCheck,
    ReplicaSetCheck,
)
from scalekit.observability.logging import configure_logging
from scalekit.observability.metrics import (
    HttpMetrics,
    MetricsMiddleware,
    RequestMetrics,
    cleanup_dead_workers,
    metrics_endpoint,
    metrics_endpoint_for,
    render_metrics,
)

__all__ = [
    "CallableCheck",
    "Check",
    "CheckResult",
    "ComponentMetrics",
    "Health",
    "HealthReport",
    "HealthStatus",
    "HttpMetrics",
    "MetricsMiddleware",
    "PoolCheck",
    "RedisCheck",
    "ReplicaSetCheck",
    "RequestContextMiddleware",
    "RequestMetrics",
    "cleanup_dead_workers",
    "configure_logging",
    "current_request_id",
    "metrics_endpoint",
    "metrics_endpoint_for",
    "new_request_id",
    "render_metrics",
    "subscribe_component_metrics",
]
