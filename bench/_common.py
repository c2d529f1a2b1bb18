"""Shared harness of the HTTP benches (bench/run_all.py and the per-component scripts).

Each variant is served by ``uvicorn --loop uvloop --http httptools --workers
1`` on a free 127.0.0.1 port (:class:`UvicornServer`), optionally pinned to
one CPU with ``taskset``, and driven by ``wrk`` (:func:`run_wrk`, pinned to
another CPU) in interleaved rounds (:func:`interleaved_rounds`); medians
(:func:`medians`) go into fixed-width tables (:func:`print_table`). The
scripts run as ``.venv/bin/python bench/x.py``, so this directory is on
``sys.path`` and they import it as ``_common``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, TypeVar

BENCH_DIR = Path(__file__).resolve().parent
UVICORN = "uvicorn --loop uvloop --http httptools --workers 1"
R = TypeVar("R")


def taskset_prefix(cpu: int | None) -> list[str]:
    """``["taskset", "-c", cpu]`` when pinning is asked for and possible, else ``[]``."""
    if cpu is None or shutil.which("taskset") is None or (os.cpu_count() or 1) <= cpu:
        return []
    return ["taskset", "-c", str(cpu)]


def pin(pid: int, cpu: int | None) -> None:
    """Pin a running process to ``cpu`` (no-op without taskset or that CPU)."""
    prefix = taskset_prefix(cpu)
    if prefix:
        subprocess.run(
            ["taskset", "-pc", str(cpu), str(pid)], check=True, stdout=subprocess.DEVNULL
        )


# -- processes ---------------------------------------------------------------
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    """Wait until 127.0.0.1:``port`` accepts connections; exit if ``proc`` dies first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{what} did not start") from None
            time.sleep(0.1)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s; reaps the process."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (from ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class UvicornServer:
    """``uvicorn <app> --factory`` for one variant, started on a free port.

    ``app`` is ``"module:factory"`` in this directory; the variant is passed as
    ``BENCH_VARIANT`` (plus ``env``), with ``PROMETHEUS_MULTIPROC_DIR`` removed.
    With ``log_prefix`` the server's output goes to a temporary file
    (:meth:`log_text`, deleted by :meth:`stop`), otherwise to /dev/null.
    Usable as a context manager; :meth:`stop` is idempotent.
    """

    def __init__(
        self,
        app: str,
        variant: str,
        path: str,
        env: Mapping[str, str] | None = None,
        log_prefix: str | None = None,
        cpu: int | None = None,
    ) -> None:
        self.variant = variant
        self.path = path
        self.port = free_port()
        full_env = dict(os.environ, BENCH_VARIANT=variant, **(env or {}))
        full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.log: Path | None = None
        if log_prefix is not None:
            self.log = Path(tempfile.mkstemp(prefix=f"{log_prefix}-{variant}-", suffix=".log")[1])
        output = self.log.open("w") if self.log else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [
                    *taskset_prefix(cpu),
                    sys.executable, "-m", "uvicorn", app, "--factory",
                    "--app-dir", str(BENCH_DIR),
                    "--host", "127.0.0.1", "--port", str(self.port),
                    "--loop", "uvloop", "--http", "httptools", "--workers", "1",
                    "--no-access-log", "--log-level", "warning",
                ],
                env=full_env, stdout=output, stderr=output,
            )  # fmt: skip
        finally:
            if not isinstance(output, int):
                output.close()
        try:
            wait_port(self.port, self.proc, f"{variant}: uvicorn")
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def log_text(self) -> str:
        """What the server has written so far ("" without ``log_prefix``)."""
        return self.log.read_text(errors="replace") if self.log else ""

    def stop(self) -> None:
        if self.proc.returncode is None:
            stop_process(self.proc)
        if self.log is not None:
            self.log.unlink(missing_ok=True)

    def __enter__(self) -> UvicornServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


# -- wrk ---------------------------------------------------------------------
@dataclass(frozen=True)
class WrkResult:
    """One wrk run: totals, throughput, p50, p99 and (with ``cpu_pid``) server CPU."""

    requests: int
    req_per_s: float
    p99_ms: float
    cpu_us_per_request: float | None = None
    p50_ms: float = 0.0


