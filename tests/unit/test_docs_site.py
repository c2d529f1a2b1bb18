"""The docs site: every code block is checked, every public module has a reference page.

``test_docs_examples.py`` runs the ``python`` blocks; the blocks marked
illustrative (``<!-- docs: no-run -->``) must still be valid Python, and
the ``json`` and ``yaml`` blocks must parse, so no example on the site is
broken code.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import re
from pathlib import Path

import pytest
import yaml

import scalekit

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
FENCE = re.compile(
    r"^(?P<indent> *)```(?P<language>[a-z]*)\n(?P<code>.*?)^(?P=indent)```", re.S | re.M
)
PAGES = sorted(DOCS.rglob("*.md"))


def blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match.group("language") == language:
                line = text.count("\n", 0, match.start()) + 1
                found.append((f"{page.relative_to(DOCS)}:{line}", match.group("code")))
    return found


def ids(found: list[tuple[str, str]]) -> list[str]:
    return [where for where, _ in found]


PYTHON = blocks("python")
JSON = blocks("json")
YAML = blocks("yaml")


@pytest.mark.parametrize(("where", "code"), PYTHON, ids=ids(PYTHON))
def test_every_python_block_is_valid_python(where: str, code: str) -> None:
    """Illustrative blocks are not run, but a reader copies them: they must parse."""
    ast.parse(code, filename=where)


@pytest.mark.parametrize(("where", "code"), JSON, ids=ids(JSON))
def test_every_json_block_parses(where: str, code: str) -> None:
    json.loads(code)


@pytest.mark.parametrize(("where", "code"), YAML, ids=ids(YAML))
def test_every_yaml_block_parses(where: str, code: str) -> None:
    yaml.safe_load(code)


def public_modules() -> list[str]:
    """``scalekit.<name>`` for every top-level module and package without a leading ``_``."""
    return sorted(
        f"scalekit.{module.name}"
        for module in pkgutil.iter_modules(scalekit.__path__)
        if not module.name.startswith("_")
    )


def test_every_public_module_has_an_api_reference() -> None:
    documented = set()
    for page in (DOCS / "reference").glob("*.md"):
        documented |= set(re.findall(r"^::: (scalekit[\w.]*)", page.read_text(), re.M))
    modules = public_modules()
    assert "scalekit.testing" in modules
    assert "scalekit.errors" in modules
    missing = [module for module in modules if module not in documented]
    assert not missing, f"no `::: module` in docs/reference/ for {missing}"


def test_every_page_and_reference_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    in_nav = set(re.findall(r":\s*([\w/.-]+\.md)\s*$", nav, re.M))
    pages = {page.relative_to(DOCS).as_posix() for page in PAGES}
    assert not pages - in_nav, f"pages missing from mkdocs.yml nav: {sorted(pages - in_nav)}"
    assert not in_nav - pages, f"nav entries without a page: {sorted(in_nav - pages)}"


def test_migrating_pages_show_runnable_after_code() -> None:
    """Each migration page: the peer's code illustrative, scalekit's run by the docs test."""
    for page in sorted((DOCS / "migrating").glob("*.md")):
        text = page.read_text(encoding="utf-8")
        fences = list(re.finditer(r"(<!-- docs: no-run -->\s*\n)?```python\n", text))
        assert fences, page
        assert fences[0].group(1), f"{page.name}: the 'before' block should be marked no-run"
        assert any(not fence.group(1) for fence in fences), f"{page.name}: no block is run"


def test_readme_links_reach_files_and_starts_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = readme.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split()[:2] for line in first_block] == [["make", "demo"], ["make", "test"]]
    targets = re.findall(r"\]\(((?!https?:)[^)#]+)(?:#[^)]*)?\)", readme)
    assert "docs/deploying.md" in targets
    missing = [target for target in targets if not (ROOT / target).exists()]
    assert not missing, f"README links to missing files: {missing}"
