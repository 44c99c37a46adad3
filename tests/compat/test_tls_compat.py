"""Downstream TLS termination and filter chain choice: one real Envoy and one proxyd
on the same YAML.

Listeners (each on its own loopback address, so its ``listener.<addr>_0.ssl.*`` stats
are its own):

* ``tls`` (127.0.0.2): certificate for example.com and *.example.org, ALPN h2 and
  http/1.1 (a client offering both gets h2 from both);
* ``tls12`` (127.0.0.3): TLS 1.2 at most, one cipher suite;
* ``mtls`` (127.0.0.4): client certificate required, from the test CA, with the SAN URI
  spiffe://test/client;
* ``mtls_san`` (127.0.0.5): client certificate required, SAN URI spiffe://test/other
  (the client's certificate does not have it);
* ``sni`` (127.0.0.6): chains chosen by server name (exact, wildcard, exact with
  transport "tls"), one with another certificate, a plaintext one for raw_buffer, and a
  default chain; each answers with its own label;
* ``sni_only`` (127.0.0.7): one chain for example.com and no default (other names,
  no SNI and plaintext find no chain).

Cases look at what a Python ``ssl`` client sees (refused or answered, TLS version,
ALPN) and what the upstream sees (x-forwarded-proto), and the ssl stats are compared.
"""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import PortOf, run_pair
from tests.support import UpstreamServer, wait_for

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
ADDRESSES = {
    "tls": "127.0.0.2",
    "tls12": "127.0.0.3",
    "mtls": "127.0.0.4",
    "mtls_san": "127.0.0.5",
    "sni": "127.0.0.6",
    "sni_only": "127.0.0.7",
    "multi": "127.0.0.8",
    "logged": "127.0.0.9",
}
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
# The TLS operators, "|"-separated (subjects have spaces in them).
TLS_LOG_FORMAT = (
    "|".join(
        f"%{op}%"
        for op in (
            "REQUESTED_SERVER_NAME",
            "DOWNSTREAM_TLS_VERSION",
            "DOWNSTREAM_PEER_SUBJECT",
            "DOWNSTREAM_PEER_ISSUER",
            "DOWNSTREAM_PEER_URI_SAN",
            "DOWNSTREAM_PEER_DNS_SAN",
            "DOWNSTREAM_PEER_SERIAL",
            "DOWNSTREAM_PEER_FINGERPRINT_256",
            "DOWNSTREAM_PEER_FINGERPRINT_1",
            "REQ(X-CASE)",
        )
    )
    + "\n"
)
HCM_NAME = "envoy.filters.network.http_connection_manager"

TLS_INSPECTOR = {
    "name": "envoy.filters.listener.tls_inspector",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3."
        "TlsInspector"
    },
}


def answering_chain(
    label: str, tls: dict[str, Any] | None, match: dict[str, Any] | None
) -> dict[str, Any]:
    """A filter chain whose every request is answered with ``label`` (direct_response)."""
    hcm = {
        "@type": HCM,
        "stat_prefix": f"chain_{label}",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 200, "body": {"inline_string": label}},
                        }
                    ],
                }
            ]
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    chain: dict[str, Any] = {"filters": [{"name": HCM_NAME, "typed_config": hcm}]}
    if match is not None:
        chain["filter_chain_match"] = match
    if tls is not None:
        chain["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {"@type": TLS, **tls},
        }
    return chain


RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
# On the mtls listener: /echo for the client certificate's URI SAN only; /subject for
# a certificate whose subject is CN=client,O=proxyd tests; /plain-tls for any TLS
# connection; everything else denied.
RBAC_FILTER = {
    "name": "envoy.filters.http.rbac",
    "typed_config": {
        "@type": RBAC,
        "rules": {
            "action": "ALLOW",
            "policies": {
                "client": {
                    "permissions": [{"url_path": {"path": {"exact": "/echo"}}}],
                    "principals": [
                        {"authenticated": {"principal_name": {"exact": "spiffe://test/client"}}}
                    ],
                },
                "subject": {
                    "permissions": [{"url_path": {"path": {"exact": "/subject"}}}],
                    "principals": [
                        {"authenticated": {"principal_name": {"exact": "CN=client,O=proxyd tests"}}}
                    ],
                },
                "any tls": {
                    "permissions": [{"url_path": {"path": {"exact": "/plain-tls"}}}],
                    "principals": [{"authenticated": {}}],
                },
                "sni": {
                    "permissions": [{"requested_server_name": {"exact": "example.com"}}],
                    "principals": [{"header": {"name": "x-sni-check", "present_match": True}}],
                },
            },
        },
    },
}


def listener(name: str, tls: dict[str, Any]) -> dict[str, Any]:
    hcm = {
        "@type": HCM,
        "stat_prefix": name,
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
            *([RBAC_FILTER] if name == "mtls" else []),
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
        ],
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": ADDRESSES[name], "port_value": 0}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ],
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {"@type": TLS, **tls},
                },
            }
        ],
    }


