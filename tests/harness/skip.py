"""Skip (locally) or fail (under ``CI=true``) when a server binary is missing."""

from __future__ import annotations

import shutil

import pytest


def require_binary(name: str, package: str) -> str:
    """Return the full path of ``name``, or skip the test asking for ``package``.

    Under ``CI=true`` the skip is turned into a failure by the
    ``pytest_runtest_makereport`` hook in ``tests/conftest.py``.
    """
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if path is None:
        pytest.skip(f"{name} not found: apt-get install {package}")
    return path
