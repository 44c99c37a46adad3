"""``envoy.extensions.filters.http.rbac.v3.RBAC`` and ``RBACPerRoute`` → plain data.

The epoch carries, for the filter::

    {"rules": Rules | None, "shadow": Rules | None,
     "rules_stat_prefix": str, "shadow_rules_stat_prefix": str}
    Rules = {"action": "ALLOW" | "DENY" | "LOG", "policies": [[name, [Rule], [Rule]]]}

with the policies sorted by name (Envoy keeps them in an ordered map and reports the
first that matches), each with its permissions and its principals. A route's
``RBACPerRoute`` is ``{"rbac": <the same> | None}``: without ``rbac`` the filter is off
on that route. A rule is a tagged list, the tag first:

* ``["any"]``; ``["and", [Rule]]``, ``["or", [Rule]]``, ``["not", Rule]``;
* ``["header", HeaderMatch wire]`` (:func:`proxyd.config.matchers.header_match`),
  ``["path", StringMatch wire]`` (url_path), ``["sni", StringMatch wire]``
  (requested_server_name);
* ``["destination_ip", cidr]``, ``["destination_port", n]``,
  ``["destination_port_range", start, end]``;
* ``["remote_ip", cidr]``, ``["direct_remote_ip", cidr]`` (``source_ip``, deprecated,
  is the connection's peer as ``direct_remote_ip``);
* ``["authenticated", StringMatch wire | None]``: a TLS connection (with a verified
  client certificate whose URI SANs, DNS SANs or subject the matcher accepts, when it
  has one);
* ``["metadata", namespace, [key, ...], Value, invert]``: the stream's dynamic metadata
  (``metadata``, and ``sourced_metadata`` with the DYNAMIC source: what jwt_authn's
  ``payload_in_metadata``, set_metadata or header_to_metadata set) at that path, tested
  by a value matcher: ``["null"]``, ``["double", exact | None, start, end]``,
  ``["string", StringMatch wire]``, ``["bool", b]``, ``["present", b]``,
  ``["list", Value]`` (one_of) or ``["or", [Value]]``.

What proxyd does not implement is left out of :data:`SPEC` and refused by name:
``matcher`` and ``shadow_matcher`` (the generic matcher API), ``track_per_rule_stats``,
``audit_logging_options``, a policy's ``condition``, ``checked_condition`` and
``cel_config`` (CEL), ``sourced_metadata`` from the ROUTE source (proxyd keeps no route
metadata), and the ``matcher``, ``uri_template``, ``filter_state`` and ``custom`` rules.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from proxyd.config.matchers import header_match, string_match
from proxyd.config.proto import join
from proxyd.config.spec import HEADER_MATCHER, LEAF, STRING_MATCHER, Spec
from proxyd.config.values import enum_name
from proxyd.epoch import to_wire
from proxyd.errors import ConfigError

TYPE = "envoy.extensions.filters.http.rbac.v3.RBAC"
PER_ROUTE_TYPE = "envoy.extensions.filters.http.rbac.v3.RBACPerRoute"

_CIDR: Spec = {"address_prefix": LEAF, "prefix_len": LEAF}
_PATH: Spec = {"path": STRING_MATCHER}
_VALUE: dict[str, Spec] = {
    "null_match": {},
    "double_match": {"range": {"start": LEAF, "end": LEAF}, "exact": LEAF},
    "string_match": STRING_MATCHER,
    "bool_match": LEAF,
    "present_match": LEAF,
}
_VALUE["list_match"] = {"one_of": _VALUE}
_VALUE["or_match"] = {"value_matchers": _VALUE}
METADATA: Spec = {"filter": LEAF, "path": {"key": LEAF}, "value": _VALUE, "invert": LEAF}
SOURCED_METADATA: Spec = {"metadata_matcher": METADATA, "metadata_source": LEAF}
PERMISSION: dict[str, Spec] = {
    "any": LEAF,
    "header": HEADER_MATCHER,
    "url_path": _PATH,
    "destination_ip": _CIDR,
    "destination_port": LEAF,
    "destination_port_range": {"start": LEAF, "end": LEAF},
    "requested_server_name": STRING_MATCHER,
    "metadata": METADATA,
    "sourced_metadata": SOURCED_METADATA,
}
PERMISSION.update(
    {"and_rules": {"rules": PERMISSION}, "or_rules": {"rules": PERMISSION}, "not_rule": PERMISSION}
)
PRINCIPAL: dict[str, Spec] = {
    "any": LEAF,
    "header": HEADER_MATCHER,
    "url_path": _PATH,
    "remote_ip": _CIDR,
    "direct_remote_ip": _CIDR,
    "source_ip": _CIDR,
    "authenticated": {"principal_name": STRING_MATCHER},
    "metadata": METADATA,
    "sourced_metadata": SOURCED_METADATA,
}
PRINCIPAL.update({"and_ids": {"ids": PRINCIPAL}, "or_ids": {"ids": PRINCIPAL}, "not_id": PRINCIPAL})
RULES: Spec = {
    "action": LEAF,
    "policies": {"permissions": PERMISSION, "principals": PRINCIPAL},
}
SPEC: Spec = {
    "rules": RULES,
    "rules_stat_prefix": LEAF,
    "shadow_rules": RULES,
    "shadow_rules_stat_prefix": LEAF,
}
PER_ROUTE_SPEC: Spec = {"rbac": SPEC}


def compile(msg: Any, path: str, file: str) -> dict[str, Any]:
    return {
        "rules": compile_rules(msg.rules, join(path, "rules"), file)
        if msg.HasField("rules")
        else None,
        "shadow": (
            compile_rules(msg.shadow_rules, join(path, "shadow_rules"), file)
            if msg.HasField("shadow_rules")
            else None
        ),
        "rules_stat_prefix": msg.rules_stat_prefix,
        "shadow_rules_stat_prefix": msg.shadow_rules_stat_prefix,
    }


def compile_per_route(msg: Any, path: str, file: str) -> dict[str, Any]:
    if not msg.HasField("rbac"):
        return {"rbac": None}
    return {"rbac": compile(msg.rbac, join(path, "rbac"), file)}


def compile_rules(rules: Any, path: str, file: str) -> dict[str, Any]:
    policies = []
    for name in sorted(rules.policies):
        p = rules.policies[name]
        here = f"{join(path, 'policies')}[{name!r}]"
        perms = [
            _permission(x, f"{join(here, 'permissions')}[{i}]", file)
            for i, x in enumerate(p.permissions)
        ]
        principals = [
            _principal(x, f"{join(here, 'principals')}[{i}]", file)
            for i, x in enumerate(p.principals)
        ]
        policies.append([name, perms, principals])
    return {"action": enum_name(rules, "action"), "policies": policies}


def _permission(p: Any, path: str, file: str) -> list[Any]:
    which = p.WhichOneof("rule")
    here = join(path, which or "rule")
    if which == "any":
        return ["any"]
    if which == "header":
        return ["header", to_wire(header_match(p.header, here, file))]
    if which == "url_path":
        return ["path", to_wire(string_match(p.url_path.path, join(here, "path"), file))]
    if which == "requested_server_name":
        return ["sni", to_wire(string_match(p.requested_server_name, here, file))]
    if which == "destination_ip":
        return ["destination_ip", _cidr(p.destination_ip, here, file)]
    if which == "destination_port":
        return ["destination_port", p.destination_port]
    if which == "destination_port_range":
        r = p.destination_port_range
        return ["destination_port_range", r.start, r.end]
    if which in ("and_rules", "or_rules"):
        rules = getattr(p, which).rules
        return [
            "and" if which == "and_rules" else "or",
            [_permission(x, f"{join(here, 'rules')}[{i}]", file) for i, x in enumerate(rules)],
        ]
    if which == "not_rule":
        return ["not", _permission(p.not_rule, here, file)]
    if which in ("metadata", "sourced_metadata"):
        return _metadata(p, which, here, file)
    raise ConfigError(file, path, "a permission needs one rule")  # the walk refused others


def _principal(p: Any, path: str, file: str) -> list[Any]:
    which = p.WhichOneof("identifier")
    here = join(path, which or "identifier")
    if which == "any":
        return ["any"]
    if which == "header":
        return ["header", to_wire(header_match(p.header, here, file))]
    if which == "url_path":
        return ["path", to_wire(string_match(p.url_path.path, join(here, "path"), file))]
    if which == "remote_ip":
        return ["remote_ip", _cidr(p.remote_ip, here, file)]
    if which in ("direct_remote_ip", "source_ip"):
        return ["direct_remote_ip", _cidr(getattr(p, which), here, file)]
    if which == "authenticated":
        a = p.authenticated
        if not a.HasField("principal_name"):
            return ["authenticated", None]
        name = string_match(a.principal_name, join(here, "principal_name"), file)
        return ["authenticated", to_wire(name)]
    if which in ("and_ids", "or_ids"):
        ids = getattr(p, which).ids
        return [
            "and" if which == "and_ids" else "or",
            [_principal(x, f"{join(here, 'ids')}[{i}]", file) for i, x in enumerate(ids)],
        ]
    if which == "not_id":
        return ["not", _principal(p.not_id, here, file)]
    if which in ("metadata", "sourced_metadata"):
        return _metadata(p, which, here, file)
    raise ConfigError(file, path, "a principal needs one identifier")


def _cidr(r: Any, path: str, file: str) -> str:
    """A CidrRange as "address/len"; an unset prefix_len is 0, as Envoy reads it."""
    try:
        net = ipaddress.ip_network(f"{r.address_prefix}/{r.prefix_len.value}", strict=False)
    except ValueError as exc:
        raise ConfigError(file, path, f"malformed CIDR range: {exc}") from None
    return str(net)


def _metadata(p: Any, which: str, path: str, file: str) -> list[Any]:
    """A metadata rule (``metadata``, or ``sourced_metadata`` from DYNAMIC)."""
    if which == "sourced_metadata":
        sm = p.sourced_metadata
        if enum_name(sm, "metadata_source") != "DYNAMIC":
            raise ConfigError(
                file,
                join(path, "metadata_source"),
                "metadata_source ROUTE (route metadata) is not supported by proxyd",
            )
        m, path = sm.metadata_matcher, join(path, "metadata_matcher")
    else:
        m = p.metadata
    if not m.HasField("value"):
        raise ConfigError(file, join(path, "value"), "value: value is required")
    keys = [seg.key for seg in m.path]
    return ["metadata", m.filter, keys, _value(m.value, join(path, "value"), file), m.invert]


def _value(v: Any, path: str, file: str) -> list[Any]:
    which = v.WhichOneof("match_pattern")
    here = join(path, which or "match_pattern")
    if which == "null_match":
        return ["null"]
    if which == "double_match":
        d = v.double_match
        if d.HasField("range"):
            return ["double", None, d.range.start, d.range.end]
        return ["double", d.exact, 0.0, 0.0]
    if which == "string_match":
        return ["string", to_wire(string_match(v.string_match, here, file))]
    if which == "bool_match":
        return ["bool", v.bool_match]
    if which == "present_match":
        return ["present", v.present_match]
    if which == "list_match":
        return ["list", _value(v.list_match.one_of, join(here, "one_of"), file)]
    if which == "or_match":
        return [
            "or",
            [
                _value(x, f"{join(here, 'value_matchers')}[{i}]", file)
                for i, x in enumerate(v.or_match.value_matchers)
            ],
        ]
    raise ConfigError(file, path, "a value matcher needs one match_pattern")