_P99_SCALE = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _percentile_ms(output: str, percent: int) -> float:
    found = re.search(rf"{percent}%\s+([\d.]+)(us|ms|s)", output)
    assert found is not None, output
    return float(found.group(1)) * _P99_SCALE[found.group(2)]


def run_wrk(
    url: str,
    connections: int,
    duration: float,
    threads: int = 1,
    *,
    wrk: str = "wrk",
    label: str | None = None,
    cpu_pid: int | None = None,
    cpu: int | None = None,
) -> WrkResult:
    """``wrk -t<threads> -c<connections> -d<duration>s --latency url``, parsed.

    Exits (naming ``label``) on any non-2xx/3xx response. With ``cpu_pid``,
    also measures that process's CPU microseconds per request over the run.
    With ``cpu``, wrk runs pinned to that CPU.
    """
    cpu_before = cpu_seconds(cpu_pid) if cpu_pid is not None else 0.0
    output = subprocess.run(
        [*taskset_prefix(cpu), wrk, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s",
         "--latency", url],
        capture_output=True, text=True, check=True, timeout=duration + 60,
    ).stdout  # fmt: skip
    cpu_used = cpu_seconds(cpu_pid) - cpu_before if cpu_pid is not None else None
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if errors:
        raise SystemExit(f"{label or url}: {errors.group(1)} error responses")
    return WrkResult(
        requests=requests,
        req_per_s=rps,
        p99_ms=_percentile_ms(output, 99),
        cpu_us_per_request=None if cpu_used is None else cpu_used / max(requests, 1) * 1e6,
        p50_ms=_percentile_ms(output, 50),
    )


# -- options, rounds, medians, tables -----------------------------------------
def bench_parser(doc: str) -> argparse.ArgumentParser:
    """The options every HTTP bench has: --quick, --duration, --rounds, --connections."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round")
    parser.add_argument("--duration", type=float, default=None, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--connections", type=int, default=50)
    return parser


def duration_and_rounds(args: argparse.Namespace) -> tuple[float, int]:
    """Seconds per wrk run and rounds: 3 s x 1 with --quick, else 10 s x 3."""
    duration = args.duration or (3.0 if args.quick else 10.0)
    rounds = args.rounds or (1 if args.quick else 3)
    return duration, rounds


def split_variants(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [name.strip() for name in text.split(",") if name.strip()]


def round_line(result: Mapping[str, float]) -> str:
    """``"<req/s> req/s p99 <ms> ms"`` of one run (``rps`` and ``p99_ms`` keys)."""
    return f"{result['rps']:9.0f} req/s p99 {result['p99_ms']:7.2f} ms"


def interleaved_rounds(
    variants: Sequence[str],
    rounds: int,
    measure: Callable[[str], R],
    describe: Callable[[R], str],
) -> dict[str, list[R]]:
    """``rounds`` x every variant in turn; prints ``round N <variant> <describe>``."""
    results: dict[str, list[R]] = {variant: [] for variant in variants}
    for round_number in range(rounds):
        for variant in variants:
            result = measure(variant)
            results[variant].append(result)
            print(f"round {round_number + 1} {variant:15} {describe(result)}", flush=True)
    return results


def medians(results: Mapping[str, Sequence[Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """Per variant, the median of each key over its rounds."""
    return {
        variant: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        for variant, runs in results.items()
    }


def print_banner(connections: int, duration: float, path: str, rounds: int, note: str = "") -> None:
    """The line that says how the table below was measured."""
    print(
        f"\nwrk -t1 -c{connections} -d{duration:g}s {path}, {rounds} interleaved round(s), "
        f"{UVICORN}{note} (medians)"
    )


class Column(NamedTuple):
    """A table column: title, width and format spec ("" = left-aligned text)."""

    title: str
    width: int
    spec: str = ""


def print_table(columns: Sequence[Column], rows: Iterable[Sequence[str | float | None]]) -> None:
    """Space-separated fixed-width rows; ``None`` prints as a right-aligned ``-``."""
    print(
        " ".join(f"{c.title:{c.width}}" if not c.spec else f"{c.title:>{c.width}}" for c in columns)
    )
    for row in rows:
        print(
            " ".join(
                f"{'-':>{c.width}}" if value is None else f"{value:{c.width}{c.spec}}"
                for c, value in zip(columns, row, strict=True)
            )
        )
