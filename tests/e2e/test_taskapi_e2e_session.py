"""The README's curl session, run as written, through nginx in front of three instances."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from taskapi_cluster import TaskApi
from taskapi_e2e import readme_session


def test_the_readme_session_through_nginx(taskapi: TaskApi, tmp_path: Path) -> None:
    script = tmp_path / "session.sh"
    script.write_text(
        readme_session().replace("API=http://127.0.0.1:8000", f"API={taskapi.url}", 1)
    )
    result = subprocess.run(
        ["bash", "-euo", "pipefail", str(script)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    decoder = json.JSONDecoder()
    out, documents = result.stdout, []
    while out.lstrip().startswith("{"):
        document, end = decoder.raw_decode(out.lstrip())
        documents.append(document)
        out = out.lstrip()[end:]
    registered, listed, updated = documents
    assert registered["username"] == "ada"
    [task] = listed["items"]
    assert updated["status"] == "done"
    assert updated["id"] == task["id"]
    assert out.strip() == "204"
    # nginx passed the session on to the instances.
    assert taskapi.upstreams_used(request="DELETE /api/v1/tasks/", status=204)
