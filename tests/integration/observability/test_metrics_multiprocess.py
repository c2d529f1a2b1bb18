"""Multiprocess metrics under real ``uvicorn --workers 2`` with PROMETHEUS_MULTIPROC_DIR.

One scrape sums every worker; a SIGKILLed worker (which uvicorn's supervisor
replaces) leaves no duplicate series, counts never go down, and its live
in-progress gauge file is removed at the next scrape.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from harness import ServerProcess, require_binary, wait_until
from prometheus_client.parser import text_string_to_metric_families

APP = textwrap.dedent(
    """
    import asyncio
    import os
    from pathlib import Path

    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from scalekit.observability import (
        MetricsMiddleware, RequestContextMiddleware, metrics_endpoint,
    )


    async def pid(request):
        return PlainTextResponse(str(os.getpid()))


    async def slow(request):
        Path(os.environ["SLOW_MARKER"]).write_text(str(os.getpid()))
        await asyncio.sleep(3600)


    app = Starlette(
        routes=[
            Route("/pid/{n}", pid),
            Route("/slow", slow),
            Route("/metrics", metrics_endpoint),
        ],
        middleware=[
            Middleware(RequestContextMiddleware, access_log=False),
            Middleware(MetricsMiddleware),
        ],
    )
    """
)


class UvicornWorkers(ServerProcess):
    """``uvicorn --workers 2`` serving the app above, in its own temp dir."""

    name = "uvicorn"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        (workdir / "obs_app.py").write_text(APP)
        self.metrics_dir = workdir / "prometheus"
        self.metrics_dir.mkdir()
        self.slow_marker = workdir / "slow.pid"

    def argv(self) -> Sequence[str]:
        return [
            sys.executable, "-m", "uvicorn", "obs_app:app",
            "--app-dir", str(self.workdir),
            "--host", self.host, "--port", str(self.port),
            "--workers", "2", "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip

    def start(self) -> None:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        os.environ["SLOW_MARKER"] = str(self.slow_marker)
        try:
            super().start()
        finally:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]
            del os.environ["SLOW_MARKER"]

    def heal(self) -> None:
        """Nothing to heal: each test starts (and its fixture stops) its own workers."""

    def probe(self) -> bool:
        return httpx.get(f"{self.url}/metrics", timeout=1.0).status_code == 200  # not counted

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def worker_pids(self) -> set[int]:
        """The supervisor's live children, from /proc."""
        supervisor = self.pid
        found: set[int] = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                fields = stat.rpartition(")")[2].split()
                if int(fields[1]) == supervisor and fields[0] != "Z":
                    found.add(int(entry.name))
        # multiprocessing's resource tracker is a child too; workers answer requests.
        return found


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[UvicornWorkers]:
    require_binary(sys.executable, "python3")
    server = UvicornWorkers(tmp_path / "uvicorn")
    children: set[int] = set()
    try:
        server.start_on_free_port()
        children |= server.worker_pids()
        yield server
    finally:
        children |= server.worker_pids()
        server.stop()
        for pid in children:  # a worker the supervisor failed to stop
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def scrape(server: UvicornWorkers) -> str:
    response = httpx.get(f"{server.url}/metrics", timeout=10.0)
    assert response.status_code == 200
    return response.text


def total(text: str, route: str = "/pid/{n}") -> float:
    count = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "http_requests_total" and sample.labels["route"] == route:
                count += sample.value
    return count


def in_progress(text: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "http_requests_in_progress"
    )


def assert_no_duplicate_series(text: str) -> None:
    series = Counter(
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    )
    duplicates = [key for key, seen in series.items() if seen > 1]
    assert not duplicates, duplicates


def promtool_accepts(text: str) -> None:
    promtool = require_binary("promtool", "prometheus")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def spread(server: UvicornWorkers, count: int) -> Counter[int]:
    """``count`` GETs on new connections from 8 threads; answers counted by worker PID.

    A request that fails (none should) is left out of the count, so the
    totals compared with a scrape are exactly the requests that were served.
    """

    def one(n: int) -> int | None:
        try:
            response = httpx.get(
                f"{server.url}/pid/{n}", headers={"Connection": "close"}, timeout=10
            )
        except httpx.HTTPError:
            return None
        return int(response.text) if response.status_code == 200 else None

    with ThreadPoolExecutor(8) as pool:
        return Counter(pid for pid in pool.map(one, range(count)) if pid is not None)


def hold_slow_request(server: UvicornWorkers) -> None:
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(f"{server.url}/slow", timeout=60)


def test_one_scrape_sums_both_workers_and_survives_a_killed_worker(
    workers: UvicornWorkers,
) -> None:
    served: Counter[int] = Counter()
    while len(served) < 2 and sum(served.values()) < 4000:
        served += spread(workers, 200)
    assert len(served) == 2, f"requests never reached both workers: {dict(served)}"
    before_kill = sum(served.values())

    text = scrape(workers)
    assert total(text) == before_kill
    assert_no_duplicate_series(text)
    promtool_accepts(text)

    # A request stuck in one worker counts as in progress...
    holder = threading.Thread(target=hold_slow_request, args=(workers,), daemon=True)
    holder.start()
    victim = int(
        wait_until(
            lambda: workers.slow_marker.exists() and workers.slow_marker.read_text(),
            timeout=20,
            what="the slow request to start",
        )
    )
    assert in_progress(scrape(workers)) == 1
    assert (workers.metrics_dir / f"gauge_livesum_{victim}.db").exists()

    # ...until its worker is SIGKILLed and the supervisor replaces it.
    os.kill(victim, signal.SIGKILL)
    holder.join(timeout=30)
    original = set(served)

    def replaced() -> set[int] | None:
        batch = spread(workers, 16)
        served.update(batch)
        return (set(batch) - original) or None

    replacement = wait_until(replaced, timeout=30, what="uvicorn to replace the killed worker")
    assert victim not in replacement

    after = scrape(workers)
    assert not (workers.metrics_dir / f"gauge_livesum_{victim}.db").exists()
    assert in_progress(after) == 0
    assert_no_duplicate_series(after)
    promtool_accepts(after)
    # The dead worker's counts are kept: the total is monotonic and exact.
    assert total(after) == sum(served.values()) >= before_kill