def config(certs: Any, upstream: int, log_path: str) -> str:
    server = {
        "certificate_chain": {"filename": certs.server},
        "private_key": {"filename": certs.server_key},
    }
    other = {
        "certificate_chain": {"filename": certs.other},
        "private_key": {"filename": certs.other_key},
    }
    inline = {
        "certificate_chain": {"inline_string": Path(certs.server).read_text()},
        "private_key": {"inline_string": Path(certs.server_key).read_text()},
    }

    def mtls(uri: str) -> dict[str, Any]:
        return {
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_certificates": [server],
                "validation_context": {
                    "trusted_ca": {"filename": certs.ca},
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"exact": uri}}
                    ],
                },
            },
        }

    listeners = [
        listener(
            "tls",
            {
                "common_tls_context": {
                    "tls_certificates": [server],
                    "alpn_protocols": ["h2", "http/1.1"],
                }
            },
        ),
        listener(
            "tls12",
            {
                "common_tls_context": {
                    "tls_certificates": [inline],
                    "tls_params": {
                        "tls_maximum_protocol_version": "TLSv1_2",
                        "cipher_suites": ["ECDHE-ECDSA-AES256-GCM-SHA384"],
                    },
                }
            },
        ),
        listener("mtls", mtls("spiffe://test/client")),
        listener("mtls_san", mtls("spiffe://test/other")),
        listener("multi", {"common_tls_context": {"tls_certificates": [server, other]}}),
        listener(
            "logged",
            {
                "common_tls_context": {
                    "tls_certificates": [server],
                    "validation_context": {"trusted_ca": {"filename": certs.ca}},
                }
            },
        ),
    ]
    # The TLS operators in an access log; the inspector records the server name.
    logged = listeners[-1]
    logged["listener_filters"] = [TLS_INSPECTOR]
    logged["filter_chains"][0]["filters"][0]["typed_config"]["access_log"] = [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": FILE_LOG,
                "path": log_path,
                "log_format": {"text_format_source": {"inline_string": TLS_LOG_FORMAT}},
            },
        }
    ]
    plain_tls = {"common_tls_context": {"tls_certificates": [server]}}
    other_tls = {"common_tls_context": {"tls_certificates": [other]}}
    inspector = [
        {
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.listener."
                "tls_inspector.v3.TlsInspector"
            },
        }
    ]
    listeners.append(
        {
            "name": "sni",
            "address": {"socket_address": {"address": ADDRESSES["sni"], "port_value": 0}},
            "listener_filters": inspector,
            "filter_chains": [
                answering_chain("A", plain_tls, {"server_names": ["example.com"]}),
                answering_chain("B", plain_tls, {"server_names": ["*.example.org"]}),
                answering_chain(
                    "C",
                    plain_tls,
                    {"server_names": ["www.example.org"], "transport_protocol": "tls"},
                ),
                answering_chain("D", other_tls, {"server_names": ["other.test"]}),
                answering_chain("E", None, {"transport_protocol": "raw_buffer"}),
            ],
            "default_filter_chain": answering_chain("default", plain_tls, None),
        }
    )
    listeners.append(
        {
            "name": "sni_only",
            "address": {"socket_address": {"address": ADDRESSES["sni_only"], "port_value": 0}},
            "listener_filters": inspector,
            "filter_chains": [
                answering_chain("only", plain_tls, {"server_names": ["example.com"]})
            ],
        }
    )
    doc = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": listeners,
            "clusters": [
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
                }
            ],
        },
    }
    return yaml.safe_dump(doc)


def client_context(
    certs: Any,
    alpn: list[str] | None = None,
    cert: tuple[str, str] | None = None,
    min_version: ssl.TLSVersion | None = None,
    max_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=certs.ca)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if cert:
        ctx.load_cert_chain(*cert)
    if min_version:
        ctx.minimum_version = min_version
    if max_version:
        ctx.maximum_version = max_version
    return ctx


def read_response(s: socket.socket) -> bytes:
    """The response, read until its content-length is in or the peer closes (Envoy
    waits up to its delayed_close_timeout, 1 s, for the client to close first after a
    local reply)."""
    data = b""
    while chunk := s.recv(65536):
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        for line in head.split(b"\r\n")[1:] if sep else ():
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length" and len(body) >= int(value):
                return data
    return data


