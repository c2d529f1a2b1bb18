"""Metrics of several worker processes: ``PROMETHEUS_MULTIPROC_DIR``.

With ``PROMETHEUS_MULTIPROC_DIR`` set (several ``uvicorn --workers`` or
gunicorn workers), values live in per-process files that one scrape sums;
files of workers that died are cleaned at scrape time, because uvicorn has no
child-exit hook.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

__all__ = ["cleanup_dead_workers", "multiprocess_dir", "workers_registry"]


def multiprocess_dir() -> str | None:
    """The ``PROMETHEUS_MULTIPROC_DIR`` in force, or None in single-process mode."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed worker its supervisor has not reaped yet is a zombie
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def cleanup_dead_workers(path: str | None = None) -> list[int]:
    """Remove the live-gauge files of worker processes that no longer exist.

    Counters and histograms of dead workers are kept, so totals never go
    down; their live gauges (``http_requests_in_progress``) are removed so a
    killed worker's in-flight requests stop counting. Called at every scrape
    in multiprocess mode.

    Returns:
        The PIDs whose files were removed.
    """
    directory = path or multiprocess_dir()
    if directory is None:
        return []
    pids: set[int] = set()
    for file in Path(directory).glob("gauge_live*_*.db"):
        pid_text = file.stem.rpartition("_")[2]
        if pid_text.isdigit():
            pids.add(int(pid_text))
    dead = sorted(pid for pid in pids if pid != os.getpid() and not _pid_alive(pid))
    for pid in dead:
        mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
    return dead


def workers_registry(
    directory: str, process_collectors: Sequence[Collector] = ()
) -> CollectorRegistry:
    """Every worker's series summed from ``directory``, plus ``process_collectors``.

    Dead workers' live gauges are removed first (:func:`cleanup_dead_workers`).
    Blocking: it reads the workers' files.
    """
    cleanup_dead_workers(directory)
    summed = CollectorRegistry()
    MultiProcessCollector(summed, path=directory)  # type: ignore[no-untyped-call]
    for collector in process_collectors:
        summed.register(collector)
    return summed
