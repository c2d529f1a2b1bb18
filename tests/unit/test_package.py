"""The package surface: version, extras, light core import, sorted __all__."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pytest

import scalekit
from scalekit._extras import MissingExtraError, require

OPTIONAL = ("redis", "limits", "pymysql", "dbutils", "rich", "fakeredis")


def run_without_extras(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where the optional dependencies cannot import."""
    blocker = f"import sys\nfor name in {OPTIONAL!r}:\n    sys.modules[name] = None\n"
    return subprocess.run(
        [sys.executable, "-c", blocker + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_version() -> None:
    assert scalekit.__version__ == "0.1.0"


def test_core_imports_without_any_extra() -> None:
    result = run_without_extras(
        """
        import scalekit, scalekit.events, scalekit._net, scalekit._breaker, scalekit._clock
        import scalekit._redis  # the module imports; building a client needs the extra
        optional = ("redis", "pymysql", "dbutils", "limits")
        loaded = [name for name in optional if sys.modules.get(name)]
        print("loaded:", loaded)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "loaded: []" in result.stdout


def test_core_import_stays_light() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import sys, scalekit; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    for heavy in ("redis", "pymysql", "dbutils", "limits", "prometheus_client", "starlette"):
        assert f"'{heavy}'" not in result.stdout, f"import scalekit pulled in {heavy}"


def test_redis_client_without_the_extra_names_the_extra() -> None:
    result = run_without_extras(
        """
        from scalekit._redis import from_url
        try:
            from_url("redis://127.0.0.1:6379/0")
        except ImportError as exc:
            print("error:", exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert 'pip install "scalekit[redis]"' in result.stdout


def test_require_raises_a_typed_import_error() -> None:
    with pytest.raises(MissingExtraError, match=r'pip install "scalekit\[thing\]"') as caught:
        require("no_such_module_for_scalekit", "thing")
    assert isinstance(caught.value, ImportError)
    assert require("json", "none").__name__ == "json"


PUBLIC_MODULES = ["scalekit", "scalekit.events"]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_sorted_and_complete(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported), f"{name}.__all__ is not sorted"
    for item in exported:
        assert hasattr(module, item), f"{name}.__all__ names missing {item}"
    public = {
        attribute
        for attribute, value in vars(module).items()
        if not attribute.startswith("_")
        and getattr(value, "__module__", name) == name
        and (isinstance(value, type) or callable(value))
    }
    assert public <= set(exported), f"{name} defines public names missing from __all__"
