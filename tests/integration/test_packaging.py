"""Release artifacts: ``python -m build`` makes an sdist and a wheel that install and run.

The wheel is built from the sdist (what ``python -m build`` does by default),
so a file the sdist forgets breaks the wheel too. Each artifact is installed
into its own fresh venv from the package index (the wheel with the ``all``
extra, the sdist with none) and runs the same smoke test: ``install()`` on a
Starlette app with in-process backends, requests through Starlette's
``TestClient``.
"""

from __future__ import annotations

import email.parser
import importlib.util
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

import scalekit

ROOT = Path(__file__).resolve().parents[2]
VERSION = scalekit.__version__

SMOKE = """
import sys

import scalekit
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from scalekit import Settings, install
from scalekit.cache import CacheRule
from scalekit.testing import ManualClock

assert scalekit.__file__.startswith(sys.prefix), scalekit.__file__  # the installed copy


async def hello(request):
    return JSONResponse({"hello": "world"})


app = Starlette(routes=[Route("/hello", hello)])
install(
    app,
    Settings(rate_limit="2/minute"),
    cache_rules=[CacheRule("/hello", ttl=30)],
    registry=CollectorRegistry(),
    clock=ManualClock(),
)
with TestClient(app) as client:
    first = client.get("/hello")
    assert first.status_code == 200 and first.json() == {"hello": "world"}, first.text
    assert first.headers["x-request-id"]
    assert client.get("/hello").headers["cache-status"] == "scalekit; hit"
    assert client.get("/hello").status_code == 429
    assert client.get("/health/ready").json()["status"] == "pass"
    assert "http_requests_total" in client.get("/metrics").text
print("smoke", scalekit.__version__)
"""

ALL_EXTRA_IMPORTS = """
import importlib
import redis, limits, pymysql, rich
for name in ("scalekit.db", "scalekit.cache", "scalekit.ratelimit", "scalekit.observability",
             "scalekit.testing", "scalekit.settings", "scalekit.errors", "scalekit.cli"):
    importlib.import_module(name)
from scalekit.cache import RedisCache
from scalekit.db import Pool
RedisCache.from_url("redis://127.0.0.1:1/0")  # built lazily: no connection yet
print("extras ok")
"""


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("build") is None or importlib.util.find_spec("hatchling") is None:
        pytest.fail("`build` and `hatchling` come with the dev extra: pip install -e '.[dev]'")
    out = tmp_path_factory.mktemp("dist")
    # No isolation: hatchling is in the dev extra, and an isolated build
    # would download it twice on every run.
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def sdist_of(dist: Path) -> Path:
    (built,) = dist.glob("*.tar.gz")
    return built


def wheel_of(dist: Path) -> Path:
    (built,) = dist.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def venvs(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two fresh venvs, filled at the same time (the time goes to the index, not the CPU).

    ``wheel``: the wheel with the ``all`` extra; ``sdist``: the sdist, no extra.
    Both get httpx for Starlette's ``TestClient``.
    """
    requirements = {
        "wheel": f"scalekit[all] @ {wheel_of(dist).as_uri()}",
        "sdist": str(sdist_of(dist)),
    }
    pythons: dict[str, Path] = {}
    installs: dict[str, subprocess.Popen[str]] = {}
    for name, requirement in requirements.items():
        path = tmp_path_factory.mktemp(f"venv-{name}")
        # Without pip: this interpreter's pip installs into it (--python), which
        # saves the ensurepip step.
        venv.EnvBuilder(with_pip=False).create(path)
        pythons[name] = path / "bin" / "python"
        pip = [sys.executable, "-m", "pip", "--python", str(pythons[name]), "install"]
        installs[name] = subprocess.Popen(
            [*pip, "--quiet", "--disable-pip-version-check", "--no-compile", requirement, "httpx"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        for name, install in installs.items():
            output, _ = install.communicate(timeout=300)
            assert install.returncode == 0, f"pip install of the {name}:\n{output}"
    finally:
        for install in installs.values():
            if install.poll() is None:
                install.kill()
                install.communicate()
    return pythons


def run(python: Path, code: str, cwd: Path) -> str:
    """Run ``code`` in the venv; its last line of output."""
    result = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines()[-1]


def test_artifacts_are_named_and_stamped_with_the_package_version(dist: Path) -> None:
    assert sdist_of(dist).name == f"scalekit-{VERSION}.tar.gz"
    assert wheel_of(dist).name == f"scalekit-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel_of(dist)) as wheel:
        metadata = wheel.read(f"scalekit-{VERSION}.dist-info/METADATA").decode()
    with tarfile.open(sdist_of(dist)) as sdist:
        member = sdist.extractfile(f"scalekit-{VERSION}/PKG-INFO")
        assert member is not None
        pkg_info = member.read().decode()
    for text in (metadata, pkg_info):
        headers = email.parser.Parser().parsestr(text, headersonly=True)
        assert headers["Name"] == "scalekit"
        assert headers["Version"] == VERSION
        assert headers["License-Expression"] == "MIT"
        assert {"redis", "mysql", "cli", "all"} <= set(headers.get_all("Provides-Extra") or [])


def test_wheel_ships_py_typed_lua_and_no_tests(dist: Path) -> None:
    names = zipfile.ZipFile(wheel_of(dist)).namelist()
    assert "scalekit/py.typed" in names
    assert "scalekit/__init__.py" in names
    assert not [name for name in names if name.startswith(("tests/", "bench/", "examples/"))]
    scripts = {path.relative_to(ROOT).as_posix() for path in (ROOT / "scalekit").rglob("*.lua")}
    assert "scalekit/cache/lua/lookup.lua" in scripts
    assert scripts <= set(names)  # the Lua scripts the backends load at run time
    assert f"scalekit-{VERSION}.dist-info/licenses/LICENSE" in names


def test_sdist_carries_what_a_rebuild_needs(dist: Path) -> None:
    with tarfile.open(sdist_of(dist)) as sdist:
        names = {name.removeprefix(f"scalekit-{VERSION}/") for name in sdist.getnames()}
    assert {"pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "scalekit/py.typed"} <= names
    sources = {path.relative_to(ROOT).as_posix() for path in (ROOT / "scalekit").rglob("*")}
    sources = {name for name in sources if name.endswith((".py", ".lua", ".typed"))}
    assert sources <= names, sorted(sources - names)
    assert not [name for name in names if "__pycache__" in name]


@pytest.mark.timeout(600)
def test_wheel_with_all_extras_installs_into_a_fresh_venv_and_serves(
    venvs: dict[str, Path], tmp_path: Path
) -> None:
    assert run(venvs["wheel"], SMOKE, tmp_path) == f"smoke {VERSION}"
    assert run(venvs["wheel"], ALL_EXTRA_IMPORTS, tmp_path) == "extras ok"


@pytest.mark.timeout(600)
def test_sdist_without_extras_installs_into_a_fresh_venv_and_serves(
    venvs: dict[str, Path], tmp_path: Path
) -> None:
    missing = "from importlib.util import find_spec as f; print(not f('redis'), not f('pymysql'))"
    assert run(venvs["sdist"], missing, tmp_path) == "True True"
    assert run(venvs["sdist"], SMOKE, tmp_path) == f"smoke {VERSION}"
