"""``envoy.filters.network.rbac`` (``envoy.extensions.filters.network.rbac.v3.RBAC``)
before a filter chain's connection manager or TCP proxy → :class:`proxyd.epoch.NetworkRbac`.

The rules are the HTTP RBAC filter's (:mod:`proxyd.filters.rbac.config` compiles them);
on a connection, a ``header`` or ``url_path`` rule sees no request (as in Envoy: no
headers, so such a rule does not match). ``enforcement_type`` ``ONE_TIME_ON_FIRST_BYTE``
(the default) judges the connection when its first bytes arrive; ``CONTINUOUS`` (judged
and counted again on every read) is refused by name, as are ``matcher``,
``shadow_matcher`` and ``delay_deny`` (by the allow-list)."""

from __future__ import annotations

from typing import Any

from proxyd.config.proto import join, unpack
from proxyd.config.spec import LEAF, Spec
from proxyd.config.values import enum_name
from proxyd.epoch import NetworkRbac
from proxyd.errors import ConfigError
from proxyd.filters.rbac import config as rbac_config

NAME = "envoy.filters.network.rbac"
TYPE = "envoy.extensions.filters.network.rbac.v3.RBAC"
SPEC: Spec = {
    "rules": rbac_config.RULES,
    "shadow_rules": rbac_config.RULES,
    "stat_prefix": LEAF,
    "shadow_rules_stat_prefix": LEAF,
    "enforcement_type": LEAF,
}


def is_network_rbac(f: Any) -> bool:
    return f.HasField("typed_config") and f.typed_config.type_url.endswith("/" + TYPE)


def compile_network_rbac(filters: Any, path: str, file: str) -> tuple[NetworkRbac, ...]:
    """The RBAC filters among ``filters`` but the last (the terminal one); any other
    network filter before the terminal one is refused by name."""
    out: list[NetworkRbac] = []
    for i, f in enumerate(list(filters)[:-1]):
        here = f"{path}[{i}]"
        if not is_network_rbac(f):
            type_name = (
                f.typed_config.type_url.rsplit("/", 1)[-1] if f.HasField("typed_config") else f.name
            )
            raise ConfigError(
                file,
                here,
                f"network filter '{f.name}' ({type_name}) before the last one is not "
                "supported by proxyd (only envoy.filters.network.rbac is)",
            )
        msg = unpack(f.typed_config)
        assert msg is not None  # the allow-list resolved the type
        at = join(here, "typed_config")
        if enum_name(msg, "enforcement_type") != "ONE_TIME_ON_FIRST_BYTE":
            raise ConfigError(
                file,
                join(at, "enforcement_type"),
                "enforcement_type CONTINUOUS is not supported by proxyd",
            )
        if not msg.stat_prefix:
            raise ConfigError(
                file, join(at, "stat_prefix"), "value length must be at least 1 characters"
            )
        out.append(
            NetworkRbac(
                stat_prefix=msg.stat_prefix,
                config={
                    "rules": rbac_config.compile_rules(msg.rules, join(at, "rules"), file)
                    if msg.HasField("rules")
                    else None,
                    "shadow": rbac_config.compile_rules(
                        msg.shadow_rules, join(at, "shadow_rules"), file
                    )
                    if msg.HasField("shadow_rules")
                    else None,
                    "rules_stat_prefix": "",
                    "shadow_rules_stat_prefix": msg.shadow_rules_stat_prefix,
                },
            )
        )
    return tuple(out)
