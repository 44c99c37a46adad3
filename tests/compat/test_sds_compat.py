"""SDS from files: one real Envoy and one proxyd on the same YAML, the same files.

Listeners (each on its own loopback address):

* ``sds`` (127.0.0.2): its certificate from an SDS file whose Secret names certificate
  files, and its client CA from another SDS file, client certificates required;
* ``late`` (127.0.0.3): its secret's file holds no secret at start (the update is
  refused; initial_fetch_timeout 1 s); the secret is written while the proxy runs;
* ``static`` (127.0.0.4): a static secret of ``static_resources.secrets`` by name;
* ``origin`` (127.0.0.5, plaintext) to the cluster ``mtls_up``, whose client
  certificate (to a TLS upstream that asks for one) comes from an SDS file.

The cases, played on each proxy in turn (the files are put back between them): which
certificate serial a new connection sees; a connection opened before a rotation goes
on serving with the old certificate; replacing the certificate files, then the SDS file
itself, rotates new handshakes; an SDS update whose key does not match its certificate
is refused and the last good certificate stays; the late listener refuses handshakes,
then serves once its file appears; the upstream sees the cluster's client certificate
change when its SDS file is replaced.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.support import ProxydProcess, UpstreamServer, wait_for
from tests.tls_certs import _leaf
from tests.tls_upstream import TlsUpstream

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
ADDRESSES = {"sds": "127.0.0.2", "late": "127.0.0.3", "static": "127.0.0.4", "origin": "127.0.0.5"}
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def write_atomically(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
    os.replace(tmp, path)


def cert_secret(name: str, chain: str | Path, key: str | Path) -> dict[str, Any]:
    return {
        "@type": SECRET,
        "name": name,
        "tls_certificate": {
            "certificate_chain": {"filename": str(chain)},
            "private_key": {"filename": str(key)},
        },
    }


def sds_file(path: Path, secret: dict[str, Any], version: str) -> None:
    write_atomically(path, yaml.safe_dump({"version_info": version, "resources": [secret]}))


def sds_config(name: str, path: Path, timeout: str = "15s") -> dict[str, Any]:
    return {
        "name": name,
        "sds_config": {"path_config_source": {"path": str(path)}, "initial_fetch_timeout": timeout},
    }


def listener(name: str, tls: dict[str, Any] | None, cluster: str = "up") -> dict[str, Any]:
    hcm = {
        "@type": HCM,
        "stat_prefix": name,
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
                }
            ]
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    chain: dict[str, Any] = {
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]
    }
    if tls is not None:
        chain["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {"@type": TLS, **tls},
        }
    return {
        "name": name,
        "address": {"socket_address": {"address": ADDRESSES[name], "port_value": 0}},
        "filter_chains": [chain],
    }


def mtls_cluster(certs: Any, files: Path, port: int) -> dict[str, Any]:
    """A cluster whose client certificate comes from SDS (one request per connection,
    so each request shows the certificate of the moment)."""
    return {
        "name": "mtls_up",
        "type": "STATIC",
        "connect_timeout": "1s",
        "max_requests_per_connection": 1,
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": UPSTREAM_TLS,
                "common_tls_context": {
                    "tls_certificate_sds_secret_configs": [
                        sds_config("client", files / "client.yaml")
                    ],
                    "validation_context": {"trusted_ca": {"filename": certs.ca}},
                },
            },
        },
        "load_assignment": {
            "cluster_name": "mtls_up",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }


def config(certs: Any, files: Path, upstream: int, mtls_upstream: int) -> str:
    static_secret = cert_secret("fixed", certs.other, certs.other_key)
    del static_secret["@type"]
    doc = {
        "node": {"id": "node-1", "cluster": "test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "secrets": [static_secret],
            "listeners": [
                listener(
                    "sds",
                    {
                        "require_client_certificate": True,
                        "common_tls_context": {
                            "tls_certificate_sds_secret_configs": [
                                sds_config("server", files / "server.yaml")
                            ],
                            "validation_context_sds_secret_config": sds_config(
                                "ca", files / "ca.yaml"
                            ),
                        },
                    },
                ),
                listener(
                    "late",
                    {
                        "common_tls_context": {
                            "tls_certificate_sds_secret_configs": [
                                sds_config("late", files / "late.yaml", "1s")
                            ]
                        }
                    },
                ),
                listener("origin", None, cluster="mtls_up"),
                listener(
                    "static",
                    {
                        "common_tls_context": {
                            "tls_certificate_sds_secret_configs": [{"name": "fixed"}]
                        }
                    },
                ),
            ],
            "clusters": [
                mtls_cluster(certs, files, mtls_upstream),
                {
                    "name": "up",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "up",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": upstream,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                },
            ],
        },
    }
    return yaml.safe_dump(doc)


def reset_files(certs: Any, files: Path) -> None:
    """The files as each proxy starts with them."""
    shutil.copy(certs.server, files / "cert.pem")
    shutil.copy(certs.server_key, files / "key.pem")
    sds_file(
        files / "server.yaml", cert_secret("server", files / "cert.pem", files / "key.pem"), "1"
    )
    ca = {
        "@type": SECRET,
        "name": "ca",
        "validation_context": {"trusted_ca": {"filename": certs.ca}},
    }
    sds_file(files / "ca.yaml", ca, "1")
    # (The file must exist: Envoy refuses a path_config_source that does not.)
    write_atomically(files / "late.yaml", yaml.safe_dump({"version_info": "0", "resources": []}))
    sds_file(files / "client.yaml", cert_secret("client", certs.client, certs.client_key), "1")


def client(certs: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=certs.ca)
    ctx.check_hostname = False  # the rotated certificate names other.test
    ctx.load_cert_chain(certs.client, certs.client_key)
    return ctx


def request(s: ssl.SSLSocket) -> dict[str, Any]:
    """One keep-alive GET on ``s``: its status and whether it said connection: close."""
    s.sendall(b"GET /echo HTTP/1.1\r\nhost: example.com\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return {"outcome": "closed"}
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(b":") for x in lines[1:])}
    length = int(headers.get(b"content-length", b"0"))
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return {"status": int(lines[0].split(b" ")[1]), "close": headers.get(b"connection") == b"close"}


def serial_of(path: str) -> str:
    return str(ssl._ssl._test_decode_cert(path)["serialNumber"])  # type: ignore[attr-defined]


def new_connection(port: int, address: str, ctx: ssl.SSLContext) -> dict[str, Any]:
    """A new connection's certificate (which of the test's) and one request's answer."""
    raw = socket.create_connection((address, port), timeout=5)
    try:
        try:
            s = ctx.wrap_socket(raw, server_hostname="example.com")
        except (ssl.SSLError, OSError):
            return {"outcome": "handshake refused"}
        with s:
            serial = str(s.getpeercert()["serialNumber"])  # type: ignore[index]
            try:
                answer = request(s)
            except (ssl.SSLError, OSError):
                answer = {"outcome": "closed"}
            return {"serial": serial, **answer}
    finally:
        raw.close()


