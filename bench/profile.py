"""Profiles of one bench variant under load, kept in bench/profiles/.

Serves the variant as bench/run_all.py does (uvicorn pinned to CPU 0, its own
redis-server if it needs one), drives it with ``wrk -c50`` from CPU 1 and
samples the server with py-spy (the ``bench`` extra installs it; it needs
ptrace rights: root, or ``kernel.yama.ptrace_scope=0``):

- ``bench/profiles/<variant>.svg``: a flame graph;
- ``bench/profiles/<variant>.txt``: the functions with the largest inclusive
  and own shares of the samples, from the collapsed stacks.

    .venv/bin/python bench/profile.py starlette:obs [--seconds 10]
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import run_all
from _common import taskset_prefix

PROFILES = run_all.BENCH_DIR / "profiles"


def record(pid: int, seconds: float, output: Path, fmt: str) -> None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    subprocess.run(
        [py_spy, "record", "--pid", str(pid), "--rate", "1000", "--duration", f"{seconds:g}",
         "--format", fmt, "--output", str(output), "--nonblocking"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


_FRAME = re.compile(r"(.*) \((.*?):\d+\)$")


def _function(frame: str) -> str:
    found = _FRAME.match(frame)
    return f"{found.group(1)} ({found.group(2).rsplit('/', 1)[-1]})" if found else frame


def summary(collapsed: str, title: str, top: int = 40) -> str:
    """Inclusive and own shares of the samples per function, largest first."""
    total = 0
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_function(frame) for frame in stack.split(";")]
        for name in set(frames):
            inclusive[name] += count
        own[frames[-1]] += count
    lines = [title, f"{total} samples", "", "inclusive  function"]
    lines += [f"{v / total * 100:8.1f}%  {k}" for k, v in inclusive.most_common(top)]
    lines += ["", "own        function"]
    lines += [f"{v / total * 100:8.1f}%  {k}" for k, v in own.most_common(top)]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=sorted(run_all.BY_NAME))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    variant = run_all.BY_NAME[args.variant]
    wrk = shutil.which("wrk")
    if wrk is None:
        print("needs wrk (make system-deps)", file=sys.stderr)
        return 1
    sys.path.insert(0, str(run_all.ROOT / "tests"))
    PROFILES.mkdir(exist_ok=True)
    name = variant.name.replace(":", "-").replace("+", "-")
    workdir = Path(tempfile.mkdtemp(prefix="scalekit-profile-"))
    redis = run_all.start_redis(workdir) if variant.redis else None
    server = run_all.server_for(variant, redis.url if redis else None)
    try:
        run_all.proof_of(variant, server)
        load = subprocess.Popen(
            [*taskset_prefix(run_all.CLIENT_CPU), wrk, "-t1", f"-c{args.connections}",
             f"-d{2 * args.seconds + 4:g}s", server.url],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            collapsed = workdir / "collapsed.txt"
            record(server.proc.pid, args.seconds, collapsed, "raw")
            record(server.proc.pid, args.seconds, PROFILES / f"{name}.svg", "flamegraph")
        finally:
            load.terminate()
            load.wait()
        title = f"py-spy of {variant.name} ({variant.label}) under wrk -c{args.connections}"
        (PROFILES / f"{name}.txt").write_text(summary(collapsed.read_text(), title))
        print(f"wrote {PROFILES / name}.svg and .txt")
    finally:
        server.stop()
        if redis is not None:
            redis.client.close()
            redis.server.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
