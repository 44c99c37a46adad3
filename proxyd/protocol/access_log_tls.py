"""The access log's downstream TLS operators (:mod:`proxyd.protocol.access_log_operators`
registers them): values of ``rec.tls``, the connection's
:class:`proxyd.worker.tls.TlsSocket` (``sni``, ``version``, ``cipher``, ``peer``: the
verified client certificate as ``getpeercert()`` gives it, ``ssl``, ``local``: the
epoch's TlsCertificate the listener presented), None (``-``) on a plaintext connection
or when the value is not there."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Callable
from typing import Any

from proxyd.protocol.tls_context import peer_sans, peer_subject

Value = str | int | None
Getter = Callable[[Any], Value]
TLS_OPERATORS: dict[str, Getter] = {}


# The downstream TLS session's (rec.tls: proxyd.worker.tls.TlsSocket; None on plaintext).
def _tls_attr(attr: str) -> Getter:
    def get(rec: Any) -> Value:
        tls = rec.tls
        return (getattr(tls, attr) or None) if tls is not None else None

    return get


def _peer(fn: Callable[[dict[str, Any]], str]) -> Getter:
    def get(rec: Any) -> Value:
        tls = rec.tls
        if tls is None or not tls.peer:
            return None
        return fn(tls.peer) or None

    return get


def _peer_der(digest: str) -> Getter:
    def get(rec: Any) -> Value:
        tls = rec.tls
        if tls is None or not tls.peer:
            return None
        der = tls.ssl.getpeercert(binary_form=True)
        return hashlib.new(digest, der).hexdigest() if der else None

    return get


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def url_encode(text: str) -> str:
    """Percent-encoding of everything but the unreserved characters (RFC 3986), as
    Envoy encodes a PEM certificate (%DOWNSTREAM_PEER_CERT%, ext_authz)."""
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in text.encode())


def url_encoded_peer_certificate(tls: Any) -> str:
    """The verified client certificate of a TLS session as URL-encoded PEM ("": none)."""
    if not tls.peer:
        return ""
    der = tls.ssl.getpeercert(binary_form=True)
    return url_encode(ssl.DER_cert_to_PEM_cert(der)) if der else ""


def _peer_cert(rec: Any) -> Value:
    tls = rec.tls
    return (url_encoded_peer_certificate(tls) or None) if tls is not None else None


# The certificate the listener presented (rec.tls.local: its epoch TlsCertificate).
def _local(fn: Callable[[Any], str]) -> Getter:
    def get(rec: Any) -> Value:
        tls = rec.tls
        local = tls.local if tls is not None else None
        return (fn(local) or None) if local is not None else None

    return get


# The upstream TLS session's (rec.upstream_tls: proxyd.worker.tls.TlsSocket, its peer the
# host's certificate, read at the handshake; None to a plaintext cluster).
def _upstream_attr(attr: str) -> Getter:
    def get(rec: Any) -> Value:
        tls = rec.upstream_tls
        return (getattr(tls, attr) or None) if tls is not None else None

    return get


def _upstream_peer(fn: Callable[[dict[str, Any]], str]) -> Getter:
    def get(rec: Any) -> Value:
        tls = rec.upstream_tls
        if tls is None or not tls.peer:
            return None
        return fn(tls.peer) or None

    return get


TLS_OPERATORS["UPSTREAM_TLS_VERSION"] = _upstream_attr("version")
TLS_OPERATORS["UPSTREAM_TLS_CIPHER"] = _upstream_attr("cipher")
TLS_OPERATORS["UPSTREAM_PEER_SUBJECT"] = _upstream_peer(peer_subject)
TLS_OPERATORS["UPSTREAM_PEER_ISSUER"] = _upstream_peer(lambda p: peer_subject(p, "issuer"))
TLS_OPERATORS["UPSTREAM_PEER_URI_SAN"] = _upstream_peer(lambda p: peer_sans(p, "URI"))
TLS_OPERATORS["UPSTREAM_PEER_DNS_SAN"] = _upstream_peer(lambda p: peer_sans(p, "DNS"))
TLS_OPERATORS["UPSTREAM_PEER_IP_SAN"] = _upstream_peer(lambda p: peer_sans(p, "IP Address"))
TLS_OPERATORS["REQUESTED_SERVER_NAME"] = _tls_attr("sni")
TLS_OPERATORS["DOWNSTREAM_TLS_VERSION"] = _tls_attr("version")
TLS_OPERATORS["DOWNSTREAM_TLS_CIPHER"] = _tls_attr("cipher")
TLS_OPERATORS["DOWNSTREAM_PEER_SUBJECT"] = _peer(peer_subject)
TLS_OPERATORS["DOWNSTREAM_PEER_ISSUER"] = _peer(lambda p: peer_subject(p, "issuer"))
TLS_OPERATORS["DOWNSTREAM_PEER_URI_SAN"] = _peer(lambda p: peer_sans(p, "URI"))
TLS_OPERATORS["DOWNSTREAM_PEER_DNS_SAN"] = _peer(lambda p: peer_sans(p, "DNS"))
TLS_OPERATORS["DOWNSTREAM_PEER_IP_SAN"] = _peer(lambda p: peer_sans(p, "IP Address"))
TLS_OPERATORS["DOWNSTREAM_PEER_EMAIL_SAN"] = _peer(lambda p: peer_sans(p, "email"))
TLS_OPERATORS["DOWNSTREAM_PEER_SERIAL"] = _peer(lambda p: str(p.get("serialNumber", "")).lower())
TLS_OPERATORS["DOWNSTREAM_PEER_FINGERPRINT_256"] = _peer_der("sha256")
TLS_OPERATORS["DOWNSTREAM_PEER_FINGERPRINT_1"] = _peer_der("sha1")
TLS_OPERATORS["DOWNSTREAM_PEER_CERT"] = _peer_cert
TLS_OPERATORS["DOWNSTREAM_LOCAL_SUBJECT"] = _local(lambda c: c.subject)
TLS_OPERATORS["DOWNSTREAM_LOCAL_URI_SAN"] = _local(lambda c: ",".join(c.uri_sans))
TLS_OPERATORS["DOWNSTREAM_LOCAL_DNS_SAN"] = _local(lambda c: ",".join(c.dns_sans))
