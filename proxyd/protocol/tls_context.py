"""A filter chain's DownstreamTls → an ``ssl.SSLContext`` (CPython's OpenSSL), and the
checks of a peer certificate that ``ssl`` does not make itself.

No I/O beyond OpenSSL loading PEM: the master builds a context once to check a config
(a key that does not match its certificate is a config error there), each worker
builds its own from the same epoch values. PEM arrives as bytes in the epoch; OpenSSL
loads certificate chains and keys only from files, so they go through an anonymous
memory file (``memfd_create``), never a file on disk.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import ipaddress
import os
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from proxyd.epoch import DownstreamTls, SanMatch
from proxyd.protocol.routing import compile_string_match

VERSIONS = {
    "TLSv1_0": ssl.TLSVersion.TLSv1,
    "TLSv1_1": ssl.TLSVersion.TLSv1_1,
    "TLSv1_2": ssl.TLSVersion.TLSv1_2,
    "TLSv1_3": ssl.TLSVersion.TLSv1_3,
}

# Envoy 1.40's downstream default (BoringSSL's equal-preference groups flattened):
# what TLS 1.2 clients are offered when cipher_suites is empty. TLS 1.3 suites are not
# configurable, in Envoy or here.
DEFAULT_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
)

# Envoy (BoringSSL) curve names → OpenSSL's.
CURVES = {
    "X25519": "X25519",
    "P-256": "prime256v1",
    "P-384": "secp384r1",
    "P-521": "secp521r1",
}


def curve_list(entries: Sequence[str]) -> tuple[str, list[str]]:
    """``tls_params.ecdh_curves`` (each entry may itself be a ``:``-separated list, as
    Envoy joins them): (the OpenSSL group list, the names proxyd does not know)."""
    names = [n for e in entries for n in e.split(":") if n]
    return ":".join(CURVES.get(n, n) for n in names), [n for n in names if n not in CURVES]


def set_groups(ctx: ssl.SSLContext, groups: str) -> None:
    """The context's key-exchange groups, in preference order (``X25519:prime256v1``).

    CPython's ``ssl`` sets a single ECDH curve; a list is given to OpenSSL's
    ``SSL_CTX_set1_groups_list`` through the ``SSL_CTX`` the SSLContext object holds
    (its first field) in the libssl the ``_ssl`` module runs on. ValueError when
    OpenSSL refuses the list."""
    lib = _libssl()
    ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if lib is None or not ptr:
        if ":" not in groups:
            ctx.set_ecdh_curve(groups)  # one curve: CPython's own call will do
            return
        raise ValueError("the libssl of CPython's ssl module was not found")
    if lib.SSL_CTX_ctrl(ptr, _SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode("ascii")) != 1:
        raise ValueError(f"OpenSSL refused the groups {groups}")


_SSL_CTRL_SET_GROUPS_LIST = 92  # SSL_CTX_set1_groups_list is a macro over SSL_CTX_ctrl


@functools.cache
def _libssl() -> Any:
    """The libssl loaded with CPython's _ssl module (from this process's mappings)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "libssl" in line and "/" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        return lib
    return None


class TlsSetupError(Exception):
    """A DownstreamTls that OpenSSL refuses; ``field`` is the path below the
    DownstreamTlsContext ("common_tls_context.tls_certificates[0]", ...)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@contextmanager
def pem_path(data: bytes) -> Iterator[str]:
    """A path OpenSSL can open that holds ``data`` (an anonymous memory file)."""
    fd = os.memfd_create("proxyd-pem", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def split_ciphers(names: tuple[str, ...]) -> list[str]:
    """Envoy's cipher list entries, with BoringSSL's ``[A|B]`` groups flattened."""
    out: list[str] = []
    for entry in names:
        out.extend(p for p in entry.strip("[]").split("|") if p)
    return out


def certificate_names(chain_pem: bytes) -> tuple[str, ...]:
    """The DNS SANs of the first certificate in ``chain_pem`` (lower case), or its CN
    when it has none; () when OpenSSL cannot read it (loading reports that)."""
    try:
        with pem_path(chain_pem) as path:
            # CPython's certificate decoder (what getpeercert() returns), for a file.
            info = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
    except (ssl.SSLError, OSError, AttributeError):
        return ()
    names = tuple(v.lower() for k, v in info.get("subjectAltName", ()) if k == "DNS")
    if names:
        return names
    return tuple(v.lower() for rdn in info.get("subject", ()) for k, v in rdn if k == "commonName")


def certificate_identity(chain_pem: bytes) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(subject as Envoy prints it, URI SANs, DNS SANs) of the first certificate in
    ``chain_pem``; ("", (), ()) when OpenSSL cannot read it (loading reports that)."""
    try:
        with pem_path(chain_pem) as path:
            info = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
    except (ssl.SSLError, OSError, AttributeError):
        return "", (), ()
    sans = info.get("subjectAltName", ())
    return (
        peer_subject(info),
        tuple(v for k, v in sans if k == "URI"),
        tuple(v for k, v in sans if k == "DNS"),
    )


