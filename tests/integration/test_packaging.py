"""The built wheel installs into an empty venv with no extras and imports."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("scalekit-*.whl")
    return built


def test_wheel_ships_py_typed_and_no_tests(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "scalekit/py.typed" in names
    assert "scalekit/__init__.py" in names
    assert not [name for name in names if name.startswith(("tests/", "bench/", "examples/"))]
    scripts = {path.relative_to(ROOT).as_posix() for path in (ROOT / "scalekit").rglob("*.lua")}
    assert "scalekit/cache/lua/lookup.lua" in scripts
    assert scripts <= set(names)  # the Lua scripts the backends load at run time


@pytest.mark.timeout(600)
def test_install_without_extras_imports(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(wheel)], check=True, timeout=500
    )
    result = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util, scalekit, scalekit.events; "
            "print(scalekit.__version__, importlib.util.find_spec('redis') is None)",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.stdout.split() == ["0.1.0.dev0", "True"]
