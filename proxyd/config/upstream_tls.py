"""A cluster's ``transport_socket`` (``envoy.transport_sockets.tls`` with an
UpstreamTlsContext) → the epoch's :class:`~proxyd.epoch.UpstreamTls`.

Certificates, keys and CA bundles are read here, in the master (as for the downstream
side, :mod:`proxyd.config.tls`); workers get PEM bytes. The context is built once here
so what OpenSSL refuses is a config error naming the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from proxyd.config.endpoints import struct_labels
from proxyd.config.matchers import string_match
from proxyd.config.proto import join
from proxyd.config.secrets import certificate, sds_reference
from proxyd.config.supported import (
    RAW_BUFFER_TYPE,
    UPSTREAM_HTTP_TYPE,
    UPSTREAM_TLS_TYPE,
    unpack,
)
from proxyd.config.tls import ecdh_groups, validation
from proxyd.config.values import enum_name, wrapped_or
from proxyd.epoch import (
    Cluster,
    ConfigSource,
    FilterChain,
    Listener,
    SanMatch,
    SdsSecret,
    TlsMatch,
    UpstreamTls,
)
from proxyd.errors import ConfigError
from proxyd.protocol.tls_context import TlsSetupError
from proxyd.protocol.upstream_tls_context import client_context

# What proxyd's upstream HTTP/1.1 codec speaks of the ALPN protocols a cluster offers.
UPSTREAM_ALPN = ("http/1.1", "h2")
SAN_TYPES = ("DNS", "URI", "EMAIL", "IP_ADDRESS")


def compile_upstream_transport_socket(c: Any, path: str, file: str) -> UpstreamTls | None:
    """The cluster's TLS origination, or None for plaintext (no transport_socket, or
    ``envoy.transport_sockets.raw_buffer``)."""
    if not c.HasField("transport_socket"):
        return None
    return _transport_socket(c, c.transport_socket, join(path, "transport_socket"), file)


def compile_transport_socket_matches(c: Any, path: str, file: str) -> tuple[TlsMatch, ...]:
    """``transport_socket_matches``: each match's labels and transport socket."""
    out = []
    for i, m in enumerate(c.transport_socket_matches):
        here = join(path, f"transport_socket_matches[{i}]")
        tls = None
        if m.HasField("transport_socket"):
            tls = _transport_socket(c, m.transport_socket, join(here, "transport_socket"), file)
        out.append(TlsMatch(m.name, struct_labels(m.match), tls))
    return tuple(out)


def _transport_socket(c: Any, ts: Any, here: str, file: str) -> UpstreamTls | None:
    if not ts.HasField("typed_config"):
        if ts.name == "envoy.transport_sockets.raw_buffer":
            return None
        raise ConfigError(file, here, f"transport socket '{ts.name}' not supported by proxyd")
    ctx = unpack(ts.typed_config)
    if ctx is not None and ctx.DESCRIPTOR.full_name == RAW_BUFFER_TYPE:
        return None
    if ctx is None or ctx.DESCRIPTOR.full_name != UPSTREAM_TLS_TYPE:
        raise ConfigError(file, here, f"transport socket '{ts.name}' not supported by proxyd")
    tpath = join(here, "typed_config")
    tls = compile_upstream_tls(ctx, tpath, file)
    options = c.typed_extension_protocol_options
    if UPSTREAM_HTTP_TYPE in options:
        opts = unpack(options[UPSTREAM_HTTP_TYPE])
        if opts is not None and opts.HasField("upstream_http_protocol_options"):
            u = opts.upstream_http_protocol_options
            tls = replace(
                tls,
                auto_sni=u.auto_sni,
                auto_san_validation=u.auto_san_validation,
                sni_header=u.override_auto_sni_header.lower(),
            )
    try:
        client_context(tls)
    except TlsSetupError as exc:
        raise ConfigError(file, join(tpath, exc.field), exc.reason) from None
    return tls


