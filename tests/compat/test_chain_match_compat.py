"""filter_chain_match on addresses, ports and ALPN: real Envoy and real proxyd, same YAML.

Each chain answers every request with its own name (direct_response), so the body says
which chain a connection got. Clients bind their own loopback source address (and for
one case their source port) before connecting:

* ``src`` (127.0.0.40): chains by source IP (``/32`` beats ``/24``), by source port
  within a range, by direct source IP, and by source type (Envoy counts only 127.0.0.1,
  ::1 and the connection's own local address as ``SAME_IP_OR_LOOPBACK``, so a client at
  127.0.0.21 is ``EXTERNAL``), and a default chain;
* ``dst`` (127.0.0.41): by destination IP; a ``/32`` chain that wins on the destination
  but not on the source sends the connection to the default chain (no back-off to the
  ``/8`` chain, as in Envoy's match tree);
* ``alpn`` (127.0.0.43, TLS with the TLS inspector): by the client's ALPN protocols, the
  first one it offers that a chain lists;
* ``none`` (127.0.0.44): one chain for another source and no default: the connection is
  closed and ``no_filter_chain_match`` counted.

The bodies (or how the connection ended) and the ``no_filter_chain_match`` stats must be
the same for both proxies. Nothing here measures speed.
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
from tests.compat.test_tls_compat import TLS_INSPECTOR, answering_chain

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

ADDRESSES = {"src": "127.0.0.40", "dst": "127.0.0.41", "alpn": "127.0.0.43", "none": "127.0.0.44"}
TIMEOUT_S = 5.0


def _cidr(address: str, plen: int) -> dict[str, Any]:
    return {"address_prefix": address, "prefix_len": plen}


def _listener(name: str, chains: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "address": {"socket_address": {"address": ADDRESSES[name], "port_value": 0}},
        "filter_chains": chains,
        **extra,
    }


def config(certs: Any, source_port: int) -> str:
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
    src = _listener(
        "src",
        [
            answering_chain("a", None, {"source_prefix_ranges": [_cidr("127.0.0.10", 32)]}),
            answering_chain("b", None, {"source_prefix_ranges": [_cidr("127.0.0.0", 24)]}),
            answering_chain(
                "c",
                None,
                {"source_prefix_ranges": [_cidr("127.0.0.0", 24)], "source_ports": [source_port]},
            ),
            answering_chain("d", None, {"direct_source_prefix_ranges": [_cidr("127.0.0.20", 32)]}),
            answering_chain(
                "e",
                None,
                {
                    "direct_source_prefix_ranges": [_cidr("127.0.0.21", 32)],
                    "source_type": "SAME_IP_OR_LOOPBACK",
                },
            ),
            answering_chain(
                "f",
                None,
                {
                    "direct_source_prefix_ranges": [_cidr("127.0.0.22", 32)],
                    "source_type": "EXTERNAL",
                },
            ),
        ],
        default_filter_chain=answering_chain("default", None, None),
    )
    dst = _listener(
        "dst",
        [
            answering_chain("wide", None, {"prefix_ranges": [_cidr("127.0.0.0", 8)]}),
            answering_chain(
                "exact",
                None,
                {
                    "prefix_ranges": [_cidr("127.0.0.41", 32)],
                    "source_prefix_ranges": [_cidr("127.0.0.50", 32)],
                },
            ),
            answering_chain("never", None, {"prefix_ranges": [_cidr("127.0.0.42", 32)]}),
        ],
        default_filter_chain=answering_chain("default", None, None),
    )
    alpn = _listener(
        "alpn",
        [
            answering_chain("one", tls, {"application_protocols": ["x-one"]}),
            answering_chain("both", tls, {"application_protocols": ["x-two", "x-three"]}),
            answering_chain("plain", tls, None),
        ],
        listener_filters=[TLS_INSPECTOR],
    )
    none = _listener(
        "none",
        [answering_chain("only", None, {"source_prefix_ranges": [_cidr("127.0.0.99", 32)]})],
    )
    doc = {
        "static_resources": {"listeners": [src, dst, alpn, none]},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def _read_all(s: socket.socket) -> bytes:
    """The response (head and content-length body), or what came before the close; not
    the end of stream (Envoy waits its delayed_close_timeout for the client to close)."""
    out = b""
    while True:
        head, sep, body = out.partition(b"\r\n\r\n")
        if sep:
            for line in head.lower().split(b"\r\n"):
                if line.startswith(b"content-length:") and len(body) >= int(line[15:]):
                    return out
        try:
            data = s.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            return out + b"<reset>"
        except TimeoutError:
            return out + b"<timeout>"
        if not data:
            return out
        out += data


def _body(raw: bytes) -> str:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        # Closed without a response: whether the close is seen as a reset depends on
        # whether the request had arrived when the proxy closed (a race).
        return "closed" if raw in (b"", b"<reset>") else raw.decode("latin-1")
    return f"{head.split(b' ')[1].decode()} {body.decode('latin-1')}"


def _plain(address: str, port: int, source: str, source_port: int = 0) -> str:
    s = socket.socket()
    s.settimeout(TIMEOUT_S)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((source, source_port))
        s.connect((address, port))
        s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        return _body(_read_all(s))
    finally:
        s.close()


def _tls(address: str, port: int, alpn: list[str]) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with socket.create_connection((address, port), timeout=TIMEOUT_S) as raw:
        with ctx.wrap_socket(raw, server_hostname="example.com") as s:
            s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            return _body(_read_all(s))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.11", 0))
        return int(s.getsockname()[1])


def test_filter_chain_match_on_addresses_and_alpn_matches_envoy(
    tmp_path: Path, certs: Any
) -> None:
    source_port = _free_port()

    def play(port_of: PortOf) -> dict[str, Any]:
        src, dst = port_of("src"), port_of("dst")
        alpn, none = port_of("alpn"), port_of("none")
        a = ADDRESSES
        return {
            "src /32": _plain(a["src"], src, "127.0.0.10"),
            "src /24": _plain(a["src"], src, "127.0.0.11"),
            "src port": _plain(a["src"], src, "127.0.0.11", source_port),
            "direct": _plain(a["src"], src, "127.0.0.20"),
            "local": _plain(a["src"], src, "127.0.0.21"),
            "external": _plain(a["src"], src, "127.0.0.22"),
            "outside": _plain(a["src"], src, "127.0.1.1"),
            "dst+src": _plain(a["dst"], dst, "127.0.0.50"),
            "dst only": _plain(a["dst"], dst, "127.0.0.1"),
            "alpn one": _tls(a["alpn"], alpn, ["x-one"]),
            "alpn three": _tls(a["alpn"], alpn, ["x-three"]),
            "alpn order": _tls(a["alpn"], alpn, ["x-zzz", "x-two", "x-one"]),
            "alpn other": _tls(a["alpn"], alpn, ["x-zzz"]),
            "alpn none": _tls(a["alpn"], alpn, []),
            "no chain": _plain(a["none"], none, "127.0.0.1"),
        }

    def pick(stats: dict[str, int]) -> dict[str, int]:
        return {
            k.split(".")[0] + "." + k.rsplit(".", 1)[1]: v
            for k, v in stats.items()
            if k.startswith("listener.127.0.0.4") and k.endswith(".no_filter_chain_match")
        }

    pair = run_pair(config(certs, source_port), tmp_path, play, pick)
    envoy, proxyd = pair.envoy.replies, pair.proxyd.replies
    # What Envoy did is what the chains are for (so a match below means something).
    assert envoy["src /32"] == "200 a"
    assert envoy["src port"] == "200 c"
    assert envoy["dst+src"] == "200 exact"
    assert envoy["alpn order"] == "200 both"
    assert envoy["no chain"] == "closed"
    assert proxyd == envoy
    assert pair.proxyd.stats == pair.envoy.stats
