"""Prometheus request metrics by route template, and the ``/metrics`` endpoint.

Series::

    http_requests_total{method,route,status}          counter
    http_request_duration_seconds{method,route}       histogram
    http_requests_in_progress{method}                 gauge (live-sum across workers)

``route`` is the template of the matched route (``/items/{item_id}``), so
the number of series is bounded by the app's routes, whatever paths clients
send. Requests no route matched share :data:`UNMATCHED_ROUTE`; unknown
methods share :data:`OTHER_METHOD`.

With ``PROMETHEUS_MULTIPROC_DIR`` set (several ``uvicorn --workers`` or
gunicorn workers), values live in per-process files that one scrape sums;
files of workers that died are cleaned at scrape time, because uvicorn has no
child-exit hook.
"""

from __future__ import annotations

import bisect
import copy
import math
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scalekit._routes import (
    OTHER_METHOD,
    OVERFLOW_ROUTE,
    UNMATCHED_ROUTE,
    RouteNames,
    normalise_method,
    route_path,
)
from scalekit.errors import ConfigurationError
from scalekit.observability.multiprocess import (
    cleanup_dead_workers,
    multiprocess_dir,
    workers_registry,
)
from scalekit.options import DEFAULT_METRICS_BUCKETS

__all__ = [
    "DEFAULT_BUCKETS",
    "DEFAULT_EXCLUDED_PATHS",
    "OTHER_METHOD",
    "OVERFLOW_ROUTE",
    "REGISTRY_SCOPE_KEY",
    "UNMATCHED_ROUTE",
    "HttpMetrics",
    "MetricsMiddleware",
    "RequestMetrics",
    "cleanup_dead_workers",
    "metrics_endpoint",
    "metrics_endpoint_for",
    "multiprocess_dir",
    "render_metrics",
]

DEFAULT_BUCKETS: tuple[float, ...] = DEFAULT_METRICS_BUCKETS
"""Histogram buckets in seconds, from 1 ms to 10 s: a cache hit or a 429 lands in
the first buckets instead of all under Prometheus' 5 ms default."""

REGISTRY_SCOPE_KEY = "scalekit.metrics_registry"
"""The ASGI scope key where ``MetricsMiddleware`` leaves its registry for ``metrics_endpoint``."""

DEFAULT_EXCLUDED_PATHS: tuple[str, ...] = ("/metrics", "/health/live", "/health/ready")
"""Paths the middleware does not count: scrapes and probes."""


class HttpMetrics:
    """The three HTTP metrics of one registry.

    Get them with :meth:`for_registry`: every middleware on the same registry
    shares one set, so two apps never register a name twice.
    """

    _by_registry: weakref.WeakKeyDictionary[CollectorRegistry, HttpMetrics] = (
        weakref.WeakKeyDictionary()
    )
    _lock = threading.Lock()

    def __init__(self, registry: CollectorRegistry, buckets: Sequence[float]) -> None:
        self.buckets = tuple(float(b) for b in buckets)
        self.requests = Counter(
            "http_requests",
            "HTTP requests handled, by method, route template and status.",
            ("method", "route", "status"),
            registry=registry,
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "Time from receiving a request to sending its last byte, by route template.",
            ("method", "route"),
            buckets=self.buckets,
            registry=registry,
        )
        self.in_progress = Gauge(
            "http_requests_in_progress",
            "HTTP requests being handled now, by method.",
            ("method",),
            registry=registry,
            multiprocess_mode="livesum",
        )
        # Label children resolved once per (method, route, status) and kept:
        # one dict lookup per request instead of prometheus_client's locked
        # lookup in labels() for each of the two series.
        self.children: dict[tuple[str, str, int], _PublicSeries | _DirectSeries] = {}
        self.in_progress_children: dict[str, _LiveGauge] = {}

    @classmethod
    def for_registry(
        cls, registry: CollectorRegistry, buckets: Sequence[float] = DEFAULT_BUCKETS
    ) -> HttpMetrics:
        """The metrics registered in ``registry``, created on first use.

        Raises:
            ValueError: the registry already has them with other buckets.
        """
        with cls._lock:
            metrics = cls._by_registry.get(registry)
            if metrics is None:
                metrics = cls(registry, buckets)
                cls._by_registry[registry] = metrics
            elif metrics.buckets != tuple(float(b) for b in buckets):
                raise ConfigurationError(
                    "http_request_duration_seconds is already registered in this registry with "
                    f"buckets {metrics.buckets}; pass the same buckets or another registry"
                )
            return metrics

    def observe(self, method: str, route: str, status: int, duration: float) -> None:
        """Count one finished request."""
        key = (method, route, status)
        series = self.children.get(key)
        if series is None:
            series = _request_series(
                self.requests.labels(method, route, str(status)),
                self.duration.labels(method, route),
            )
            self.children[key] = series
        series.record(duration)

    def gauge(self, method: str) -> _LiveGauge:
        """The in-progress gauge of ``method`` (``inc()`` and ``dec()``)."""
        gauge = self.in_progress_children.get(method)
        if gauge is None:
            gauge = _LiveGauge(self.in_progress.labels(method))
            self.in_progress_children[method] = gauge
        return gauge