def compile_upstream_tls(ctx: Any, path: str, file: str) -> UpstreamTls:
    common = ctx.common_tls_context
    cpath = join(path, "common_tls_context")
    cert = None
    sds_cert = None
    count = len(common.tls_certificates) + len(common.tls_certificate_sds_secret_configs)
    if count > 1:
        raise ConfigError(
            file,
            join(cpath, "tls_certificates"),
            "an upstream TLS context has at most one client certificate (Envoy: Multiple "
            "TLS certificates are not supported for client contexts)",
        )
    for c in common.tls_certificates:
        cert = certificate(c, join(cpath, "tls_certificates[0]"), file, [])
    for sc in common.tls_certificate_sds_secret_configs:
        spath = join(cpath, "tls_certificate_sds_secret_configs[0]")
        got = sds_reference(sc, spath, file)
        if isinstance(got, SdsSecret):
            sds_cert = got
        elif got.certificate is None:
            raise ConfigError(
                file, join(spath, "name"), f"secret '{sc.name}' holds no tls_certificate"
            )
        else:
            cert = got.certificate
    params = common.tls_params
    ppath = join(cpath, "tls_params")
    min_v = enum_name(params, "tls_minimum_protocol_version")
    max_v = enum_name(params, "tls_maximum_protocol_version")
    min_v = "TLSv1_2" if min_v == "TLS_AUTO" else min_v
    # Envoy's client defaults: TLS 1.2 at least and at most (a higher minimum with
    # the maximum unset raises the maximum to it).
    max_v = max("TLSv1_2", min_v) if max_v == "TLS_AUTO" else max_v
    if min_v > max_v:
        raise ConfigError(
            file, ppath, f"tls_minimum_protocol_version {min_v} is above the maximum {max_v}"
        )
    # (Envoy joins the entries with "," and splits the result: an entry may list several.)
    alpn = tuple(p for entry in common.alpn_protocols for p in entry.split(",") if p)
    for i, p in enumerate(alpn):
        if p not in UPSTREAM_ALPN:
            raise ConfigError(
                file,
                join(cpath, f"alpn_protocols[{i}]"),
                f"ALPN protocol '{p}' not supported by proxyd upstream (it speaks "
                f"{', '.join(UPSTREAM_ALPN)} to upstream hosts)",
            )
    trusted, sans, sds_validation = validation(common, cpath, file, require_ca=False)
    if common.HasField("validation_context"):
        vc = common.validation_context
        vpath = join(cpath, "validation_context")
        deprecated: list[SanMatch] = []
        for i, m in enumerate(vc.match_subject_alt_names):
            # The deprecated field: Envoy matches it against DNS, URI, EMAIL and IP SANs.
            mpath = join(vpath, f"match_subject_alt_names[{i}]")
            sm = string_match(m, mpath, file)
            deprecated.extend(SanMatch(t, sm) for t in SAN_TYPES)
        sans = sans + tuple(deprecated)
    return UpstreamTls(
        sni=ctx.sni,
        certificate=cert,
        min_version=min_v,
        max_version=max_v,
        cipher_suites=tuple(params.cipher_suites),
        ecdh_curve=(
            ecdh_groups(params.ecdh_curves, join(ppath, "ecdh_curves"), file)
            if params.ecdh_curves
            else ""
        ),
        alpn=alpn,
        trusted_ca=trusted,
        san_matchers=tuple(sans),
        allow_renegotiation=ctx.allow_renegotiation,
        max_session_keys=wrapped_or(ctx, "max_session_keys", 1),
        sds_certificate=sds_cert,
        sds_validation=sds_validation,
        sds_missing=tuple(r.name for r in (sds_cert, sds_validation) if r is not None),
    )


def check_tls_cluster_uses(
    clusters: Sequence[Cluster],
    listeners: Sequence[Listener],
    sink_clusters: Sequence[str],
    sources: Sequence[tuple[str, ConfigSource | None]],
    file: str,
) -> None:
    """The clients that are not the worker's pools (xDS in the master, the statsd TCP
    sink, trace export) connect in plaintext: a TLS cluster named by one is refused by
    name rather than spoken to in plaintext."""
    tls = {c.name for c in clusters if c.tls is not None or any(m.tls for m in c.tls_matches)}
    if not tls:
        return
    why = "has a TLS transport_socket, which is supported by proxyd only for routes, the TCP proxy and health checks"  # noqa: E501
    for where, source in sources:
        if source is not None and source.cluster in tls:
            raise ConfigError(
                file,
                where,
                f"xDS over TLS is not supported by proxyd: cluster '{source.cluster}' {why}",
            )
    for i, name in enumerate(sink_clusters):
        if name in tls:
            raise ConfigError(
                file,
                f"stats_sinks[{i}].typed_config.tcp_cluster_name",
                f"a statsd TCP sink over TLS is not supported by proxyd: cluster '{name}' {why}",
            )
    for i, lst in enumerate(listeners):
        for chain in lst.chains or ((lst.hcm,) if lst.hcm else ()):
            hcm = chain.hcm if isinstance(chain, FilterChain) else chain
            t = hcm.tracing if hcm is not None else None
            if t is not None and t.collector_cluster in tls:
                raise ConfigError(
                    file,
                    f"static_resources.listeners[{i}]",
                    "trace export over TLS is not supported by proxyd: cluster "
                    f"'{t.collector_cluster}' {why}",
                )
