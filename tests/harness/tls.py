"""A throwaway certificate authority for TLS tests, made with the openssl CLI."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

__all__ = ["Certificates", "make_certificates"]

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclasses.dataclass(frozen=True)
class Certificates:
    """PEM files: a CA, a server certificate for 127.0.0.1/localhost, a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _run(openssl: str, *args: str, cwd: Path) -> None:
    result = subprocess.run(
        [openssl, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {result.stderr.strip()}")


def _issue(openssl: str, directory: Path, name: str, subject: str, extensions: str) -> None:
    _run(
        openssl, "req", "-new", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr",
        "-subj", subject, cwd=directory,
    )  # fmt: skip
    (directory / f"{name}.ext").write_text(extensions)
    _run(
        openssl, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-sha256",
        "-extfile", f"{name}.ext", cwd=directory,
    )  # fmt: skip


def make_certificates(directory: Path, *, openssl: str = "openssl") -> Certificates:
    """A new CA in ``directory`` and the server and client certificates it signed."""
    directory.mkdir(parents=True, exist_ok=True)
    _run(
        openssl, "req", "-x509", "-new", *_EC, "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-sha256", "-subj", "/CN=scalekit test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    _issue(
        openssl, directory, "server", "/CN=127.0.0.1",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )  # fmt: skip
    _issue(
        openssl, directory, "client", "/CN=scalekit test client",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=clientAuth\n",
    )  # fmt: skip
    return Certificates(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
