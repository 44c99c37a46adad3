"""ext_authz's CheckRequest on a TLS connection: the peers' principals, the client
certificate and tls_session (proxyd.filters.ext_authz.service.tls_peers and
proxyd.protocol.ext_authz_grpc), decoded with the xds-protos messages."""

from __future__ import annotations

import urllib.parse
from types import SimpleNamespace
from typing import Any

from envoy.service.auth.v3 import external_auth_pb2

from proxyd.filters.ext_authz.service import tls_peers
from proxyd.protocol import ext_authz_grpc as pb
from proxyd.protocol.access_log_tls import url_encode


def _tls(peer: dict[str, Any] | None, local: Any = None, sni: str = "") -> Any:
    ssl_obj = SimpleNamespace(getpeercert=lambda binary_form=False: b"\x30\x03\x02\x01\x05")
    return SimpleNamespace(peer=peer, local=local, sni=sni, ssl=ssl_obj)


SUBJECT = ((("organizationName", "proxyd tests"),), (("commonName", "who"),))


def test_principal_is_the_uri_san_else_the_dns_san_else_the_subject() -> None:
    both = {"subject": SUBJECT, "subjectAltName": (("DNS", "d1"), ("URI", "u1"), ("URI", "u2"))}
    assert tls_peers(_tls(both), False, False).source_principal == "u1"
    dns = {"subject": SUBJECT, "subjectAltName": (("DNS", "d1"), ("DNS", "d2"))}
    assert tls_peers(_tls(dns), False, False).source_principal == "d1"
    mail = {"subject": SUBJECT, "subjectAltName": (("email", "a@b"),)}
    assert tls_peers(_tls(mail), False, False).source_principal == "CN=who,O=proxyd tests"
    assert tls_peers(_tls(None), False, False).source_principal == ""
    local = SimpleNamespace(subject="CN=srv", uri_sans=(), dns_sans=("srv.test", "x.test"))
    assert tls_peers(_tls(None, local), False, False).destination_principal == "srv.test"


def test_certificate_and_session_only_when_asked() -> None:
    peer = {"subject": SUBJECT}
    bare = tls_peers(_tls(peer, sni="a.test"), False, False)
    assert bare.source_certificate == "" and bare.sni is None
    full = tls_peers(_tls(peer, sni="a.test"), True, True)
    assert full.source_certificate.startswith("-----BEGIN%20CERTIFICATE-----%0A")
    assert full.source_certificate.endswith("-----END%20CERTIFICATE-----%0A")
    assert full.sni == "a.test"
    assert tls_peers(_tls(peer), True, True).sni == ""


def test_url_encode_keeps_only_unreserved_characters() -> None:
    text = "-----BEGIN CERTIFICATE-----\nab+/=_.~\n"
    assert url_encode(text) == urllib.parse.quote(text, safe="")
    assert url_encode("a b") == "a%20b"


def test_check_request_carries_them() -> None:
    peers = pb.TlsPeers("spiffe://c", "PEM%0A", "srv.test", "a.test")
    data = pb.check_request(
        ("10.0.0.1", 1234), ("10.0.0.2", 443), pb.HttpAttributes(method="GET"), 5, {}, peers
    )
    attrs = external_auth_pb2.CheckRequest.FromString(data).attributes
    assert attrs.source.principal == "spiffe://c" and attrs.source.certificate == "PEM%0A"
    assert attrs.source.address.socket_address.port_value == 1234
    assert attrs.destination.principal == "srv.test" and not attrs.destination.certificate
    assert attrs.HasField("tls_session") and attrs.tls_session.sni == "a.test"
    plain = external_auth_pb2.CheckRequest.FromString(
        pb.check_request(("10.0.0.1", 1), None, pb.HttpAttributes(), 5)
    ).attributes
    assert not plain.source.principal and not plain.HasField("tls_session")
    no_sni = pb.TlsPeers(sni="")
    empty = external_auth_pb2.CheckRequest.FromString(
        pb.check_request(None, None, pb.HttpAttributes(), 5, {}, no_sni)
    ).attributes
    assert empty.HasField("tls_session") and empty.tls_session.sni == ""
