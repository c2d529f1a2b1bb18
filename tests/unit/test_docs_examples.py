"""Every ```python block in docs/ runs.

Blocks run page by page, in order, in one namespace per page, so a later
block can use what an earlier one defined. A block that needs a server (or
would serve forever) is preceded by the line ``<!-- docs: no-run -->``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(r"(?P<marker><!-- docs: no-run -->\s*\n)?```python\n(?P<code>.*?)```", re.S)


def runnable_blocks(page: Path) -> list[tuple[int, str]]:
    text = page.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, match.start()) + 1, match.group("code"))
        for match in BLOCK.finditer(text)
        if not match.group("marker")
    ]


PAGES = sorted(page for page in DOCS.rglob("*.md") if runnable_blocks(page))


def test_docs_have_examples() -> None:
    assert PAGES, "no runnable python examples found in docs/"


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(DOCS)) for page in PAGES])
def test_examples_run(page: Path) -> None:
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for line, code in runnable_blocks(page):
        compiled = compile(code, f"{page.relative_to(DOCS.parent)}:{line}", "exec")
        exec(compiled, namespace)
