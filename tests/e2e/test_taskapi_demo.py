"""``make demo`` and the README's curl session, run exactly as printed against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import free_port, require_binary, wait_until
from taskapi_e2e import readme_session

ROOT = Path(__file__).resolve().parents[2]


class Demo:
    def __init__(self, process: subprocess.Popen[str], port: int, output: Path) -> None:
        self.process = process
        self.port = port
        self.output = output

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def printed(self) -> str:
        return self.output.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    require_binary("make", "make")
    require_binary("curl", "curl")
    workdir = tmp_path_factory.mktemp("demo")
    output = workdir / "demo.out"
    port = free_port()
    env = {**os.environ, "TASKAPI_DATA_DIR": str(workdir / "data")}
    for name in list(env):
        if name.startswith(("SCALEKIT_", "TASKAPI_JWT")):
            env.pop(name)
    # Exactly `make demo`, with this interpreter and a free port; -o: the venv
    # is already installed, do not reinstall it.
    argv = ["make", "-s", "-o", ".venv/.installed-stamp", "demo", f"PORT={port}",
            f"PY={sys.executable}"]  # fmt: skip
    with output.open("w") as out:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,  # its own process group: make and the server stop together
        )  # fmt: skip
    running = Demo(process, port, output)
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"make demo exited:\n{running.printed()}")
            try:
                return httpx.get(f"{running.url}/health/live", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=60, what="make demo to serve /health/live")
        yield running
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_make_demo_prints_the_url_the_docs_and_the_first_command(demo: Demo) -> None:
    printed = demo.printed()
    assert f"on {demo.url} (SQLite files in" in printed
    assert f"API docs: {demo.url}/docs" in printed
    session = readme_session().splitlines()
    # What it prints is the README's session, with this server's URL.
    assert f"    API={demo.url}" in printed
    assert session[0] == "API=http://127.0.0.1:8000"
    for line in session[1:3]:
        assert "\n    " + line + "\n" in printed
    assert httpx.get(f"{demo.url}/docs").status_code == 200
    assert "no TASKAPI_JWT_SECRET" in printed  # development: a random secret, and a warning


def test_the_readme_curl_session_works_as_printed(demo: Demo, tmp_path: Path) -> None:
    session = readme_session()
    script = tmp_path / "session.sh"
    # The one change: the URL line points at this test's port instead of 8000.
    script.write_text(session.replace("API=http://127.0.0.1:8000", f"API={demo.url}", 1))
    result = subprocess.run(
        ["bash", "-euo", "pipefail", str(script)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    # Each command prints one JSON document (or the status code), as the README shows.
    decoder = json.JSONDecoder()
    out, documents = result.stdout, []
    while out.strip():
        out = out.lstrip()
        if out[0] != "{":
            break
        document, end = decoder.raw_decode(out)
        documents.append(document)
        out = out[end:]
    registered, listed, updated = documents
    assert registered["username"] == "ada"
    [task] = listed["items"]
    assert (task["title"], task["status"]) == ("Write the report", "todo")
    assert (updated["id"], updated["status"]) == (task["id"], "done")
    assert out.strip() == "204"
