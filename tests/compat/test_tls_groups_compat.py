"""tls_params.ecdh_curves with several curves: real Envoy and real proxyd, same YAML.

A listener with ``ecdh_curves: ["P-384:P-521", "X25519"]`` (one entry a ``:``-separated
list, as the public configs write it). Clients offering one group each (set with
proxyd.protocol.tls_context.set_groups) get a handshake when the group is in the list
and none otherwise. Both proxies must agree on each.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxyd.protocol.tls_context import set_groups
from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import PortOf, run_pair
from tests.compat.test_chain_match_compat import _read_all
from tests.compat.test_tls_compat import answering_chain

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

GROUPS = ["P-384:P-521", "X25519"]
OFFERS = {"p256": "prime256v1", "p384": "secp384r1", "p521": "secp521r1", "x25519": "X25519"}


def config(certs: Any) -> str:
    tls = {
        "common_tls_context": {
            "tls_certificates": [
                {
                    "certificate_chain": {"filename": certs.server},
                    "private_key": {"filename": certs.server_key},
                }
            ],
            "tls_params": {"ecdh_curves": GROUPS},
        }
    }
    doc = {
        "static_resources": {
            "listeners": [
                {
                    "name": "groups",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [answering_chain("ok", tls, None)],
                }
            ]
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def _offer(port: int, group: str) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    set_groups(ctx, group)  # the only group offered (TLS 1.3 key share, 1.2 ECDHE)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="example.com") as s:
                s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                out = _read_all(s)
    except (ssl.SSLError, OSError):
        return "refused"
    return out.partition(b"\r\n\r\n")[2].decode() or "closed"


def test_several_ecdh_curves_match_envoy(tmp_path: Path, certs: Any) -> None:
    def play(port_of: PortOf) -> dict[str, Any]:
        port = port_of("groups")
        return {name: _offer(port, group) for name, group in OFFERS.items()}

    pair = run_pair(config(certs), tmp_path, play)
    assert pair.envoy.replies == {"p256": "refused", "p384": "ok", "p521": "ok", "x25519": "ok"}
    assert pair.proxyd.replies == pair.envoy.replies
