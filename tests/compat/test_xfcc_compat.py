"""x-forwarded-client-cert: real Envoy and real proxyd, same YAML, same clients.

One listener per ``forward_client_cert_details`` mode (with and without
``set_current_client_cert_details``), TLS with a client CA (a client certificate is asked
for, not required) and a certificate with a URI SAN (the ``By`` of the element); two
plaintext ones. The upstream answers with the request head it got, so the client sees
the x-forwarded-client-cert line that went upstream.

Each listener is asked three ways: with a client certificate (mTLS), over TLS without
one, and with and without an XFCC header of the client's own. Nothing here measures
speed.
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
from tests.compat.test_chain_match_compat import _read_all
from tests.support import ThreadedTcpServer
from tests.tls_certs import _leaf

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
TIMEOUT_S = 5.0
ALL = {"subject": True, "cert": True, "uri": True, "dns": True}
# name, mode, set_current_client_cert_details, TLS
LISTENERS = [
    ("sanitize", "SANITIZE", None, True),
    ("forward", "FORWARD_ONLY", None, True),
    ("append", "APPEND_FORWARD", ALL, True),
    ("set", "SANITIZE_SET", {"subject": True, "uri": True, "dns": True}, True),
    ("set_min", "SANITIZE_SET", None, True),
    ("always", "ALWAYS_FORWARD_ONLY", None, True),
    ("plain_always", "ALWAYS_FORWARD_ONLY", None, False),
    ("plain_append", "APPEND_FORWARD", ALL, False),
]


class HeadEcho(ThreadedTcpServer):
    """An HTTP/1.1 upstream whose response body is the request head it got."""

    def __init__(self) -> None:
        super().__init__()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT_S)
        try:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(head), head))
        except OSError:
            pass
        finally:
            conn.close()


def config(certs: Any, proxy_cert: tuple[str, str], upstream: int) -> str:
    listeners = []
    for name, mode, details, tls in LISTENERS:
        hcm: dict[str, Any] = {
            "@type": HCM,
            "stat_prefix": name,
            "forward_client_cert_details": mode,
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}],
                    }
                ]
            },
            "http_filters": [
                {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}
            ],
        }
        if details:
            hcm["set_current_client_cert_details"] = details
        chain: dict[str, Any] = {
            "filters": [
                {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
            ]
        }
        if tls:
            chain["transport_socket"] = {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": TLS,
                    "common_tls_context": {
                        "tls_certificates": [
                            {
                                "certificate_chain": {"filename": proxy_cert[0]},
                                "private_key": {"filename": proxy_cert[1]},
                            }
                        ],
                        "validation_context": {"trusted_ca": {"filename": certs.ca}},
                    },
                },
            }
        listeners.append(
            {
                "name": name,
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [chain],
            }
        )
    cluster = {
        "name": "up",
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
    }
    doc = {
        "static_resources": {"listeners": listeners, "clusters": [cluster]},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def _xfcc(port: int, tls: bool, client_cert: tuple[str, str] | None, ca: str, own: bool) -> str:
    """The x-forwarded-client-cert line(s) the upstream got ("-": none)."""
    s: Any = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    try:
        if tls:
            ctx = ssl.create_default_context(cafile=ca)
            ctx.check_hostname = False
            if client_cert is not None:
                ctx.load_cert_chain(*client_cert)
            s = ctx.wrap_socket(s, server_hostname="proxy.test")
        extra = b"x-forwarded-client-cert: By=spiffe://client/own;Hash=abc\r\n" if own else b""
        s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n" + extra + b"\r\n")
        out = _read_all(s)
    finally:
        s.close()
    body = out.partition(b"\r\n\r\n")[2]
    lines = [
        line.decode("latin-1")
        for line in body.split(b"\r\n")
        if line.lower().startswith(b"x-forwarded-client-cert:")
    ]
    return " | ".join(lines) or "-"


def test_forward_client_cert_details_matches_envoy(tmp_path: Path, certs: Any) -> None:
    _leaf(
        "proxy", "ca", "proxy.test", "URI:spiffe://test/proxy,DNS:proxy.test", "serverAuth",
        certs.dir,
    )  # fmt: skip
    proxy_cert = (certs.path("proxy.pem"), certs.path("proxy.key"))
    client = (certs.client, certs.client_key)
    upstream = HeadEcho()
    try:

        def play(port_of: PortOf) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for name, _mode, _details, tls in LISTENERS:
                port = port_of(name)
                for own in (True, False):
                    if tls:
                        out[f"{name} mtls own={own}"] = _xfcc(port, True, client, certs.ca, own)
                        out[f"{name} tls own={own}"] = _xfcc(port, True, None, certs.ca, own)
                    else:
                        out[f"{name} plain own={own}"] = _xfcc(port, False, None, certs.ca, own)
            return out

        pair = run_pair(config(certs, proxy_cert, upstream.port), tmp_path, play)
    finally:
        upstream.close()
    envoy, proxyd = pair.envoy.replies, pair.proxyd.replies
    # What Envoy did is what the modes are for (so the match below means something).
    assert envoy["sanitize mtls own=True"] == "-"
    assert envoy["forward mtls own=True"].endswith("By=spiffe://client/own;Hash=abc")
    assert "By=spiffe://test/proxy;Hash=" in envoy["set mtls own=True"]
    assert "Cert=" in envoy["append mtls own=False"]
    assert {k: v for k, v in proxyd.items() if v != envoy[k]} == {}
