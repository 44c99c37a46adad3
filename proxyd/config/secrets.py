"""Secrets (``extensions.transport_sockets.tls.v3.Secret``): the bootstrap's
``static_resources.secrets`` and the ones SDS delivers from watched files.

A TLS context names a secret with an ``SdsSecretConfig``:

* without ``sds_config``, a static secret of the bootstrap, by name: it is compiled
  into the context when the config is (:func:`sds_reference` returns it);
* with ``sds_config.path_config_source`` (or the older ``path``), a file holding a
  DiscoveryResponse with that one Secret: the context keeps a
  :class:`~proxyd.epoch.SdsSecret` reference, the master watches the file (and the
  certificate files the secret names) and fills the values in before it publishes an
  epoch (:func:`fill_downstream`, :func:`fill_upstream`).

SDS from a management server (``api_config_source`` over gRPC or REST, or ADS) is
subscribed like any other xDS type (proxyd.master.xds).
A secret's certificate and key are read and loaded when it is compiled: an unreadable
file, a bad PEM or a key that does not match its certificate is refused naming the
field and the file (a static secret refuses the config; an SDS delivery is rejected and
the last good secret stays).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

from proxyd.config.dynamic import compile_config_source
from proxyd.config.matchers import string_match
from proxyd.config.proto import join
from proxyd.config.values import data_source, enum_name
from proxyd.epoch import (
    Cluster,
    DownstreamTls,
    Listener,
    SanMatch,
    SdsSecret,
    TlsCertificate,
    UpstreamTls,
)
from proxyd.errors import ConfigError
from proxyd.protocol.tls_context import certificate_identity, certificate_names, pem_path

SAN_TYPES = ("DNS", "URI", "EMAIL", "IP_ADDRESS")
# config_source.proto: initial_fetch_timeout defaults to 15 s.
DEFAULT_INITIAL_FETCH_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class CompiledSecret:
    """One Secret with its files read (master only; the epoch gets its values)."""

    name: str
    certificate: TlsCertificate | None = None
    # validation_context: the CA bundle and the SAN matchers.
    validation: bool = False
    trusted_ca: bytes = b""
    san_matchers: tuple[SanMatch, ...] = ()
    # The files it was read from (watched for changes when it came from SDS).
    files: tuple[str, ...] = ()


# The bootstrap's static secrets while its listeners and clusters (or delivered ones)
# are compiled; set by the loader and the xDS client (:func:`static_secrets`).
_STATIC: ContextVar[Mapping[str, CompiledSecret] | None] = ContextVar(
    "proxyd_static_secrets", default=None
)


@contextmanager
def static_secrets(secrets: Mapping[str, CompiledSecret]) -> Iterator[None]:
    token = _STATIC.set(secrets)
    try:
        yield
    finally:
        _STATIC.reset(token)


def compile_static_secrets(secrets: Any, path: str, file: str) -> dict[str, CompiledSecret]:
    out: dict[str, CompiledSecret] = {}
    for i, s in enumerate(secrets):
        here = f"{path}[{i}]"
        if not s.name:
            raise ConfigError(file, join(here, "name"), "a static secret needs a name")
        if s.name in out:
            raise ConfigError(file, join(here, "name"), f"duplicate static secret name '{s.name}'")
        out[s.name] = compile_secret(s, here, file)
    return out


def compile_secret(s: Any, path: str, file: str) -> CompiledSecret:
    """A Secret message → :class:`CompiledSecret` (its files read and checked)."""
    which = s.WhichOneof("type")
    files: list[str] = []
    if which == "tls_certificate":
        c = s.tls_certificate
        cpath = join(path, "tls_certificate")
        cert = certificate(c, cpath, file, files)
        return CompiledSecret(s.name, certificate=cert, files=tuple(files))
    if which == "validation_context":
        vpath = join(path, "validation_context")
        trusted, sans = validation_values(s.validation_context, vpath, file, files)
        if not trusted:
            raise ConfigError(
                file,
                join(vpath, "trusted_ca"),
                "a trusted_ca is required by proxyd in a validation context secret",
            )
        return CompiledSecret(
            s.name, validation=True, trusted_ca=trusted, san_matchers=sans, files=tuple(files)
        )
    raise ConfigError(
        file,
        path,
        f"secret '{s.name}': only tls_certificate and validation_context secrets are "
        f"supported by proxyd{f', not {which}' if which else ''}",
    )


def certificate(c: Any, path: str, file: str, files: list[str]) -> TlsCertificate:
    """A TlsCertificate's chain and key, read and loaded together (a key that does not
    match its certificate, or a PEM OpenSSL cannot read, is refused with the files)."""
    if not c.HasField("certificate_chain"):
        raise ConfigError(file, join(path, "certificate_chain"), "a certificate is required")
    if not c.HasField("private_key"):
        raise ConfigError(file, join(path, "private_key"), "a private key is required")
    chain = read_data_source(c.certificate_chain, join(path, "certificate_chain"), file, files)
    key = read_data_source(c.private_key, join(path, "private_key"), file, files)
    check_key_pair(chain, key, path, file, c)
    subject, uri_sans, dns_sans = certificate_identity(chain)
    return TlsCertificate(
        certificate_chain=chain,
        private_key=key,
        dns_names=certificate_names(chain),
        subject=subject,
        uri_sans=uri_sans,
        dns_sans=dns_sans,
    )


def check_key_pair(chain: bytes, key: bytes, path: str, file: str, c: Any) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with pem_path(chain) as chain_path, pem_path(key) as key_path:
        try:
            ctx.load_cert_chain(chain_path, key_path)
        except ssl.SSLError as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            raise ConfigError(
                file, path, f"OpenSSL refused the certificate or private key{_files(c)}: {reason}"
            ) from None


def _files(c: Any) -> str:
    named = [
        f"{n} '{getattr(c, n).filename}'"
        for n in ("certificate_chain", "private_key")
        if getattr(c, n).WhichOneof("specifier") == "filename"
    ]
    return f" ({', '.join(named)})" if named else ""


def validation_values(
    vc: Any, path: str, file: str, files: list[str]
) -> tuple[bytes, tuple[SanMatch, ...]]:
    trusted = b""
    if vc.HasField("trusted_ca"):
        trusted = read_data_source(vc.trusted_ca, join(path, "trusted_ca"), file, files)
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
                cadata=trusted.decode("latin-1")
            )
        except (ssl.SSLError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            where = (
                f" '{vc.trusted_ca.filename}'"
                if vc.trusted_ca.WhichOneof("specifier") == "filename"
                else ""
            )
            raise ConfigError(
                file, join(path, "trusted_ca"), f"OpenSSL refused the CA bundle{where}: {reason}"
            ) from None
    sans: list[SanMatch] = []
    for i, m in enumerate(vc.match_typed_subject_alt_names):
        mpath = join(path, f"match_typed_subject_alt_names[{i}]")
        san_type = enum_name(m, "san_type")
        if san_type not in SAN_TYPES:
            raise ConfigError(
                file, join(mpath, "san_type"), f"san_type {san_type} not supported by proxyd"
            )
        sans.append(SanMatch(san_type, string_match(m.matcher, join(mpath, "matcher"), file)))
    return trusted, tuple(sans)


def read_data_source(ds: Any, path: str, file: str, files: list[str]) -> bytes:
    if ds.WhichOneof("specifier") == "filename":
        files.append(ds.filename)
    return data_source(ds, path, file)


def sds_reference(cfg: Any, path: str, file: str) -> CompiledSecret | SdsSecret:
    """An SdsSecretConfig: the static secret it names (no ``sds_config``), or the
    reference to the secret its ``sds_config`` delivers."""
    if not cfg.name:
        raise ConfigError(file, join(path, "name"), "a secret name is required")
    if not cfg.HasField("sds_config"):
        static = (_STATIC.get() or {}).get(cfg.name)
        if static is None:
            raise ConfigError(file, join(path, "name"), f"Unknown static secret: {cfg.name}")
        return static
    cs = cfg.sds_config
    spath = join(path, "sds_config")
    source = compile_config_source(cs, spath, file)
    if source.kind == "path" and not os.path.exists(source.path):
        # Envoy checks when it makes the subscription.
        raise ConfigError(
            file,
            join(spath, "path_config_source.path"),
            f"paths must refer to an existing path in the system: '{source.path}' does not exist",
        )
    return SdsSecret(cfg.name, source)


# -- filling a context's SDS values (the master, when it composes an epoch) -------------


def fill_downstream(tls: DownstreamTls, secrets: Mapping[str, CompiledSecret]) -> DownstreamTls:
    """``tls`` with its SDS secrets' values in place, or the names still missing."""
    refs = (*tls.sds_certificates, *((tls.sds_validation,) if tls.sds_validation else ()))
    missing = tuple(r.name for r in refs if _usable(secrets.get(r.name), r, tls) is None)
    if missing:
        return replace(tls, sds_missing=missing)
    certs = tls.certificates + tuple(
        c for r in tls.sds_certificates if (c := secrets[r.name].certificate) is not None
    )
    tls = replace(tls, certificates=certs, sds_missing=())
    if tls.sds_validation is not None:
        v = secrets[tls.sds_validation.name]
        tls = replace(tls, trusted_ca=v.trusted_ca, san_matchers=tls.san_matchers + v.san_matchers)
    return tls


