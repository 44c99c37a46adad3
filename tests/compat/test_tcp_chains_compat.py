"""TCP proxy filter chains among others: real Envoy and real proxyd on the same YAML.

A listener's chains may end in a TCP proxy as well as in a connection manager, chosen per
connection by filter_chain_match like any chain:

* ``sni`` (127.0.0.45, TLS inspector): ``term.example`` terminates TLS and answers HTTP;
  ``pass.example`` is passed through, still encrypted, to a TCP upstream (the upstream
  here echoes, so the client gets its own ClientHello back); another name has no chain;
* ``alpn`` (127.0.0.46): every chain a TCP proxy, by transport protocol and ALPN, each
  to an upstream that first says which it is, then echoes;
* ``mixed`` (127.0.0.47, plaintext): a client at 127.0.0.60 is TCP-proxied, any other
  gets the default chain, a connection manager.

What each client saw and the TCP proxies' connection counts must be the same for both.
Nothing here measures speed.
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
from tests.compat.test_tls_compat import TLS_INSPECTOR, answering_chain
from tests.support import ThreadedTcpServer

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ADDRESSES = {"sni": "127.0.0.45", "alpn": "127.0.0.46", "mixed": "127.0.0.47"}
TIMEOUT_S = 5.0


class TaggedEcho(ThreadedTcpServer):
    """Says its tag when a client connects, then echoes until the client's end."""

    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        super().__init__()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT_S)
        try:
            if self.tag:
                conn.sendall(self.tag)
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()


def _tcp_chain(stat: str, cluster: str, match: dict[str, Any] | None) -> dict[str, Any]:
    chain: dict[str, Any] = {
        "filters": [
            {
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": {"@type": TCP_PROXY, "stat_prefix": stat, "cluster": cluster},
            }
        ]
    }
    if match is not None:
        chain["filter_chain_match"] = match
    return chain


def _cluster(name: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "connect_timeout": "1s",
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


def config(certs: Any, ports: dict[str, int]) -> str:
    tls = {
        "common_tls_context": {
            "tls_certificates": [
                {
                    "certificate_chain": {"filename": certs.server},
                    "private_key": {"filename": certs.server_key},
                }
            ]
        }
    }
    sni = {
        "name": "sni",
        "address": {"socket_address": {"address": ADDRESSES["sni"], "port_value": 0}},
        "listener_filters": [TLS_INSPECTOR],
        "filter_chains": [
            answering_chain("term", tls, {"server_names": ["term.example"]}),
            _tcp_chain("pass", "echo", {"server_names": ["pass.example"]}),
        ],
    }
    alpn = {
        "name": "alpn",
        "address": {"socket_address": {"address": ADDRESSES["alpn"], "port_value": 0}},
        "listener_filters": [TLS_INSPECTOR],
        "filter_chains": [
            _tcp_chain(
                "alpn_a", "a", {"transport_protocol": "tls", "application_protocols": ["x-a"]}
            ),
            _tcp_chain("alpn_b", "b", {"transport_protocol": "tls"}),
            _tcp_chain("alpn_c", "c", {"transport_protocol": "raw_buffer"}),
        ],
    }
    mixed = {
        "name": "mixed",
        "address": {"socket_address": {"address": ADDRESSES["mixed"], "port_value": 0}},
        "filter_chains": [
            _tcp_chain(
                "mixed_tcp",
                "t",
                {"source_prefix_ranges": [{"address_prefix": "127.0.0.60", "prefix_len": 32}]},
            )
        ],
        "default_filter_chain": answering_chain("http", None, None),
    }
    doc = {
        "static_resources": {
            "listeners": [sni, alpn, mixed],
            "clusters": [_cluster(name, port) for name, port in ports.items()],
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def client_hello(sni: str, alpn: list[str]) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_side=False, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def _raw(address: str, port: int, data: bytes, want: int, source: str = "127.0.0.1") -> bytes:
    """Send ``data``; what comes back, up to ``want`` bytes or the close."""
    s = socket.socket()
    s.settimeout(TIMEOUT_S)
    try:
        s.bind((source, 0))
        s.connect((address, port))
        s.sendall(data)
        got = b""
        while len(got) < want:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return got + b"<reset>"
            if not chunk:
                break
            got += chunk
        return got
    finally:
        s.close()


def _https(address: str, port: int, sni: str) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((address, port), timeout=TIMEOUT_S) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            out = _read_all(s)
    head, _, body = out.partition(b"\r\n\r\n")
    return f"{head.split(b' ')[1].decode()} {body.decode()}"


def _http(address: str, port: int) -> str:
    with socket.create_connection((address, port), timeout=TIMEOUT_S) as s:
        s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        out = _read_all(s)
    head, _, body = out.partition(b"\r\n\r\n")
    return f"{head.split(b' ')[1].decode()} {body.decode()}"


def test_tcp_proxy_chains_among_others_match_envoy(tmp_path: Path, certs: Any) -> None:
    servers = {
        "echo": TaggedEcho(b""),
        "a": TaggedEcho(b"A:"),
        "b": TaggedEcho(b"B:"),
        "c": TaggedEcho(b"C:"),
        "t": TaggedEcho(b"T:"),
    }
    hello_pass = client_hello("pass.example", [])
    hello_other = client_hello("other.example", [])
    hello_a = client_hello("x.example", ["x-z", "x-a"])
    hello_z = client_hello("x.example", ["x-z"])
    try:

        def play(port_of: PortOf) -> dict[str, Any]:
            sni, alpn, mixed = port_of("sni"), port_of("alpn"), port_of("mixed")
            a = ADDRESSES
            return {
                "term": _https(a["sni"], sni, "term.example"),
                "pass": _raw(a["sni"], sni, hello_pass, len(hello_pass)) == hello_pass,
                "other": _raw(a["sni"], sni, hello_other, 1),
                "alpn a": _raw(a["alpn"], alpn, hello_a, 2 + len(hello_a)) == b"A:" + hello_a,
                "alpn other": _raw(a["alpn"], alpn, hello_z, 2 + len(hello_z)) == b"B:" + hello_z,
                "raw": _raw(a["alpn"], alpn, b"hello", 7),
                "mixed tcp": _raw(a["mixed"], mixed, b"ping", 6, source="127.0.0.60"),
                "mixed http": _http(a["mixed"], mixed),
            }

        def pick(stats: dict[str, int]) -> dict[str, int]:
            return {
                f"tcp.{p}.downstream_cx_total": stats.get(f"tcp.{p}.downstream_cx_total", 0)
                for p in ("pass", "alpn_a", "alpn_b", "alpn_c", "mixed_tcp")
            }

        ports = {name: s.port for name, s in servers.items()}
        pair = run_pair(config(certs, ports), tmp_path, play, pick)
    finally:
        for s in servers.values():
            s.close()
    envoy, proxyd = pair.envoy.replies, pair.proxyd.replies
    assert envoy["term"] == "200 term"
    assert envoy["pass"] is True
    assert envoy["raw"] == b"C:hello"
    assert envoy["mixed tcp"] == b"T:ping"
    assert envoy["mixed http"] == "200 http"
    assert proxyd == envoy
    assert pair.proxyd.stats == pair.envoy.stats
    assert pair.envoy.stats["tcp.pass.downstream_cx_total"] == 1
