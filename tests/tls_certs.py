"""Test certificates made with the ``openssl`` command line (the ``cryptography``
package is not a dependency): a CA, a server certificate for example.com and
*.example.org, a second server certificate for other.test, a client certificate from
the same CA (SAN URI spiffe://test/client, DNS client.test) and one from an unrelated
CA. Made once per test session into a directory; paths as attributes."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certs:
    dir: Path

    def path(self, name: str) -> str:
        return str(self.dir / name)

    @property
    def ca(self) -> str:
        return self.path("ca.pem")

    @property
    def server(self) -> str:
        return self.path("server.pem")

    @property
    def server_key(self) -> str:
        return self.path("server.key")

    @property
    def other(self) -> str:
        return self.path("other.pem")

    @property
    def other_key(self) -> str:
        return self.path("other.key")

    @property
    def client(self) -> str:
        return self.path("client.pem")

    @property
    def client_key(self) -> str:
        return self.path("client.key")

    @property
    def stranger(self) -> str:
        return self.path("stranger.pem")

    @property
    def stranger_key(self) -> str:
        return self.path("stranger.key")


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(name: str, cwd: Path) -> None:
    _run(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "30",
        "-subj", f"/O=proxyd tests/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=cwd,
    )  # fmt: skip


def _leaf(name: str, ca: str, cn: str, san: str, usage: str, cwd: Path) -> None:
    _run(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/O=proxyd tests/CN={cn}",
        cwd=cwd,
    )  # fmt: skip
    (cwd / f"{name}.ext").write_text(
        f"subjectAltName={san}\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"
    )
    _run(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "30", "-extfile", f"{name}.ext",
        cwd=cwd,
    )  # fmt: skip


def make_certs(where: Path) -> Certs:
    where.mkdir(parents=True, exist_ok=True)
    _ca("ca", where)
    _ca("stranger-ca", where)
    _leaf("server", "ca", "example.com", "DNS:example.com,DNS:*.example.org", "serverAuth", where)
    _leaf("other", "ca", "other.test", "DNS:other.test", "serverAuth", where)
    _leaf("client", "ca", "client", "URI:spiffe://test/client,DNS:client.test", "clientAuth", where)
    _leaf("stranger", "stranger-ca", "stranger", "DNS:client.test", "clientAuth", where)
    return Certs(where)