def principal(subject: str, uri_sans: Sequence[str], dns_sans: Sequence[str]) -> str:
    """A certificate's principal as Envoy's ext_authz names a peer: the first URI SAN,
    else the first DNS SAN, else the subject."""
    if uri_sans:
        return uri_sans[0]
    if dns_sans:
        return dns_sans[0]
    return subject


def pick_certificate(names: list[tuple[str, ...]], sni: str) -> int:
    """Which of several certificates an SNI gets, as Envoy chooses: one with the exact
    name, else one with a ``*.`` wildcard covering it, else the first."""
    if sni:
        sni = sni.lower()
        for i, ns in enumerate(names):
            if sni in ns:
                return i
        parent = sni.partition(".")[2]
        if parent:
            for i, ns in enumerate(names):
                if "*." + parent in ns:
                    return i
    return 0


def server_contexts(tls: DownstreamTls) -> list[ssl.SSLContext]:
    """One SSLContext per certificate (all with the same settings), in order."""
    return [server_context(tls, i) for i in range(len(tls.certificates))]


def server_context(tls: DownstreamTls, only: int | None = None) -> ssl.SSLContext:
    """The server-side SSLContext for ``tls`` (with certificate ``only``, or all of
    them); raises :class:`TlsSetupError`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.minimum_version = VERSIONS[tls.min_version]
        ctx.maximum_version = VERSIONS[tls.max_version]
    except (ValueError, KeyError) as exc:
        raise TlsSetupError("common_tls_context.tls_params", str(exc)) from None
    for name in split_ciphers(tls.cipher_suites or DEFAULT_CIPHERS):
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(name)
        except ssl.SSLError:
            raise TlsSetupError(
                "common_tls_context.tls_params.cipher_suites",
                f"cipher suite '{name}' is not known to OpenSSL",
            ) from None
    ctx.set_ciphers(":".join(split_ciphers(tls.cipher_suites or DEFAULT_CIPHERS)))
    if tls.ecdh_curve:
        try:
            set_groups(ctx, tls.ecdh_curve)
        except (ValueError, ssl.SSLError) as exc:
            raise TlsSetupError("common_tls_context.tls_params.ecdh_curves", str(exc)) from None
    for i, cert in enumerate(tls.certificates):
        if only is not None and i != only:
            continue
        field = f"common_tls_context.tls_certificates[{i}]"
        with pem_path(cert.certificate_chain) as chain, pem_path(cert.private_key) as key:
            try:
                ctx.load_cert_chain(chain, key)
            except ssl.SSLError as exc:
                raise TlsSetupError(field, _reason(exc, "certificate or private key")) from None
    if tls.alpn:
        ctx.set_alpn_protocols(list(tls.alpn))
    if tls.trusted_ca:
        try:
            ctx.load_verify_locations(cadata=tls.trusted_ca.decode("latin-1"))
        except (ssl.SSLError, ValueError) as exc:
            raise TlsSetupError(
                "common_tls_context.validation_context.trusted_ca", _reason(exc, "CA bundle")
            ) from None
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
        if tls.crl:
            # Every certificate of the chain needs its CRL, unless only_verify_leaf_cert_crl
            # (Envoy's rule, OpenSSL's CRL_CHECK_ALL).
            with pem_path(tls.crl) as crl:
                try:
                    ctx.load_verify_locations(cafile=crl)
                except (ssl.SSLError, ValueError) as exc:
                    raise TlsSetupError(
                        "common_tls_context.validation_context.crl", _reason(exc, "CRL")
                    ) from None
            ctx.verify_flags |= (
                ssl.VERIFY_CRL_CHECK_LEAF if tls.crl_leaf_only else ssl.VERIFY_CRL_CHECK_CHAIN
            )
    if not tls.session_tickets:
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0
    return ctx


def _reason(exc: Exception, what: str) -> str:
    text = getattr(exc, "reason", None) or str(exc)
    return f"OpenSSL refused the {what}: {text}"


# -- peer certificate checks ----------------------------------------------------------

# getpeercert()'s subjectAltName type names → Envoy's SanType.
_SAN_TYPES = {"DNS": "DNS", "URI": "URI", "email": "EMAIL", "IP Address": "IP_ADDRESS"}


class PinChecker:
    """verify_certificate_hash / verify_certificate_spki: a client certificate passes
    when its SHA-256 digest, or its SubjectPublicKeyInfo's, is one of the pins."""

    def __init__(self, hashes: tuple[bytes, ...], spkis: tuple[bytes, ...]) -> None:
        self.hashes = frozenset(hashes)
        self.spkis = frozenset(spkis)

    def accepts(self, der: bytes) -> bool:
        if hashlib.sha256(der).digest() in self.hashes:
            return True
        if not self.spkis:
            return False
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        try:
            key = x509.load_der_x509_certificate(der).public_key()
        except ValueError:
            return False
        spki = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha256(spki).digest() in self.spkis


