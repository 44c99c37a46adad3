"""The access log's operators of the certificate a TLS listener presented
(``%DOWNSTREAM_LOCAL_SUBJECT%``, ``%DOWNSTREAM_LOCAL_URI_SAN%``,
``%DOWNSTREAM_LOCAL_DNS_SAN%``) and of the client's, URL-encoded
(``%DOWNSTREAM_PEER_CERT%``): proxyd beside real Envoy on the same YAML, a listener with
three certificates that SNI chooses between and an optional client certificate, a
plaintext listener (every one ``-``)."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import Pair, PortOf, run_pair
from tests.support import bootstrap, dump_yaml, http_listener, wait_for
from tests.tls_certs import Certs, _leaf, make_certs

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
FORMAT = (
    "%REQ(:PATH)%|%DOWNSTREAM_LOCAL_SUBJECT%|%DOWNSTREAM_LOCAL_URI_SAN%|"
    "%DOWNSTREAM_LOCAL_DNS_SAN%|%DOWNSTREAM_PEER_CERT%\n"
)
ROUTES = {
    "virtual_hosts": [
        {
            "name": "all",
            "domains": ["*"],
            "routes": [
                {
                    "match": {"prefix": "/"},
                    "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
                }
            ],
        }
    ]
}


def config(certs: Certs, log_path: str) -> str:
    log = [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": FILE_LOG,
                "path": log_path,
                "log_format": {"text_format_source": {"inline_string": FORMAT}},
            },
        }
    ]
    tls = http_listener("tls", 0, ROUTES, access_log=log)
    tls["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS,
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": certs.path(f"{name}.pem")},
                        "private_key": {"filename": certs.path(f"{name}.key")},
                    }
                    for name in ("server", "other", "uriserver")
                ],
                "validation_context": {"trusted_ca": {"filename": certs.ca}},
            },
        },
    }
    plain = http_listener("plain", 0, ROUTES, access_log=log)
    return dump_yaml(bootstrap([tls, plain], []))


# (SNI or None, client certificate or None, path)
CASES = [
    ("example.com", "client", "/server-with-client"),
    ("www.example.org", None, "/wildcard"),
    ("other.test", "client", "/other"),
    ("uri.test", None, "/uri"),
    (None, None, "/no-sni"),
]


def tls_request(port: int, certs: Certs, sni: str | None, cert: str | None, path: str) -> None:
    ctx = ssl.create_default_context(cafile=certs.ca)
    ctx.check_hostname = False
    if cert is not None:
        ctx.load_cert_chain(certs.path(f"{cert}.pem"), certs.path(f"{cert}.key"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
            while s.recv(65536):
                pass


def play(port_of: PortOf, certs: Certs, log: Path) -> dict[str, Any]:
    log.write_text("")
    for sni, cert, path in CASES:
        tls_request(port_of("tls"), certs, sni, cert, path)
    with socket.create_connection(("127.0.0.1", port_of("plain")), timeout=5) as s:
        s.sendall(b"GET /plain HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        while s.recv(65536):
            pass
    want = len(CASES) + 1
    wait_for(lambda: len(log.read_text().splitlines()) >= want)
    return {"lines": sorted(log.read_text().splitlines())}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    where = Path(tmp_path_factory.mktemp("local-certs"))
    certs = make_certs(where)
    _leaf("uriserver", "ca", "uri.test", "URI:spiffe://test/server,DNS:uri.test", "serverAuth",
          where)  # fmt: skip
    work = Path(tmp_path_factory.mktemp("local-log"))
    log = work / "access.log"
    yield run_pair(config(certs, str(log)), work, lambda port_of: play(port_of, certs, log))


def test_lines_like_envoy(results: Pair) -> None:
    assert results.proxyd.replies["lines"] == results.envoy.replies["lines"]


def test_envoy_logs_what_the_cases_say(results: Pair) -> None:
    lines = {line.split("|")[0]: line.split("|")[1:] for line in results.envoy.replies["lines"]}
    subject, uri, dns, cert = lines["/server-with-client"]
    assert (subject, uri, dns) == (
        "CN=example.com,O=proxyd tests",
        "-",
        "example.com,*.example.org",
    )
    assert cert.startswith("-----BEGIN%20CERTIFICATE-----%0A")
    assert lines["/wildcard"][:2] == ["CN=example.com,O=proxyd tests", "-"]
    assert lines["/wildcard"][3] == "-"
    assert lines["/other"][0] == "CN=other.test,O=proxyd tests"
    assert lines["/uri"][1:3] == ["spiffe://test/server", "uri.test"]
    assert lines["/plain"] == ["-", "-", "-", "-"]
