"""The HttpConnectionManager fields that edit requests and responses → epoch
:class:`~proxyd.epoch.HcmTransforms` (the worker side is
:mod:`proxyd.worker.request_transforms`), and its ``http_protocol_options`` → epoch
:class:`~proxyd.epoch.Http1Options` (the worker side is
:mod:`proxyd.protocol.http1_options`)."""

from __future__ import annotations

import ipaddress
from typing import Any

from proxyd.config.proto import join, unpack
from proxyd.config.values import enum_name, wrapped_or
from proxyd.epoch import HcmTransforms, Http1Options
from proxyd.errors import ConfigError

DEFAULT = HcmTransforms()


def compile_transforms(hcm: Any, path: str, file: str) -> HcmTransforms | None:
    """The transforms ``hcm`` sets, or None when it sets none (the request path then
    pays nothing for them)."""
    if hcm.strip_matching_host_port and hcm.HasField("strip_any_host_port"):
        raise ConfigError(
            file,
            join(path, "strip_any_host_port"),
            "only one of strip_matching_host_port or strip_any_host_port can be set",
        )
    if hcm.HasField("delayed_close_timeout"):
        d = hcm.delayed_close_timeout
        if d.seconds or d.nanos:
            raise ConfigError(
                file,
                join(path, "delayed_close_timeout"),
                "delayed_close_timeout other than 0s not supported by proxyd (it closes a "
                "connection as soon as its last response is written)",
            )
    strip = ""
    if hcm.strip_matching_host_port:
        strip = "matching"
    elif hcm.strip_any_host_port:
        strip = "any"
    if hcm.via:
        try:
            hcm.via.encode("latin-1")
        except UnicodeEncodeError:
            raise ConfigError(
                file, join(path, "via"), "via cannot be sent as a header value (not ISO-8859-1)"
            ) from None
    underscores = "ALLOW"
    if hcm.HasField("common_http_protocol_options"):
        underscores = enum_name(hcm.common_http_protocol_options, "headers_with_underscores_action")
    t = HcmTransforms(
        normalize_path=wrapped_or(hcm, "normalize_path", False),
        merge_slashes=hcm.merge_slashes,
        escaped_slashes=_escaped_slashes(hcm),
        server_header_transformation=enum_name(hcm, "server_header_transformation"),
        via=hcm.via,
        skip_xff_append=hcm.skip_xff_append,
        preserve_external_request_id=hcm.preserve_external_request_id,
        always_set_request_id_in_response=hcm.always_set_request_id_in_response,
        strip_host_port=strip,
        headers_with_underscores=underscores,
        add_user_agent=wrapped_or(hcm, "add_user_agent", False),
        scheme=hcm.scheme_header_transformation.scheme_to_overwrite,
        internal_address_config=hcm.HasField("internal_address_config"),
        internal_cidrs=_cidrs(
            hcm.internal_address_config, join(path, "internal_address_config"), file
        ),
        internal_unix_sockets=hcm.internal_address_config.unix_sockets,
    )
    return None if t == DEFAULT else t


def _cidrs(config: Any, path: str, file: str) -> tuple[str, ...]:
    out = []
    for i, r in enumerate(config.cidr_ranges):
        try:
            net = ipaddress.ip_network(f"{r.address_prefix}/{r.prefix_len.value}", strict=False)
        except ValueError as exc:
            raise ConfigError(
                file, f"{path}.cidr_ranges[{i}]", f"malformed CIDR range: {exc}"
            ) from None
        out.append(str(net))
    return tuple(out)


def _escaped_slashes(hcm: Any) -> str:
    name = enum_name(hcm, "path_with_escaped_slashes_action")
    # IMPLEMENTATION_SPECIFIC_DEFAULT is KEEP_UNCHANGED in Envoy (its runtime key
    # http_connection_manager.path_with_escaped_slashes_action is not set).
    return "KEEP_UNCHANGED" if name == "IMPLEMENTATION_SPECIFIC_DEFAULT" else name


def compile_http1_options(hcm: Any, path: str, file: str) -> Http1Options | None:
    """``hcm.http_protocol_options`` as proxyd runs it, or None when it changes nothing
    (the fields proxyd does not implement were refused by name before this)."""
    if not hcm.HasField("http_protocol_options"):
        return None
    o = hcm.http_protocol_options
    path = join(path, "http_protocol_options")
    host = o.default_host_for_http_10
    if host:
        try:
            host.encode("latin-1")
        except UnicodeEncodeError:
            raise ConfigError(
                file,
                join(path, "default_host_for_http_10"),
                "cannot be sent as a Host header (not ISO-8859-1)",
            ) from None
    key_format = ""
    envoy_proper = False
    fmt = o.header_key_format
    which = fmt.WhichOneof("header_format") if o.HasField("header_key_format") else None
    if which == "proper_case_words":
        key_format = "proper_case_words"
    elif which == "stateful_formatter":
        # The coverage tree lets only the preserve_case formatter through.
        config = unpack(fmt.stateful_formatter.typed_config)
        assert config is not None
        key_format = "preserve_case"
        envoy_proper = enum_name(config, "formatter_type_on_envoy_headers") == "PROPER_CASE"
    t = Http1Options(
        accept_http_10=o.accept_http_10,
        default_host_for_http_10=host,
        header_key_format=key_format,
        envoy_headers_proper_case=envoy_proper,
    )
    return None if t == Http1Options() else t
