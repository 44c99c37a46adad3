"""A cluster's UpstreamTls → a client-side ``ssl.SSLContext`` (CPython's OpenSSL), and
the peer-certificate reading the SAN checks need.

The master builds one to check a config (a client key that does not match its
certificate is a config error there); each worker builds one per distinct
:class:`~proxyd.epoch.UpstreamTls` (:func:`client_context` is cached on the value,
which is frozen and hashable), never per connection.

As Envoy does, a cluster without ``validation_context.trusted_ca`` does not verify the
upstream's chain; its SAN matchers (if any) are still checked, on the certificate read
in binary form.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

from proxyd.epoch import UpstreamTls
from proxyd.protocol.tls_context import (
    DEFAULT_CIPHERS,
    VERSIONS,
    TlsSetupError,
    pem_path,
    set_groups,
    split_ciphers,
)


@functools.lru_cache(maxsize=256)
def client_context(tls: UpstreamTls) -> ssl.SSLContext:
    """The client-side SSLContext for ``tls``; raises :class:`TlsSetupError` (field
    paths below the UpstreamTlsContext)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # SANs are checked by proxyd's matchers, as Envoy's are
    try:
        ctx.minimum_version = VERSIONS[tls.min_version]
        ctx.maximum_version = VERSIONS[tls.max_version]
    except (ValueError, KeyError) as exc:
        raise TlsSetupError("common_tls_context.tls_params", str(exc)) from None
    names = split_ciphers(tls.cipher_suites or DEFAULT_CIPHERS)
    for name in names:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).set_ciphers(name)
        except ssl.SSLError:
            raise TlsSetupError(
                "common_tls_context.tls_params.cipher_suites",
                f"cipher suite '{name}' is not known to OpenSSL",
            ) from None
    ctx.set_ciphers(":".join(names))
    if tls.ecdh_curve:
        try:
            set_groups(ctx, tls.ecdh_curve)
        except (ValueError, ssl.SSLError) as exc:
            raise TlsSetupError("common_tls_context.tls_params.ecdh_curves", str(exc)) from None
    if tls.certificate is not None:
        cert = tls.certificate
        with pem_path(cert.certificate_chain) as chain, pem_path(cert.private_key) as key:
            try:
                ctx.load_cert_chain(chain, key)
            except ssl.SSLError as exc:
                text = getattr(exc, "reason", None) or str(exc)
                raise TlsSetupError(
                    "common_tls_context.tls_certificates[0]",
                    f"OpenSSL refused the certificate or private key: {text}",
                ) from None
    if tls.alpn:
        ctx.set_alpn_protocols(list(tls.alpn))
    if tls.trusted_ca:
        try:
            ctx.load_verify_locations(cadata=tls.trusted_ca.decode("latin-1"))
        except (ssl.SSLError, ValueError) as exc:
            raise TlsSetupError(
                "common_tls_context.validation_context.trusted_ca",
                f"OpenSSL refused the CA certificates: {getattr(exc, 'reason', None) or exc}",
            ) from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if not tls.allow_renegotiation:
        # BoringSSL (Envoy) refuses a server's renegotiation unless allowed.
        ctx.options |= ssl.OP_NO_RENEGOTIATION
    if not tls.max_session_keys:
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


def peer_certificate(ssock: ssl.SSLSocket) -> dict[str, Any] | None:
    """The upstream's certificate as ``getpeercert()`` decodes it, also when the chain
    was not verified (CERT_NONE, where ``getpeercert()`` returns an empty dict)."""
    if ssock.context.verify_mode != ssl.CERT_NONE:
        return ssock.getpeercert()
    der = ssock.getpeercert(binary_form=True)
    if not der:
        return None
    try:
        with pem_path(ssl.DER_cert_to_PEM_cert(der).encode()) as path:
            return ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
    except (ssl.SSLError, OSError, AttributeError):
        return None


def dns_san_accepts(peer: dict[str, Any] | None, name: str) -> bool:
    """auto_san_validation: a DNS SAN of ``peer`` is ``name`` or a ``*.`` wildcard one
    label above it (case-insensitive)."""
    name = name.lower()
    parent = name.partition(".")[2]
    for kind, value in (peer or {}).get("subjectAltName", ()):
        if kind != "DNS":
            continue
        v = value.lower()
        if v == name or (parent and v == "*." + parent):
            return True
    return False