def play(
    certs: Any, files: Path, port_of: Callable[[str], int], stats: Callable[[], dict[str, int]]
) -> dict[str, Any]:
    ctx = client(certs)
    names = {serial_of(certs.server): "server", serial_of(certs.other): "other"}
    out: dict[str, Any] = {}

    def seen(listener: str) -> dict[str, Any]:
        got = new_connection(port_of(listener), ADDRESSES[listener], ctx)
        if "serial" in got:
            got["serial"] = names.get(got["serial"], got["serial"])
        return got

    def until(listener: str, serial: str) -> dict[str, Any]:
        try:
            return wait_for(lambda: (g := seen(listener)).get("serial") == serial and g, timeout=10)
        except TimeoutError:
            return seen(listener)

    out["start"] = seen("sds")
    out["static"] = seen("static")
    out["late before its file"] = seen("late")
    # A connection made now, kept across the rotations.
    old_raw = socket.create_connection((ADDRESSES["sds"], port_of("sds")), timeout=5)
    old = ctx.wrap_socket(old_raw, server_hostname="example.com")
    with old:
        out["old connection before"] = request(old)
        write_atomically(files / "key.pem", Path(certs.other_key).read_bytes())
        write_atomically(files / "cert.pem", Path(certs.other).read_bytes())
        out["certificate files replaced"] = until("sds", "other")
        out["old connection after"] = [request(old) for _ in range(3)]
        out["old connection certificate"] = names[str(old.getpeercert()["serialNumber"])]  # type: ignore[index]
    sds_file(files / "server.yaml", cert_secret("server", certs.server, certs.server_key), "2")
    out["sds file replaced"] = until("sds", "server")
    rejected = stats().get("sds.server.update_rejected", 0)
    sds_file(files / "server.yaml", cert_secret("server", certs.other, certs.server_key), "3")
    try:
        wait_for(lambda: stats().get("sds.server.update_rejected", 0) > rejected, timeout=10)
        out["mismatched key"] = "rejected"
    except TimeoutError:
        out["mismatched key"] = "not rejected"
    out["after the mismatched key"] = seen("sds")
    sds_file(files / "late.yaml", cert_secret("late", certs.server, certs.server_key), "1")
    out["late after its file"] = until("late", "server")
    # The cluster's client certificate, from SDS, rotated.
    out["upstream client certificate"] = origin_sans(port_of("origin"))
    client2 = Path(certs.path("client2.pem")), Path(certs.path("client2.key"))
    sds_file(files / "client.yaml", cert_secret("client", *client2), "2")
    want = ["spiffe://test/client2"]
    try:
        wait_for(lambda: origin_sans(port_of("origin")) == want, timeout=10)
    except TimeoutError:
        pass
    out["upstream client certificate rotated"] = origin_sans(port_of("origin"))
    return out


def origin_sans(port: int) -> list[str] | str:
    """The URI SANs of the client certificate the TLS upstream saw (through the
    plaintext listener "origin"), or the status."""
    with socket.create_connection((ADDRESSES["origin"], port), timeout=5) as s:
        s.sendall(b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        return head.split(b"\r\n")[0].decode()
    return sorted(v for v in json.loads(body)["client_sans"] if v.startswith("spiffe:"))


def test_sds_files_rotate_as_in_envoy(tmp_path: Path, certs) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (tmp_path / "proxyd").mkdir()
    if not Path(certs.path("client2.pem")).exists():  # a second client certificate
        _leaf("client2", "ca", "client2", "URI:spiffe://test/client2", "clientAuth", certs.dir)
    up = UpstreamServer("up")
    up.start()
    try:
        with TlsUpstream(certs, verify_clients=True) as mtls:
            text = config(certs, files, up.port, mtls.port)
            reset_files(certs, files)
            with EnvoyRunner(text) as envoy:
                envoy_side = play(certs, files, envoy.listener_port, envoy.stats)
            reset_files(certs, files)
            with ProxydProcess(tmp_path / "proxyd", text, concurrency=1) as p:
                proxyd_side = play(certs, files, p.listener_port, p.stats)
    finally:
        up.stop()
    assert envoy_side["start"]["serial"] == "server"
    assert envoy_side["certificate files replaced"]["serial"] == "other"
    assert envoy_side["upstream client certificate"] == ["spiffe://test/client"]
    assert envoy_side["upstream client certificate rotated"] == ["spiffe://test/client2"]
    assert proxyd_side == envoy_side