# prometheus_client's children check on every call that they are label
# children and not in "mostrecent" mode, and the histogram walks its buckets
# in Python; both are known when the child is resolved. The helpers below hold
# the children's value objects (plain or multiprocess, both with inc()) and
# fall back to the public methods with a prometheus_client that lacks them.
# tests/unit/observability/test_http_metrics.py checks both give the same output.


def _value_inc(child: Any, attribute: str = "_value") -> Callable[[float], None] | None:
    value = getattr(child, attribute, None)
    inc = getattr(value, "inc", None)
    return inc if callable(inc) else None


class _LiveGauge:
    """``inc()`` / ``dec()`` of one in-progress gauge child."""

    __slots__ = ("_child", "_inc")

    def __init__(self, child: Any) -> None:
        self._child = child
        mode = getattr(child, "_multiprocess_mode", "livesum")
        self._inc = _value_inc(child) if mode != "mostrecent" else None

    def inc(self) -> None:
        if self._inc is not None:
            self._inc(1)
        else:
            self._child.inc()

    def dec(self) -> None:
        if self._inc is not None:
            self._inc(-1)
        else:
            self._child.dec()


class _PublicSeries:
    """The request counter and duration histogram children of one label set."""

    __slots__ = ("_counter", "_histogram")

    def __init__(self, counter: Any, histogram: Any) -> None:
        self._counter = counter
        self._histogram = histogram

    def record(self, duration: float) -> None:
        self._counter.inc()
        self._histogram.observe(duration)


class _DirectSeries:
    """The same through the children's value objects: what their public methods end in."""

    __slots__ = ("_bounds", "_buckets", "_count", "_sum")

    def __init__(
        self,
        count: Callable[[float], None],
        total: Callable[[float], None],
        buckets: list[Callable[[float], None]],
        bounds: list[float],
    ) -> None:
        self._count = count
        self._sum = total
        self._buckets = buckets
        self._bounds = bounds

    def record(self, duration: float) -> None:
        self._count(1)
        self._sum(duration)
        # The first bucket whose upper bound is >= duration, as Histogram.observe picks it
        # (durations are perf_counter differences: never NaN).
        self._buckets[bisect.bisect_left(self._bounds, duration)](1)


def _request_series(counter: Any, histogram: Any) -> _PublicSeries | _DirectSeries:
    count = _value_inc(counter)
    total = _value_inc(histogram, "_sum")
    buckets = [getattr(bucket, "inc", None) for bucket in getattr(histogram, "_buckets", ())]
    bounds = [float(bound) for bound in getattr(histogram, "_upper_bounds", ())]
    if (
        count is None
        or total is None
        or not buckets
        or len(buckets) != len(bounds)
        or bounds[-1] != math.inf
    ):
        return _PublicSeries(counter, histogram)
    incs = [inc for inc in buckets if callable(inc)]
    if len(incs) != len(buckets):
        return _PublicSeries(counter, histogram)
    return _DirectSeries(count, total, incs, bounds)


class RequestMetrics:
    """What :class:`MetricsMiddleware` counts, for a layer that also does other work.

    ``RequestContextMiddleware(app, metrics=RequestMetrics(...))`` counts every
    request in the request-context layer itself: the same series, labels and
    exclusions as ``MetricsMiddleware`` behind it, one ASGI layer fewer
    (``install()`` does this).

    Args:
        registry: where the metrics are registered (default: prometheus_client's
            global ``REGISTRY``). Apps sharing a registry share the series.
        buckets: histogram buckets in seconds.
        exclude_paths: paths not counted (default :data:`DEFAULT_EXCLUDED_PATHS`).
        max_routes: a hard cap on distinct ``route`` values; later new
            templates are counted as :data:`OVERFLOW_ROUTE`. None: no cap.

    Raises:
        ValueError: ``max_routes`` below 1, or ``buckets`` that differ from the
            ones already registered in ``registry``.
    """

    __slots__ = ("exclude_paths", "metrics", "registry", "route_names")

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        exclude_paths: Iterable[str] = DEFAULT_EXCLUDED_PATHS,
        max_routes: int | None = None,
    ) -> None:
        self.registry = registry if registry is not None else REGISTRY
        self.metrics = HttpMetrics.for_registry(self.registry, buckets)
        self.exclude_paths = frozenset(exclude_paths)
        self.route_names = RouteNames(max_routes=max_routes)

    def counts(self, scope: Scope) -> bool:
        """Whether an HTTP request is counted; leaves the registry in the scope either way.

        ``metrics_endpoint`` behind the layer reads the registry from the scope.
        """
        scope[REGISTRY_SCOPE_KEY] = self.registry
        paths = self.exclude_paths
        if scope["path"] in paths:
            return False
        return not (scope.get("root_path") and route_path(scope) in paths)


