"""``tools/system-deps.sh``: what ``make test`` does about missing Debian packages.

The script is driven through fake ``dpkg-query``, ``id``, ``sudo`` and
``apt-get`` commands on ``PATH``, so the tests never install anything.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "system-deps.sh"


def _fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _run(
    tmp_path: Path, *, installed: bool, uid: int, sudo_ok: bool
) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt.log"
    status = "install ok installed" if installed else "unknown ok not-installed"
    _fake(bin_dir, "dpkg-query", f"printf '%s' '{status}'")
    _fake(bin_dir, "id", f"echo {uid}")
    _fake(
        bin_dir, "sudo", f'[[ "$1" == -n ]] || exit 9; shift; {"" if sudo_ok else "exit 1;"} "$@"'
    )
    _fake(bin_dir, "apt-get", f'echo "apt-get $*" >> {log}')
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    return subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, check=False
    )


def test_nothing_missing_does_nothing(tmp_path: Path) -> None:
    result = _run(tmp_path, installed=True, uid=1000, sudo_ok=False)
    assert result.returncode == 0
    assert not (tmp_path / "apt.log").exists()


@pytest.mark.parametrize(("uid", "sudo_ok"), [(0, False), (1000, True)])
def test_missing_packages_are_installed_as_root_or_through_sudo(
    tmp_path: Path, uid: int, sudo_ok: bool
) -> None:
    result = _run(tmp_path, installed=False, uid=uid, sudo_ok=sudo_ok)
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert calls[0].startswith("apt-get update")
    assert calls[1].startswith("apt-get install")
    # curl: the README curl session the e2e tests run.
    for package in (
        "redis-server",
        "redis-sentinel",
        "mariadb-server",
        "nginx",
        "prometheus",
        "curl",
    ):
        assert package in calls[1]


def test_without_root_or_sudo_it_stops_and_prints_the_command(tmp_path: Path) -> None:
    result = _run(tmp_path, installed=False, uid=1000, sudo_ok=False)
    assert result.returncode == 1
    assert not (tmp_path / "apt.log").exists()
    assert "sudo apt-get update && sudo apt-get install -y" in result.stderr
    assert "mariadb-server" in result.stderr
