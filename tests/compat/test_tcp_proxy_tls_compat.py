"""TLS termination in front of the TCP proxy (a listener whose one filter chain has a
``transport_socket`` DownstreamTlsContext and the ``tcp_proxy`` filter): one real Envoy
and one proxyd on the same YAML.

Listeners (each on its own loopback address, so its ``listener.<addr>_0.ssl.*`` stats
are its own):

* ``tls`` (127.0.0.21): certificate for example.com, to ``plain`` (the demo HTTP
  upstream): the client's bytes arrive at the upstream in plaintext;
* ``mtls`` (127.0.0.22): a client certificate from the test CA required, to ``plain``;
* ``both`` (127.0.0.23): TLS in, and TLS out to ``tls_up`` (a TLS upstream, SNI
  example.com, verified with the test CA).

Cases: what a Python ``ssl`` client sees (answered, refused), a plaintext client on a
TLS listener, the TCP access log's TLS operators, and the listeners' ssl stats and the
clusters' connection counts.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import PortOf, run_pair
from tests.support import UpstreamServer, wait_for
from tests.tls_upstream import TlsUpstream

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
DOWNSTREAM_TLS = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
ADDRESSES = {"tls": "127.0.0.21", "mtls": "127.0.0.22", "both": "127.0.0.23"}
LOG_FORMAT = (
    "%UPSTREAM_CLUSTER%|%RESPONSE_FLAGS%|%BYTES_RECEIVED%|%DOWNSTREAM_TLS_VERSION%|"
    "%DOWNSTREAM_PEER_URI_SAN%|%UPSTREAM_TLS_VERSION%\n"
)


def cluster(name: str, port: int, tls: dict[str, Any] | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
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
    if tls is not None:
        c["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {"@type": UPSTREAM_TLS, **tls},
        }
    return c


def listener(name: str, cluster_name: str, tls: dict[str, Any], log_path: str) -> dict[str, Any]:
    return {
        "name": name,
        "address": {"socket_address": {"address": ADDRESSES[name], "port_value": 0}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": TCP_PROXY,
                            "stat_prefix": f"tcp_{name}",
                            "cluster": cluster_name,
                            "access_log": [
                                {
                                    "name": "envoy.access_loggers.file",
                                    "typed_config": {
                                        "@type": FILE_LOG,
                                        "path": log_path,
                                        "log_format": {
                                            "text_format_source": {"inline_string": LOG_FORMAT}
                                        },
                                    },
                                }
                            ],
                        },
                    }
                ],
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {"@type": DOWNSTREAM_TLS, **tls},
                },
            }
        ],
    }


def config(certs: Any, plain: int, tls_up: int, log_path: str) -> str:
    server = {
        "tls_certificates": [
            {
                "certificate_chain": {"filename": certs.server},
                "private_key": {"filename": certs.server_key},
            }
        ]
    }
    mtls = {
        "require_client_certificate": True,
        "common_tls_context": {
            **server,
            "validation_context": {"trusted_ca": {"filename": certs.ca}},
        },
    }
    doc = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                listener("tls", "plain", {"common_tls_context": server}, log_path),
                listener("mtls", "plain", mtls, log_path),
                listener("both", "tls_up", {"common_tls_context": server}, log_path),
            ],
            "clusters": [
                cluster("plain", plain),
                cluster(
                    "tls_up",
                    tls_up,
                    {
                        "sni": "example.com",
                        "common_tls_context": {
                            "validation_context": {"trusted_ca": {"filename": certs.ca}}
                        },
                    },
                ),
            ],
        },
    }
    return yaml.safe_dump(doc)


def tls_request(address: str, port: int, ctx: ssl.SSLContext | None, path: str) -> dict[str, Any]:
    """One HTTP/1.1 request over TLS (``ctx``) or plaintext (None) through the proxy."""
    raw = socket.create_connection((address, port), timeout=5)
    s: Any = raw
    try:
        if ctx is not None:
            try:
                s = ctx.wrap_socket(raw, server_hostname="example.com")
            except (ssl.SSLError, OSError) as exc:
                return {"outcome": "handshake refused", "error": type(exc).__name__}
        data = b""
        try:
            s.sendall(f"GET {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n".encode())
            while chunk := s.recv(65536):
                data += chunk
        except (ssl.SSLError, OSError):
            pass
        if not data:
            return {"outcome": "closed"}
        head, _, body = data.partition(b"\r\n\r\n")
        return {"status": int(head.split(b" ", 2)[1]), "path_seen": path.encode() in body}
    finally:
        s.close()
        raw.close()


def _log_lines(path: str, n: int) -> list[str] | None:
    """The lines, sorted; the TLS version of a connection whose handshake failed (no
    byte received) masked: Envoy logs the version BoringSSL had got to, proxyd ``-``
    (a known difference)."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return None
    if len(lines) < n:
        return None
    out = []
    for line in lines:
        fields = line.split("|")
        if fields[2] == "0":
            fields[3] = "(handshake failed)"
        out.append("|".join(fields))
    return sorted(out)


def test_tls_termination_in_front_of_the_tcp_proxy_matches_envoy(tmp_path, certs):
    log_path = str(tmp_path / "tcp_tls.log")
    up = UpstreamServer("up")
    up.start()

    def client(cert: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=certs.ca)
        if cert:
            ctx.load_cert_chain(certs.client, certs.client_key)
        return ctx

    cases: dict[str, tuple[str, ssl.SSLContext | None]] = {
        "tls": ("tls", client()),
        "tls, plaintext client": ("tls", None),
        "mtls with a certificate": ("mtls", client(cert=True)),
        "mtls without one": ("mtls", client()),
        "tls both ways": ("both", client()),
    }
    try:
        with TlsUpstream(certs, "upstream") as tls_up:
            text = config(certs, up.port, tls_up.port, log_path)

            def play(port_of: PortOf) -> dict[str, Any]:
                out: dict[str, Any] = {}
                for label, (name, ctx) in cases.items():
                    port = port_of(name)
                    out[label] = tls_request(ADDRESSES[name], port, ctx, f"/{name}")
                out["access log"] = wait_for(lambda: _log_lines(log_path, len(cases)), timeout=10)
                Path(log_path).write_text("")
                return out

            def pick(stats: dict[str, int]) -> dict[str, int]:
                out = {}
                for k, v in stats.items():
                    if k.startswith("listener.127.0.0.2") and ".ssl." in k:
                        if any(
                            x in k for x in (".ciphers.", ".curves.", ".sigalgs.", ".certificate.")
                        ):
                            continue  # BoringSSL's names, certificate gauges
                        if v:
                            out[k] = v
                    elif k.startswith("cluster.") and k.endswith(".upstream_cx_total") and v:
                        out[k] = v
                    elif k.startswith("tcp.tcp_") and k.endswith("downstream_cx_total") and v:
                        out[k] = v
                return out

            pair = run_pair(text, tmp_path, play, pick)
    finally:
        up.stop()
    assert pair.proxyd.replies == pair.envoy.replies
    assert pair.proxyd.stats == pair.envoy.stats
    r = pair.envoy.replies
    assert r["tls"] == {"status": 200, "path_seen": True}
    assert r["tls both ways"] == {"status": 200, "path_seen": True}
    assert r["mtls with a certificate"]["status"] == 200
    assert "status" not in r["mtls without one"] and "status" not in r["tls, plaintext client"]
