"""docs/first-service.md: the app on the page, replayed in process, answers as the transcript says.

The first transcript (one instance, in-memory cache and limits, SQLite) is
checked request by request: the status line and ``Cache-Status`` of every
``curl -si`` in it, in order.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

PAGE = Path(__file__).resolve().parents[2] / "docs" / "first-service.md"

DRIVER = textwrap.dedent(
    """
    import asyncio, httpx
    import notes

    async def main():
        app = notes.app
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
                answers = [await c.get("/notes"), await c.get("/notes")]
                for text in ("one", "two", "three", "four"):
                    answers.append(await c.post("/notes", params={"text": text}))
                answers.append(await c.get("/notes"))
                for answer in answers:
                    print(answer.status_code, answer.headers.get("cache-status", "-"))
                print("BODY", answers[-1].text)

    asyncio.run(main())
    """
)


def transcript_answers(text: str) -> list[str]:
    """``status cache-status`` of each ``curl -si`` answer in a transcript."""
    answers: list[str] = []
    for block in re.split(r"^\$ ", text, flags=re.M)[1:]:
        if "curl -si" not in block.splitlines()[0]:
            continue
        status = re.search(r"^HTTP/1\.1 (\d+)", block, re.M)
        cache = re.search(r"^cache-status: (.*)$", block, re.M)
        assert status is not None, block
        answers.append(f"{status.group(1)} {cache.group(1) if cache else '-'}")
    return answers


def test_the_first_transcript_is_what_the_app_on_the_page_answers(tmp_path: Path) -> None:
    page = PAGE.read_text()
    (app,) = re.findall(r"<!-- docs: no-run -->\n```python\n(.*?)```", page, re.S)
    first_transcript = re.findall(r"```text\n(.*?)```", page, re.S)[0]
    (tmp_path / "notes.py").write_text(app)
    (tmp_path / "driver.py").write_text(DRIVER)
    result = subprocess.run(
        [sys.executable, "driver.py"],
        cwd=tmp_path,
        env={"SCALEKIT_DATABASE_URL": f"sqlite:///{tmp_path / 'notes.db'}", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    body = [line for line in lines if line.startswith("BODY ")]
    got = [line for line in lines if re.match(r"\d{3} ", line)]
    expected = transcript_answers(first_transcript)
    assert len(expected) == 7
    assert got == expected
    assert body == ['BODY ["one","two","three"]']
    assert '["one","two","three"]' in first_transcript
