"""Epoch values of TLS: certificates (PEM bytes read by the master), SAN matchers,
and the downstream and upstream TLS contexts.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxyd.epoch_types.routes import StringMatch
from proxyd.epoch_types.sources import ConfigSource


@dataclass(frozen=True, slots=True)
class TlsCertificate:
    """One certificate of a DownstreamTlsContext: PEM bytes read by the master (from the
    file or inline value), so workers never open config files."""

    certificate_chain: bytes
    private_key: bytes
    # The certificate's DNS SANs (lower case; its CN when it has none): which SNI
    # chooses it when a chain has several certificates.
    dns_names: tuple[str, ...] = ()
    # Its subject (as Envoy prints it), URI and DNS SANs: the local certificate's
    # identity (ext_authz's destination principal, the gRPC access log's
    # local_certificate_properties).
    subject: str = ""
    uri_sans: tuple[str, ...] = ()
    dns_sans: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SdsSecret:
    """A secret a TLS context takes from SDS (``*_sds_secret_config`` with an
    ``sds_config``): the master subscribes to it from ``source`` (a watched file, a
    management server over gRPC or REST, or ADS) and fills the context's certificates
    or validation values from it (proxyd.config.secrets.fill_downstream)."""

    name: str
    source: ConfigSource

    @property
    def initial_fetch_timeout_s(self) -> float:
        return self.source.initial_fetch_timeout_s


@dataclass(frozen=True, slots=True)
class SanMatch:
    """Envoy's SubjectAltNameMatcher: a SAN of ``san_type`` ("DNS", "URI", "EMAIL",
    "IP_ADDRESS") that ``matcher`` accepts."""

    san_type: str
    matcher: StringMatch


@dataclass(frozen=True, slots=True)
class DownstreamTls:
    """A filter chain's ``envoy.transport_sockets.tls`` (DownstreamTlsContext)."""

    certificates: tuple[TlsCertificate, ...]
    # "TLSv1_0" .. "TLSv1_3"; Envoy's downstream defaults are TLSv1_2 and TLSv1_3.
    min_version: str = "TLSv1_2"
    max_version: str = "TLSv1_3"
    # OpenSSL cipher names for TLS 1.2 and below ("" entries never; () = default).
    cipher_suites: tuple[str, ...] = ()
    # The OpenSSL group list in preference order ("X25519:prime256v1"), "" = OpenSSL's
    # defaults (proxyd.protocol.tls_context.set_groups).
    ecdh_curve: str = ""
    # ALPN protocols offered, in preference order (() = no ALPN).
    alpn: tuple[str, ...] = ()
    # validation_context.trusted_ca as PEM (b"": client certificates are not asked for).
    trusted_ca: bytes = b""
    require_client_certificate: bool = False
    san_matchers: tuple[SanMatch, ...] = ()
    # validation_context.crl as PEM (b"": none), only_verify_leaf_cert_crl, and the
    # certificate pins: SHA-256 digests of the client certificate (verify_certificate_hash)
    # and of its SubjectPublicKeyInfo (verify_certificate_spki); either kind passing is
    # enough, as in Envoy.
    crl: bytes = b""
    crl_leaf_only: bool = False
    hash_pins: tuple[bytes, ...] = ()
    spki_pins: tuple[bytes, ...] = ()
    # session_timeout (0: OpenSSL's default) and disable_stateless_session_resumption.
    session_timeout_s: float = 0.0
    session_tickets: bool = True
    # FilterChain.transport_socket_connect_timeout (0: the HCM's idle timeout bounds it).
    handshake_timeout_s: float = 0.0
    # SDS: the secrets whose certificates follow ``certificates`` (in order), and the
    # one that holds the validation context; the master fills the values in, and
    # ``sds_missing`` names those not delivered yet (a chain with any is not ready:
    # its connections are closed, as Envoy's handshake fails without the secret).
    sds_certificates: tuple[SdsSecret, ...] = ()
    sds_validation: SdsSecret | None = None
    sds_missing: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """A cluster's ``envoy.transport_sockets.tls`` (UpstreamTlsContext): how proxyd
    originates TLS to the cluster's hosts. PEM bytes read by the master."""

    # The SNI sent ("" = none).
    sni: str = ""
    # A client certificate (mTLS to the upstream), or None.
    certificate: TlsCertificate | None = None
    # Envoy's upstream defaults: TLSv1_2 .. TLSv1_2.
    min_version: str = "TLSv1_2"
    max_version: str = "TLSv1_2"
    cipher_suites: tuple[str, ...] = ()
    # tls_params.ecdh_curves as an OpenSSL group list ("": OpenSSL's defaults).
    ecdh_curve: str = ""
    alpn: tuple[str, ...] = ()
    # validation_context.trusted_ca (b"": the chain is not verified, as in Envoy).
    trusted_ca: bytes = b""
    # match_typed_subject_alt_names (and the deprecated match_subject_alt_names as
    # DNS matchers): the upstream certificate must have a SAN one of them accepts.
    san_matchers: tuple[SanMatch, ...] = ()
    allow_renegotiation: bool = False
    # max_session_keys: 0 = no session resumption, else one session kept per host.
    max_session_keys: int = 1
    # The cluster's HttpProtocolOptions.upstream_http_protocol_options: the SNI is the
    # request's Host (auto_sni), the upstream's certificate must have it as a DNS SAN
    # (auto_san_validation); override_auto_sni_header names another request header.
    auto_sni: bool = False
    auto_san_validation: bool = False
    sni_header: str = ""
    # SDS, as on DownstreamTls: the client certificate's secret, the validation
    # context's, and those not delivered yet (a connection to a host fails then).
    sds_certificate: SdsSecret | None = None
    sds_validation: SdsSecret | None = None
    sds_missing: tuple[str, ...] = ()