def fill_upstream(tls: UpstreamTls, secrets: Mapping[str, CompiledSecret]) -> UpstreamTls:
    refs = [r for r in (tls.sds_certificate, tls.sds_validation) if r is not None]
    missing = tuple(r.name for r in refs if _usable(secrets.get(r.name), r, tls) is None)
    if missing:
        return replace(tls, sds_missing=missing)
    tls = replace(tls, sds_missing=())
    if tls.sds_certificate is not None:
        tls = replace(tls, certificate=secrets[tls.sds_certificate.name].certificate)
    if tls.sds_validation is not None:
        v = secrets[tls.sds_validation.name]
        tls = replace(tls, trusted_ca=v.trusted_ca, san_matchers=tls.san_matchers + v.san_matchers)
    return tls


def _usable(
    secret: CompiledSecret | None, ref: SdsSecret, tls: DownstreamTls | UpstreamTls
) -> CompiledSecret | None:
    """The secret when it has what ``ref`` asks of it (a certificate for a certificate
    reference, a validation context for the validation one)."""
    if secret is None:
        return None
    wants_validation = ref is tls.sds_validation
    if wants_validation:
        return secret if secret.validation else None
    return secret if secret.certificate is not None else None


def has_sds(tls: DownstreamTls | UpstreamTls | None) -> bool:
    if tls is None:
        return False
    if isinstance(tls, DownstreamTls):
        return bool(tls.sds_certificates) or tls.sds_validation is not None
    return tls.sds_certificate is not None or tls.sds_validation is not None


def secret_refs(value: Listener | Cluster) -> list[SdsSecret]:
    """The SDS secrets a listener's or cluster's TLS contexts name."""
    if isinstance(value, Cluster):
        contexts = [value.tls, *(m.tls for m in value.tls_matches)]
        return [
            r
            for t in contexts
            if t is not None
            for r in (t.sds_certificate, t.sds_validation)
            if r is not None
        ]
    out: list[SdsSecret] = []
    chains = (*value.chains, *((value.default_chain,) if value.default_chain else ()))
    for tls in (value.tls, *(c.tls for c in chains)):
        if tls is not None:
            out += tls.sds_certificates
            if tls.sds_validation is not None:
                out.append(tls.sds_validation)
    return out
