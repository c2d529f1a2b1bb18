"""Every guide that builds an app shows it on FastAPI before Starlette (issue 12, point 13)."""

from __future__ import annotations

from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
STARLETTE_APP = ("from starlette.applications import Starlette", "Starlette(")
FASTAPI_APP = ("from fastapi import", "FastAPI(", "Depends(limit(")


def first(text: str, needles: tuple[str, ...]) -> int | None:
    found = [text.find(needle) for needle in needles if needle in text]
    return min(found) if found else None


GUIDES = sorted(
    page
    for page in DOCS.glob("*.md")
    if first(page.read_text(encoding="utf-8"), STARLETTE_APP) is not None
)


def test_the_guides_that_build_apps_are_found() -> None:
    names = {page.name for page in GUIDES}
    assert {"cache.md", "ratelimit.md", "metrics.md", "logging.md", "stack.md"} <= names


@pytest.mark.parametrize("page", GUIDES, ids=[page.name for page in GUIDES])
def test_fastapi_comes_first(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    starlette, fastapi = first(text, STARLETTE_APP), first(text, FASTAPI_APP)
    assert fastapi is not None, f"{page.name} builds a Starlette app but never a FastAPI one"
    assert starlette is not None
    assert fastapi < starlette, f"{page.name} shows Starlette before FastAPI"
