"""The HttpConnectionManager fields that edit requests and responses → epoch
:class:`~proxyd.epoch.HcmTransforms` (the worker side is
:mod:`proxyd.worker.request_transforms`)."""

from __future__ import annotations

import ipaddress
from typing import Any

from proxyd.config.proto import join
from proxyd.config.values import enum_name, wrapped_or
from proxyd.epoch import HcmTransforms
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
