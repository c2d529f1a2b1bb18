"""The example Grafana dashboard only queries metrics scalekit exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Router

from scalekit import events
from scalekit.observability import ComponentMetrics, HealthReport, MetricsMiddleware
from scalekit.observability.metrics import render_metrics
from scalekit.observability.state_metrics import StateMetrics

DASHBOARD = Path(__file__).resolve().parents[3] / "examples" / "grafana" / "scalekit-dashboard.json"
PROMQL_FUNCTIONS = {"sum", "rate", "histogram_quantile", "by", "le"}


def exported_sample_names() -> set[str]:
    registry = CollectorRegistry()
    middleware = MetricsMiddleware(Router([]), registry=registry)
    middleware.metrics.observe("GET", "/", 200, 0.01)
    middleware.metrics.gauge("GET")
    metrics = ComponentMetrics(registry)
    metrics.on_db_query(events.DbQuery(pool="p", role="primary", duration=0.01))
    metrics.on_db_routing(events.DbRouting(pool="p", decision="retry"))
    metrics.on_db_pool_stats(events.DbPoolStats(pool="p", in_use=1, idle=1, waiting=0))
    metrics.on_cache_event(events.CacheEvent(rule="r", event="hit"))
    metrics.on_ratelimit_decision(events.RateLimitDecision(rule="r", decision="allowed"))
    metrics.on_backend_error(events.BackendError(component="redis"))
    state = StateMetrics.for_registry(registry)

    class Breaker:
        state = "closed"

    class Ready:
        last_report = HealthReport("pass", 200, {})

    state.watch_breaker("cache", Breaker())
    state.watch_health(Ready())
    body, _ = render_metrics(registry)
    return {
        sample.name
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def expressions(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for value in node.values() for e in expressions(value)]
    if isinstance(node, list):
        return [e for value in node for e in expressions(value)]
    return []


def test_every_metric_the_dashboard_uses_exists() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = expressions(dashboard["panels"])
    assert len(exprs) >= 10
    names = {
        name for expr in exprs for name in re.findall(r"\b((?:http|scalekit)_[a-z_]+)\b", expr)
    }
    exported = exported_sample_names()
    assert names, "the dashboard queries nothing"
    assert names <= exported, f"not exported: {sorted(names - exported)}"
    # Every family scalekit documents appears on the dashboard.
    for family in (
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "http_requests_in_progress",
        "scalekit_db_query_duration_seconds_bucket",
        "scalekit_db_pool_connections",
        "scalekit_cache_events_total",
        "scalekit_ratelimit_decisions_total",
        "scalekit_backend_errors_total",
        "scalekit_circuit_breaker_state",
        "scalekit_ready",
    ):
        assert family in names, family


def test_dashboard_is_importable_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "scalekit"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}


def test_dashboard_can_be_provisioned_from_a_file_and_filters_by_instance() -> None:
    text = DASHBOARD.read_text()
    dashboard = json.loads(text)
    # File provisioning has no import step to fill ${DS_...} inputs: a datasource variable.
    assert "__inputs" not in dashboard
    assert "DS_PROMETHEUS" not in text
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert {"job", "instance"} <= set(variables)
    for expr in expressions(dashboard["panels"]):
        assert 'instance=~"$instance"' in expr, expr
    provisioning = DASHBOARD.parent / "provisioning"
    assert (provisioning / "dashboards" / "scalekit.yaml").is_file()
    assert (provisioning / "datasources" / "prometheus.yaml").is_file()


def test_cache_hit_ratio_counts_bypasses() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (panel,) = [p for p in dashboard["panels"] if p["title"] == "Cache hit ratio by rule"]
    denominator = panel["targets"][0]["expr"].split(" / ")[1]
    assert "bypass" in denominator