class MetricsMiddleware:
    """Counts and times every HTTP request by method, route template and status.

    Args:
        app: the ASGI app to wrap.
        registry: where the metrics are registered (default: prometheus_client's
            global ``REGISTRY``). Apps sharing a registry share the series.
        buckets: histogram buckets in seconds.
        exclude_paths: paths not counted (default :data:`DEFAULT_EXCLUDED_PATHS`).
        max_routes: a hard cap on distinct ``route`` values; later new
            templates are counted as :data:`OVERFLOW_ROUTE`. None: no cap.

    Raises:
        ValueError: ``max_routes`` below 1, or ``buckets`` that differ from the
            ones already registered in ``registry``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        registry: CollectorRegistry | None = None,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        exclude_paths: Iterable[str] = DEFAULT_EXCLUDED_PATHS,
        max_routes: int | None = None,
    ) -> None:
        self.app = app
        self.counter = RequestMetrics(
            registry=registry, buckets=buckets, exclude_paths=exclude_paths, max_routes=max_routes
        )
        self.registry = self.counter.registry
        self.metrics = self.counter.metrics
        self.route_names = self.counter.route_names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.counter.counts(scope):
            await self.app(scope, receive, send)
            return

        method = normalise_method(scope["method"])
        status = 500
        start = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        gauge = self.metrics.gauge(method)
        gauge.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            gauge.dec()
            self.metrics.observe(
                method, self.route_names(scope), status, time.perf_counter() - start
            )


class _WithoutCreated:
    """A view of a registry without the ``*_created`` samples (a quarter of all samples)."""

    def __init__(self, source: Collector) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        for metric in self.source.collect():
            samples = [sample for sample in metric.samples if not sample.name.endswith("_created")]
            if len(samples) != len(metric.samples):
                metric = copy.copy(metric)
                metric.samples = samples
            yield metric


def render_metrics(
    registry: CollectorRegistry | None = None,
    accept: str | None = None,
    *,
    created_series: bool = False,
    process_collectors: Sequence[Collector] = (),
) -> tuple[bytes, str]:
    """The exposition text of ``registry`` (or of all workers in multiprocess mode).

    Blocking (reads files in multiprocess mode): the endpoint runs it in a thread.

    Args:
        registry: the registry (default: the global one).
        accept: the request's ``Accept`` header (text or OpenMetrics).
        created_series: keep the ``*_created`` samples of counters and
            histograms (off by default: they are a quarter of all samples and
            rarely queried).
        process_collectors: collectors of this process's state (breaker
            state, readiness) to add to the workers' sum in multiprocess mode;
            in single-process mode they are expected in ``registry`` already.

    Returns:
        ``(body, content_type)``.
    """
    directory = multiprocess_dir()
    source: Collector
    if directory is not None and (registry is None or registry is REGISTRY):
        source = workers_registry(directory, process_collectors)
    else:
        source = registry if registry is not None else REGISTRY
    if not created_series:
        source = _WithoutCreated(source)
    encoder, content_type = choose_encoder(accept or "")
    return encoder(source), content_type


def metrics_endpoint_for(
    registry: CollectorRegistry | None = None,
    *,
    created_series: bool = False,
    process_collectors: Sequence[Collector] = (),
) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint serving ``registry`` (see :func:`metrics_endpoint`).

    In multiprocess mode only the global ``REGISTRY`` (or None) is summed
    across workers; another registry is served as this process sees it.
    ``created_series`` and ``process_collectors`` as in :func:`render_metrics`.
    """

    async def endpoint(request: Request) -> Response:
        body, content_type = await run_in_threadpool(
            partial(
                render_metrics,
                registry,
                request.headers.get("accept"),
                created_series=created_series,
                process_collectors=process_collectors,
            )
        )
        return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})

    endpoint.__name__ = "metrics_endpoint"
    endpoint.__qualname__ = "metrics_endpoint"
    return endpoint


async def metrics_endpoint(request: Request) -> Response:
    """The Starlette endpoint for ``/metrics``: ``Route("/metrics", metrics_endpoint)``.

    Serves the registry of the ``MetricsMiddleware`` in front of it (so two
    apps with their own registries each see their own series), else
    prometheus_client's global registry. With ``PROMETHEUS_MULTIPROC_DIR``
    set, the global registry is the sum of every worker's files (after
    removing dead workers' live gauges). Rendering runs in a thread so a
    scrape never blocks the event loop. To pin a registry use
    :func:`metrics_endpoint_for`.
    """
    registry = request.scope.get(REGISTRY_SCOPE_KEY)
    body, content_type = await run_in_threadpool(
        render_metrics, registry, request.headers.get("accept")
    )
    return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})