def exchange(
    address: str,
    port: int,
    ctx: ssl.SSLContext,
    sni: str | None,
    path: str = "/echo",
    extra: str = "",
) -> dict[str, Any]:
    """One request over a new TLS connection: what the client saw."""
    raw = socket.create_connection((address, port), timeout=5)
    try:
        try:
            s = ctx.wrap_socket(raw, server_hostname=sni)
        except (ssl.SSLError, OSError) as exc:
            return {"outcome": "handshake refused", "error": type(exc).__name__}
        cn = [v for rdn in s.getpeercert().get("subject", ()) for k, v in rdn if k == "commonName"]
        seen = {"version": s.version(), "alpn": s.selected_alpn_protocol(), "cert": cn[0]}
        try:
            s.sendall(
                f"GET {path} HTTP/1.1\r\nhost: {sni or 'x'}\r\n{extra}"
                "connection: close\r\n\r\n".encode()
            )
            data = read_response(s)
        except (ssl.SSLError, OSError):
            data = b""
        finally:
            s.close()
        if not data:
            return {"outcome": "closed after handshake"}
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        headers = dict(json.loads(body)["headers"]) if body.startswith(b"{") else {}
        if status == 200 and not headers:
            return {**seen, "status": status, "body": body.decode()}
        return {**seen, "status": status, "xfp": headers.get("x-forwarded-proto")}
    finally:
        raw.close()


