"""A real nginx running the shipped ``examples/deploy/nginx.conf``, rendered for the tests.

Only the lines the config marks ``# templated`` change: the worker ``user``,
``pid``, ``error_log``, the ``*_temp_path`` lines, ``access_log``, the
upstream ``server`` lines (one per instance, in order) and ``listen``. Each
keeps everything but its first argument; a config whose templated lines
differ from what the renderer expects is an error, so the tests never run
a config other than the shipped one without noticing.
"""

from __future__ import annotations

import os
import pwd
import re
import socket
from collections.abc import Sequence
from pathlib import Path

from .process import ServerProcess

SHIPPED_CONF = Path(__file__).resolve().parents[2] / "examples" / "deploy" / "nginx.conf"

_TEMPLATED = re.compile(r"^(?P<indent>\s*)(?P<directive>\S+)\s+(?P<args>[^;]*);(?P<rest>.*)$")
_TEMP_PATHS = ("client_body_temp_path", "proxy_temp_path", "fastcgi_temp_path",
               "uwsgi_temp_path", "scgi_temp_path")  # fmt: skip


class TemplateMismatch(ValueError):
    """The shipped config's templated lines are not the ones the renderer knows."""


def render_nginx_conf(
    text: str, *, listen_port: int, upstreams: Sequence[str], workdir: Path
) -> str:
    """The shipped config with the test's port, upstream addresses and paths.

    Raises:
        TemplateMismatch: a templated directive is missing, repeated or unknown.
    """
    values: dict[str, list[str]] = {
        "pid": [str(workdir / "nginx.pid")],
        "error_log": [str(workdir / "error.log")],
        "access_log": [str(workdir / "access.log")],
        "listen": [f"127.0.0.1:{listen_port}"],
        "server": list(upstreams),
        **{name: [str(workdir / name)] for name in _TEMP_PATHS},
    }
    # As root, nginx's workers would run as the config's user (nobody if
    # none), which cannot write our temp dirs; as anyone else `user` is ignored.
    values["user"] = [pwd.getpwuid(os.geteuid()).pw_name] if os.geteuid() == 0 else [""]
    lines = []
    for line in text.splitlines():
        if "# templated" not in line or line.lstrip().startswith("#"):
            lines.append(line)
            continue
        match = _TEMPLATED.match(line)
        if match is None or match["directive"] not in values:
            raise TemplateMismatch(f"unknown templated line in nginx.conf: {line!r}")
        remaining = values[match["directive"]]
        if not remaining:
            raise TemplateMismatch(f"one {match['directive']!r} line too many: {line!r}")
        value = remaining.pop(0)
        if match["directive"] == "user":
            args = value
        else:
            args = " ".join([value, *match["args"].split()[1:]])
        if args:
            lines.append(f"{match['indent']}{match['directive']} {args};{match['rest']}")
    missing = {name: left for name, left in values.items() if left}
    if missing:
        raise TemplateMismatch(f"nginx.conf lacks templated lines for {missing}")
    for name in _TEMP_PATHS:
        (workdir / name).mkdir(parents=True, exist_ok=True)
    return "\n".join(lines) + "\n"


class NginxServer(ServerProcess):
    """nginx in the foreground (``daemon off``) with the rendered shipped config."""

    name = "nginx"

    def __init__(
        self,
        workdir: Path,
        upstreams: Sequence[str],
        *,
        binary: str = "nginx",
        conf: Path = SHIPPED_CONF,
    ) -> None:
        super().__init__(workdir)
        self.binary = binary
        self.upstreams = list(upstreams)
        self.shipped = conf
        self.conf_path = workdir / "nginx.conf"
        self.log_path = workdir / "error.log"

    def argv(self) -> Sequence[str]:
        self.conf_path.write_text(
            render_nginx_conf(
                self.shipped.read_text(encoding="utf-8"),
                listen_port=self.port,
                upstreams=self.upstreams,
                workdir=self.workdir,
            )
        )
        return [self.binary, "-p", str(self.workdir), "-c", str(self.conf_path),
                "-e", str(self.log_path), "-g", "daemon off;"]  # fmt: skip

    def probe(self) -> bool:
        with socket.create_connection((self.host, self.port), timeout=1):
            return True

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.workdir / "access.log"

    def log_files(self) -> list[tuple[str, Path]]:
        return [(f"nginx {self.host}:{self.port}", self.log_path),
                (f"nginx access {self.host}:{self.port}", self.access_log)]  # fmt: skip
