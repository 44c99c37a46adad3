"""A filter chain's ``transport_socket`` (``envoy.transport_sockets.tls`` with a
DownstreamTlsContext) → the epoch's :class:`~proxyd.epoch.DownstreamTls`.

Certificates, keys and CA bundles are read here, in the master, when the epoch is
compiled: a file that cannot be read, or a key OpenSSL refuses, is a config error that
names the field. Workers get the PEM bytes and never open a config file.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import replace
from typing import Any

from proxyd.config.proto import join
from proxyd.config.secrets import certificate, sds_reference, validation_values
from proxyd.config.supported import DOWNSTREAM_TLS_TYPE, RAW_BUFFER_TYPE, unpack
from proxyd.config.values import data_source, duration_or, enum_name, wrapped_or
from proxyd.epoch import DownstreamTls, SanMatch, SdsSecret
from proxyd.errors import ConfigError
from proxyd.protocol.tls_context import (
    CURVES,
    TlsSetupError,
    curve_list,
    server_context,
    server_contexts,
)

TLS_INSPECTOR_NAME = "envoy.filters.listener.tls_inspector"
# What proxyd speaks of the ALPN protocols a listener may offer.
SPOKEN_ALPN = ("h2", "http/1.1", "http/1.0")
# ALPN names of protocols proxyd does not speak: dropped from the offer.
UNSPOKEN_ALPN = ("h2c", "h3")


def check_listener_filters(lst: Any, path: str, file: str) -> bool:
    """Only the TLS inspector (proxyd inspects the ClientHello itself): True when the
    listener has it."""
    for i, lf in enumerate(lst.listener_filters):
        if lf.HasField("typed_config"):
            continue  # the spec walk allowed only TlsInspector
        # Envoy 1.40 finds listener filters by their typed_config only.
        raise ConfigError(
            file, join(path, f"listener_filters[{i}]"),
            f"listener filter '{lf.name}' needs a typed_config (Envoy: no registered "
            "implementation for it with type URL '')",
        )  # fmt: skip
    return bool(lst.listener_filters)


def compile_transport_socket(chain: Any, path: str, file: str) -> DownstreamTls | None:
    """The chain's TLS termination, or None for a plaintext chain (no transport_socket,
    or ``envoy.transport_sockets.raw_buffer``)."""
    if not chain.HasField("transport_socket"):
        return None
    ts = chain.transport_socket
    here = join(path, "transport_socket")
    if not ts.HasField("typed_config"):
        if ts.name == "envoy.transport_sockets.raw_buffer":
            return None
        raise ConfigError(file, here, f"transport socket '{ts.name}' not supported by proxyd")
    ctx = unpack(ts.typed_config)
    if ctx is None or ctx.DESCRIPTOR.full_name != DOWNSTREAM_TLS_TYPE:
        if ctx is not None and ctx.DESCRIPTOR.full_name == RAW_BUFFER_TYPE:
            return None
        raise ConfigError(file, here, f"transport socket '{ts.name}' not supported by proxyd")
    tls = compile_downstream_tls(ctx, join(here, "typed_config"), file)
    timeout = duration_or(chain, "transport_socket_connect_timeout", 0.0)
    if timeout:
        tls = replace(tls, handshake_timeout_s=timeout)
    try:
        if tls.sds_missing:  # the settings now, the certificates when SDS brings them
            server_context(tls)
        else:
            server_contexts(tls)
    except TlsSetupError as exc:
        raise ConfigError(file, join(join(here, "typed_config"), exc.field), exc.reason) from None
    return tls


def compile_downstream_tls(ctx: Any, path: str, file: str) -> DownstreamTls:
    common = ctx.common_tls_context
    cpath = join(path, "common_tls_context")
    certs = [
        certificate(c, join(cpath, f"tls_certificates[{i}]"), file, [])
        for i, c in enumerate(common.tls_certificates)
    ]
    sds_certs: list[SdsSecret] = []
    for i, sc in enumerate(common.tls_certificate_sds_secret_configs):
        spath = join(cpath, f"tls_certificate_sds_secret_configs[{i}]")
        got = sds_reference(sc, spath, file)
        if isinstance(got, SdsSecret):
            sds_certs.append(got)
        elif got.certificate is None:
            raise ConfigError(
                file, join(spath, "name"), f"secret '{sc.name}' holds no tls_certificate"
            )
        else:
            certs.append(got.certificate)
    if not certs and not sds_certs:
        raise ConfigError(
            file,
            join(cpath, "tls_certificates"),
            "a server needs a certificate (tls_certificates is empty)",
        )
    if len(certs) > 1 and any(not c.dns_names for c in certs):
        raise ConfigError(
            file,
            join(cpath, "tls_certificates"),
            "with several certificates each needs a DNS name (SAN or CN) to be chosen by",
        )
    params = common.tls_params
    ppath = join(cpath, "tls_params")
    min_v = enum_name(params, "tls_minimum_protocol_version")
    max_v = enum_name(params, "tls_maximum_protocol_version")
    min_v = "TLSv1_2" if min_v == "TLS_AUTO" else min_v
    max_v = "TLSv1_3" if max_v == "TLS_AUTO" else max_v
    if min_v > max_v:
        raise ConfigError(
            file, ppath, f"tls_minimum_protocol_version {min_v} is above the maximum {max_v}"
        )
    curve = ""
    if params.ecdh_curves:
        curve = ecdh_groups(params.ecdh_curves, join(ppath, "ecdh_curves"), file)
    alpn = _alpn(tuple(common.alpn_protocols), join(cpath, "alpn_protocols"), file)
    trusted, sans, sds_validation = validation(common, cpath, file, require_ca=True)
    require = wrapped_or(ctx, "require_client_certificate", False)
    if require and not trusted and sds_validation is None:
        raise ConfigError(
            file,
            join(path, "require_client_certificate"),
            "require_client_certificate needs common_tls_context.validation_context.trusted_ca",
        )
    crl, crl_leaf_only, hash_pins, spki_pins = (
        revocation_and_pins(common.validation_context, join(cpath, "validation_context"), file)
        if common.HasField("validation_context")
        else (b"", False, (), ())
    )
    return DownstreamTls(
        certificates=tuple(certs),
        crl=crl,
        crl_leaf_only=crl_leaf_only,
        hash_pins=hash_pins,
        spki_pins=spki_pins,
        min_version=min_v,
        max_version=max_v,
        cipher_suites=tuple(params.cipher_suites),
        ecdh_curve=curve,
        alpn=alpn,
        trusted_ca=trusted,
        require_client_certificate=require,
        san_matchers=tuple(sans),
        session_tickets=not ctx.disable_stateless_session_resumption,
        sds_certificates=tuple(sds_certs),
        sds_validation=sds_validation,
        sds_missing=tuple(r.name for r in (*sds_certs, sds_validation) if r is not None),
    )


def ecdh_groups(entries: Any, path: str, file: str) -> str:
    """tls_params.ecdh_curves as an OpenSSL group list (each entry may be a
    ``:``-separated list, as Envoy joins them)."""
    groups, unknown = curve_list(list(entries))
    if unknown:
        raise ConfigError(
            file,
            path,
            f"curve '{unknown[0]}' not supported by proxyd (supported: {', '.join(CURVES)})",
        )
    return groups


def revocation_and_pins(
    vc: Any, path: str, file: str
) -> tuple[bytes, bool, tuple[bytes, ...], tuple[bytes, ...]]:
    """A listener's validation_context ``crl`` (checked by OpenSSL), and its certificate
    pins, checked as Envoy checks them: hex SHA-256 digests (colons allowed) and base64
    SHA-256 digests of a SubjectPublicKeyInfo."""
    crl = b""
    if vc.HasField("crl"):
        crl = data_source(vc.crl, join(path, "crl"), file)
        if b"-----BEGIN X509 CRL-----" not in crl:
            raise ConfigError(file, join(path, "crl"), "Failed to load CRL from the data source")
    hashes = []
    for i, h in enumerate(vc.verify_certificate_hash):
        text = h.replace(":", "")
        try:
            digest = bytes.fromhex(text)
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise ConfigError(
                file,
                join(path, f"verify_certificate_hash[{i}]"),
                f"Invalid hex-encoded SHA-256 {h}",
            )
        hashes.append(digest)
    spkis = []
    for i, b64 in enumerate(vc.verify_certificate_spki):
        try:
            digest = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            digest = b""
        if len(digest) != 32:
            raise ConfigError(
                file,
                join(path, f"verify_certificate_spki[{i}]"),
                f"Invalid base64-encoded SHA-256 {b64}",
            )
        spkis.append(digest)
    return crl, vc.only_verify_leaf_cert_crl, tuple(hashes), tuple(spkis)


def validation(
    common: Any, cpath: str, file: str, require_ca: bool
) -> tuple[bytes, tuple[SanMatch, ...], SdsSecret | None]:
    """A CommonTlsContext's validation: (trusted CA, SAN matchers, the SDS secret that
    brings the rest) from ``validation_context``, ``validation_context_sds_secret_config``
    or ``combined_validation_context`` (its default context, and the SDS secret whose
    values are merged over it when they arrive)."""
    which = common.WhichOneof("validation_context_type")
    if which is None:
        return b"", (), None
    vpath = join(cpath, which)
    if which == "validation_context":
        vc = common.validation_context
        if require_ca and not vc.HasField("trusted_ca"):
            raise ConfigError(
                file,
                join(vpath, "trusted_ca"),
                "a trusted_ca is required by proxyd (a validation context without one "
                "would accept any client certificate)",
            )
        trusted, sans = validation_values(vc, vpath, file, [])
        return trusted, sans, None
    if which == "validation_context_sds_secret_config":
        cfg, default = common.validation_context_sds_secret_config, None
    else:
        combined = common.combined_validation_context
        cfg = combined.validation_context_sds_secret_config
        vpath = join(vpath, "validation_context_sds_secret_config")
        default = combined.default_validation_context
    trusted, sans = b"", ()
    if default is not None:
        dpath = join(cpath, "combined_validation_context.default_validation_context")
        trusted, sans = validation_values(default, dpath, file, [])
    got = sds_reference(cfg, vpath, file)
    if isinstance(got, SdsSecret):
        return trusted, sans, got
    if not got.validation:
        raise ConfigError(
            file, join(vpath, "name"), f"secret '{cfg.name}' holds no validation_context"
        )
    return got.trusted_ca, sans + got.san_matchers, None


def _alpn(offered: tuple[str, ...], path: str, file: str) -> tuple[str, ...]:
    """The ALPN list with the protocols proxyd does not speak (h2c, h3) left out. A
    list with nothing proxyd speaks is refused (its clients could not talk to proxyd).
    (h2 is offered only where the connection manager speaks HTTP/2: proxyd.worker.plan.)"""
    # Envoy joins the entries with "," and splits the result: an entry may list several.
    offered = tuple(p for entry in offered for p in entry.split(",") if p)
    if not offered:
        return ()
    kept = tuple(p for p in offered if p not in UNSPOKEN_ALPN)
    if not kept or any(p not in SPOKEN_ALPN for p in kept):
        raise ConfigError(
            file,
            path,
            f"ALPN {list(offered)}: proxyd speaks only {', '.join(SPOKEN_ALPN)} over TLS "
            "(not supported by proxyd)",
        )
    return kept