def resumed(address: str, port: int, ctx: ssl.SSLContext) -> list[bool]:
    """Two connections, the second offering the first one's session (ticket)."""
    session = None
    out = []
    for _ in range(2):
        with socket.create_connection((address, port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="example.com", session=session) as s:
                s.sendall(b"GET /echo HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
                while s.recv(65536):
                    pass
                out.append(s.session_reused)
                session = s.session
    return out


def _log_lines(path: str, n: int) -> list[str] | None:
    """The access log's lines sorted (by case), once there are ``n``."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return None
    if len(lines) < n:
        return None
    return sorted(lines, key=lambda line: line.rsplit("|", 1)[-1])


def plain_exchange(address: str, port: int) -> dict[str, Any]:
    with socket.create_connection((address, port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        try:
            data = read_response(s)
        except OSError:
            data = b""
    if not data:
        return {"outcome": "closed"}
    head, _, body = data.partition(b"\r\n\r\n")
    return {"status": int(head.split(b" ", 2)[1]), "body": body.decode()}


def test_tls_termination_matches_envoy(tmp_path, certs):
    up = UpstreamServer("up")
    up.start()
    client = (certs.client, certs.client_key)
    stranger = (certs.stranger, certs.stranger_key)
    v12, v13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
    cases: dict[str, tuple[str, str, ssl.SSLContext]] = {
        "tls example.com": ("tls", "example.com", client_context(certs)),
        "tls wildcard SAN": ("tls", "www.example.org", client_context(certs)),
        "tls alpn h2+http/1.1": ("tls", "example.com", client_context(certs, ["h2", "http/1.1"])),
        "tls alpn http/1.1": ("tls", "example.com", client_context(certs, ["http/1.1"])),
        "tls client 1.2 only": ("tls", "example.com", client_context(certs, max_version=v12)),
        "tls12 default": ("tls12", "example.com", client_context(certs)),
        "tls12 client 1.3 only": ("tls12", "example.com", client_context(certs, min_version=v13)),
        "mtls good cert": ("mtls", "example.com", client_context(certs, cert=client)),
        "mtls no cert": ("mtls", "example.com", client_context(certs)),
        "mtls wrong CA": ("mtls", "example.com", client_context(certs, cert=stranger)),
        "mtls 1.2 no cert": ("mtls", "example.com", client_context(certs, max_version=v12)),
        "mtls_san SAN mismatch": ("mtls_san", "example.com", client_context(certs, cert=client)),
    }

    no_sni = client_context(certs)
    no_sni.check_hostname = False
    sni_cases: dict[str, tuple[str, str | None, ssl.SSLContext]] = {
        "sni exact": ("sni", "example.com", client_context(certs)),
        "sni wildcard": ("sni", "a.example.org", client_context(certs)),
        "sni wildcard, two labels": ("sni", "x.y.example.org", no_sni),
        "sni exact beats wildcard": ("sni", "www.example.org", client_context(certs)),
        "sni other certificate": ("sni", "other.test", client_context(certs)),
        "sni unknown: default": ("sni", "unknown.example.net", no_sni),
        "no sni: default": ("sni", None, no_sni),
        "sni_only match": ("sni_only", "example.com", client_context(certs)),
        "sni_only no match": ("sni_only", "other.test", no_sni),
        "sni_only no sni": ("sni_only", None, no_sni),
        "multi example.com": ("multi", "example.com", client_context(certs)),
        "multi wildcard": ("multi", "a.example.org", client_context(certs)),
        "multi other.test": ("multi", "other.test", client_context(certs)),
        "multi unknown: first": ("multi", "unknown.test", no_sni),
        "multi no sni: first": ("multi", None, no_sni),
    }

    rbac_cases = {
        "rbac URI SAN": ("example.com", "/echo", ""),
        "rbac subject": ("example.com", "/subject", ""),
        "rbac any TLS": ("example.com", "/plain-tls", ""),
        "rbac SNI matches": ("example.com", "/sni", "x-sni-check: 1\r\n"),
        "rbac SNI differs": ("www.example.org", "/sni", "x-sni-check: 1\r\n"),
        "rbac no policy": ("example.com", "/other", ""),
    }

    def play(port_of: PortOf) -> dict[str, Any]:
        ports = {name: port_of(name) for name in ADDRESSES}
        out = {
            label: exchange(ADDRESSES[lst], ports[lst], ctx, sni)
            for label, (lst, sni, ctx) in cases.items()
        }
        for label, (lst, host, ctx) in sni_cases.items():
            out[label] = exchange(ADDRESSES[lst], ports[lst], ctx, host)
        mtls = (ADDRESSES["mtls"], ports["mtls"], client_context(certs, cert=client))
        for label, (sni, path, extra) in rbac_cases.items():
            out[label] = exchange(*mtls, sni, path, extra)
        logged = (ADDRESSES["logged"], ports["logged"])
        for case, ctx in (("cert", client_context(certs, cert=client)), ("none", no_sni)):
            exchange(*logged, ctx, "a.example.org", extra=f"x-case: {case}\r\n")
        out["access log"] = wait_for(lambda: _log_lines(log_path, 2), timeout=10)
        Path(log_path).write_text("")  # the next proxy starts from an empty log
        out["tls session resumed"] = resumed(ADDRESSES["tls"], ports["tls"], client_context(certs))
        out["sni plaintext"] = plain_exchange(ADDRESSES["sni"], ports["sni"])
        out["sni_only plaintext"] = plain_exchange(ADDRESSES["sni_only"], ports["sni_only"])
        return out

    def pick(stats: dict[str, int]) -> dict[str, int]:
        out = {}
        for k, v in stats.items():
            if ".ssl." in k and k.startswith("listener.127.0.0."):
                if any(x in k for x in (".ciphers.", ".curves.", ".sigalgs.", ".certificate.")):
                    continue  # BoringSSL's names, certificate gauges: known differences
                if v:
                    out[k] = v
            elif k.endswith("downstream_cx_ssl_total") and k.startswith("http.") and v:
                out[k] = v
            elif k.startswith("tls_inspector.") or k.endswith(".no_filter_chain_match"):
                if v:
                    out[k] = v
        return out

    try:
        log_path = str(tmp_path / "tls_access.log")
        pair = run_pair(config(certs, up.port, log_path), tmp_path, play, pick)
    finally:
        up.stop()
    # Both choose h2 by ALPN, and this HTTP/1.1 client's request then fails.
    assert pair.envoy.replies["tls alpn h2+http/1.1"] == {"outcome": "closed after handshake"}
    assert pair.proxyd.replies == pair.envoy.replies
    assert pair.proxyd.stats == pair.envoy.stats
    # What the cases are about, so a change on both sides is noticed too.
    r = pair.proxyd.replies
    assert r["tls example.com"]["xfp"] == "https"
    assert r["tls example.com"]["version"] == "TLSv1.3"
    assert r["tls client 1.2 only"]["version"] == "TLSv1.2"
    assert r["mtls good cert"]["status"] == 200
    assert "status" not in r["mtls no cert"]
    assert {label: r[label]["status"] for label in rbac_cases} == {
        "rbac URI SAN": 200,
        "rbac subject": 200,
        "rbac any TLS": 200,
        # No TLS inspector on this listener: no requested server name, in Envoy too.
        "rbac SNI matches": 403,
        "rbac SNI differs": 403,
        "rbac no policy": 403,
    }
    assert r["tls session resumed"] == [False, True]
    with_cert, without = (line.split("|") for line in r["access log"])
    assert with_cert[0] == "a.example.org" and with_cert[2] == "CN=client,O=proxyd tests"
    assert with_cert[4] == "spiffe://test/client" and with_cert[-1] == "cert"
    assert without[2:-1] == ["-"] * 7 and without[-1] == "none"
    assert [r[f"multi {x}"]["cert"] for x in ("other.test", "unknown: first")] == [
        "other.test",
        "example.com",
    ]
    chosen = {
        label: r[label].get("body")
        for label in (*sni_cases, "sni plaintext")
        if not label.startswith("multi")
    }
    assert chosen == {
        "sni exact": "A",
        "sni wildcard": "B",
        "sni wildcard, two labels": "B",
        "sni exact beats wildcard": "C",
        "sni other certificate": "D",
        "sni unknown: default": "default",
        "no sni: default": "default",
        "sni_only match": "only",
        "sni_only no match": None,
        "sni_only no sni": None,
        "sni plaintext": "E",
    }
