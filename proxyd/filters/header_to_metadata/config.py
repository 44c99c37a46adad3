"""``envoy.extensions.filters.http.header_to_metadata.v3.Config`` → plain data.

Request and response rules (the ``PROTOBUF_VALUE`` type and ``BASE64`` encoding are
refused by name). The epoch carries, for the filter and for a route (the same message
per route: the most specific replaces the filter's)::

    {"rules": [rule, ...], "response_rules": [rule, ...]}
    rule = {"header": lower-case name or "", "cookie": name or "",
            "present": kv or None, "missing": kv or None, "remove": bool}

with ``kv`` = ``{"namespace": str, "key": str, "value": str, "type": "STRING" |
"NUMBER", "regex": pattern or "", "substitution": str}``.
"""

from __future__ import annotations

from typing import Any

from proxyd.config.proto import join
from proxyd.config.spec import LEAF, REGEX, Spec
from proxyd.config.values import check_regex, enum_name
from proxyd.errors import ConfigError

TYPE = "envoy.extensions.filters.http.header_to_metadata.v3.Config"
# Envoy's namespace when a rule names none: the filter's own name.
DEFAULT_NAMESPACE = "envoy.filters.http.header_to_metadata"

_KV: Spec = {
    "metadata_namespace": LEAF,
    "key": LEAF,
    "value": LEAF,
    "regex_value_rewrite": {"pattern": REGEX, "substitution": LEAF},
    "type": LEAF,
    "encode": LEAF,
}
_RULE: Spec = {
    "header": LEAF,
    "cookie": LEAF,
    "on_header_present": _KV,
    "on_header_missing": _KV,
    "remove": LEAF,
}
SPEC: Spec = {"request_rules": _RULE, "response_rules": _RULE}
PER_ROUTE_TYPE = TYPE
PER_ROUTE_SPEC = SPEC


def compile(msg: Any, path: str, file: str) -> dict[str, Any]:
    return {
        "rules": _rules(msg.request_rules, join(path, "request_rules"), file),
        "response_rules": _rules(msg.response_rules, join(path, "response_rules"), file),
    }


def _rules(rules_msg: Any, path: str, file: str) -> list[dict[str, Any]]:
    rules = []
    for i, r in enumerate(rules_msg):
        here = f"{path}[{i}]"
        if bool(r.header) == bool(r.cookie):
            raise ConfigError(file, here, "One of Cookie or Header option needs to be specified")
        if r.cookie and r.remove:
            raise ConfigError(file, here, "Cannot specify remove for cookie")
        if not r.HasField("on_header_present") and not r.HasField("on_header_missing"):
            raise ConfigError(
                file, here, "One of on_header_present or on_header_missing needs to be specified"
            )
        rules.append(
            {
                "header": r.header.lower(),
                "cookie": r.cookie,
                "present": _kv(r, "on_header_present", here, file),
                "missing": _kv(r, "on_header_missing", here, file),
                "remove": r.remove,
            }
        )
    return rules


compile_per_route = compile


def _kv(rule: Any, field: str, path: str, file: str) -> dict[str, Any] | None:
    if not rule.HasField(field):
        return None
    kv = getattr(rule, field)
    here = join(path, field)
    kind = enum_name(kv, "type")
    if kind not in ("STRING", "NUMBER"):
        raise ConfigError(file, join(here, "type"), f"type {kind} is not supported by proxyd")
    if enum_name(kv, "encode") != "NONE":
        raise ConfigError(file, join(here, "encode"), "encode BASE64 is not supported by proxyd")
    regex = substitution = ""
    if kv.HasField("regex_value_rewrite"):
        regex = kv.regex_value_rewrite.pattern.regex
        check_regex(regex, join(here, "regex_value_rewrite.pattern.regex"), file)
        substitution = kv.regex_value_rewrite.substitution
    if field == "on_header_missing" and not kv.value:
        raise ConfigError(
            file, join(here, "value"), "Cannot specify on_header_missing rule with empty value"
        )
    return {
        "namespace": kv.metadata_namespace or DEFAULT_NAMESPACE,
        "key": kv.key,
        "value": kv.value,
        "type": kind,
        "regex": regex,
        "substitution": substitution,
    }