class SanChecker:
    """``match_typed_subject_alt_names``: a peer certificate passes when one of its
    SANs passes one matcher (Envoy's rule). A DNS SAN ``*.a.b`` also passes an exact
    matcher for ``x.a.b``, as Envoy's DNS matching allows."""

    def __init__(self, matchers: tuple[SanMatch, ...]) -> None:
        self.matchers = [(m.san_type, m.matcher, compile_string_match(m.matcher)) for m in matchers]

    def __bool__(self) -> bool:
        return bool(self.matchers)

    def accepts(self, peer: dict[str, Any] | None) -> bool:
        sans = [
            (_SAN_TYPES.get(kind, kind), _normal_ip(value) if kind == "IP Address" else value)
            for kind, value in (peer or {}).get("subjectAltName", ())
        ]
        for san_type, sm, match in self.matchers:
            for kind, value in sans:
                if kind != san_type:
                    continue
                if match(value):
                    return True
                if (
                    kind == "DNS"
                    and sm.kind == "exact"
                    and value.startswith("*.")
                    and _wildcard_covers(value, sm.value)
                ):
                    return True
        return False


def _wildcard_covers(san: str, name: str) -> bool:
    head, _, rest = name.partition(".")
    return bool(head) and rest.lower() == san[2:].lower()


def _normal_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return value


def peer_subject(peer: dict[str, Any] | None, key: str = "subject") -> str:
    """A subject or issuer as Envoy prints it (RFC 2253: the last RDN first)."""
    if not peer or key not in peer:
        return ""
    parts = []
    for rdn in reversed(peer[key]):
        parts.append("+".join(f"{_SHORT.get(k, k)}={_escape(v)}" for k, v in rdn))
    return ",".join(parts)


_SHORT = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "emailAddress": "emailAddress",
    "domainComponent": "DC",
    "streetAddress": "STREET",
    "userId": "UID",
}


def _escape(value: str) -> str:
    out = []
    for i, ch in enumerate(value):
        if ch in ',+"\\<>;' or (ch in "# " and i == 0) or (ch == " " and i == len(value) - 1):
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def peer_sans(peer: dict[str, Any] | None, kind: str) -> str:
    """The peer's SANs of one getpeercert() kind ("DNS", "URI", ...), comma-separated."""
    return ",".join(v for k, v in (peer or {}).get("subjectAltName", ()) if k == kind)
