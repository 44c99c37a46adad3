"""Envoy's ``/config_dump`` built from the bootstrap as loaded (static resources).

The shape is ``{"configs": [BootstrapConfigDump, ClustersConfigDump,
ListenersConfigDump, ScopedRoutesConfigDump, RoutesConfigDump, SecretsConfigDump]}``,
each tagged with its ``@type`` as Envoy tags them; route configurations are the ones
inlined in HTTP connection managers.
"""

from __future__ import annotations

import datetime
from typing import Any

_ADMIN = "type.googleapis.com/envoy.admin.v3."
_CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
_LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
_ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
_SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def timestamp(wall: float) -> str:
    """Protobuf JSON Timestamp, millisecond precision, as Envoy prints it."""
    t = datetime.datetime.fromtimestamp(wall, datetime.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _get(d: dict[str, Any], snake: str) -> Any:
    """A field in either JSON key style (as written, or protobuf's lowerCamelCase)."""
    if snake in d:
        return d[snake]
    head, *rest = snake.split("_")
    return d.get(head + "".join(w.title() for w in rest))


def route_configs(listener: dict[str, Any]) -> list[dict[str, Any]]:
    """Route configurations inlined in the listener's HTTP connection managers."""
    out = []
    for chain in _get(listener, "filter_chains") or ():
        for f in chain.get("filters") or ():
            typed = _get(f, "typed_config") or {}
            rc = _get(typed, "route_config")
            if isinstance(rc, dict):
                out.append(rc)
    return out


def config_dump(bootstrap: dict[str, Any], loaded_wall: float) -> dict[str, Any]:
    updated = timestamp(loaded_wall)
    static = _get(bootstrap, "static_resources") or {}
    listeners = [x for x in static.get("listeners") or () if isinstance(x, dict)]
    clusters = [c for c in static.get("clusters") or () if isinstance(c, dict)]
    routes = [rc for x in listeners for rc in route_configs(x)]
    static_clusters = [
        {"cluster": {"@type": _CLUSTER, **c}, "last_updated": updated} for c in clusters
    ]
    static_listeners = [
        {"listener": {"@type": _LISTENER, **x}, "last_updated": updated} for x in listeners
    ]
    static_routes = [
        {"route_config": {"@type": _ROUTE, **rc}, "last_updated": updated} for rc in routes
    ]
    static_secrets = [
        {"name": x.get("name", ""), "last_updated": updated, "secret": redacted_secret(x)}
        for x in static.get("secrets") or ()
        if isinstance(x, dict)
    ]
    return {
        "configs": [
            {
                "@type": _ADMIN + "BootstrapConfigDump",
                "bootstrap": bootstrap,
                "last_updated": updated,
            },
            _dump("ClustersConfigDump", static_clusters=static_clusters),
            _dump("ListenersConfigDump", static_listeners=static_listeners),
            {"@type": _ADMIN + "ScopedRoutesConfigDump"},
            _dump("RoutesConfigDump", static_route_configs=static_routes),
            _dump("SecretsConfigDump", static_secrets=static_secrets),
        ]
    }


def redacted_secret(secret: dict[str, Any]) -> dict[str, Any]:
    """A Secret as /config_dump shows it: an inline private key is "[redacted]", as
    Envoy redacts its sensitive fields."""
    out = {"@type": _SECRET, **secret}
    cert = _get(out, "tls_certificate")
    if isinstance(cert, dict):
        key = _get(cert, "private_key")
        if isinstance(key, dict) and any(k.startswith("inline") for k in key):
            cert = {**cert, "private_key": {"inline_string": "[redacted]"}}
            out["tls_certificate"] = cert
            out.pop("tlsCertificate", None)
    return out


def _dump(kind: str, **lists: list[Any]) -> dict[str, Any]:
    """One ``*ConfigDump``; empty lists are left out, as Envoy's JSON leaves them out."""
    return {"@type": _ADMIN + kind, **{k: v for k, v in lists.items() if v}}


# -- dynamic resources (xDS) -------------------------------------------------------------


def add_dynamic(dump: dict[str, Any], state: Any, include_eds: bool) -> None:
    """Add what xDS delivered (``proxyd.master.xds.state.XdsState``) to ``dump``:
    active and warming resources with version_info and last_updated, and the last
    refused update of each type as Envoy's ``error_state``."""
    from google.protobuf import json_format

    from proxyd.master.xds import resources as rs

    def body(res: Any) -> dict[str, Any]:
        return {
            "@type": res.type_url,
            **json_format.MessageToDict(res.message, preserving_proto_field_name=True),
        }

    def error_state(type_url: str, name: str | None) -> dict[str, Any] | None:
        rejected = state.types[type_url].rejected
        if rejected is None or (name is not None and rejected.name != name):
            return None
        out: dict[str, Any] = {
            "last_update_attempt": timestamp(rejected.when),
            "details": rejected.details,
        }
        if rejected.version:
            out["version_info"] = rejected.version
        if rejected.failed is not None:
            out["failed_configuration"] = {
                "@type": rejected.failed.type_url,
                **json_format.MessageToDict(
                    _decoded(rejected.failed), preserving_proto_field_name=True
                ),
            }
        return out

    def entry(res: Any, key: str) -> dict[str, Any]:
        return {"version_info": res.version, key: body(res), "last_updated": timestamp(res.last_updated)}  # fmt: skip

    warming_clusters, warming_listeners = state.warming()
    configs = {c["@type"].rsplit(".", 1)[-1]: c for c in dump["configs"]}

    cds = state.types[rs.CLUSTER]
    clusters = configs["ClustersConfigDump"]
    if cds.version:
        clusters["version_info"] = cds.version
    active = []
    for name, res in sorted(state.active_clusters.items()):
        item = entry(res, "cluster")
        err = error_state(rs.CLUSTER, name)
        if err:
            item["error_state"] = err
        active.append(item)
    if active:
        clusters["dynamic_active_clusters"] = active
    if warming_clusters:
        clusters["dynamic_warming_clusters"] = [entry(r, "cluster") for r in warming_clusters]
    err = error_state(rs.CLUSTER, None)
    if err and not any("error_state" in a for a in active):
        clusters.setdefault("dynamic_active_clusters", []).append({"error_state": err})

    lds = state.types[rs.LISTENER]
    listeners = configs["ListenersConfigDump"]
    if lds.version:
        listeners["version_info"] = lds.version
    warming = {r.name: r for r in warming_listeners}
    names = sorted(set(state.active_listeners) | set(warming))
    rejected = lds.rejected
    if rejected is not None and rejected.name and rejected.name not in names:
        names.append(rejected.name)
    dynamic = []
    for name in names:
        item = {"name": name}
        if name in state.active_listeners:
            item["active_state"] = entry(state.active_listeners[name], "listener")
        if name in warming:
            item["warming_state"] = entry(warming[name], "listener")
        err = error_state(rs.LISTENER, name)
        if err:
            item["error_state"] = err
        dynamic.append(item)
    err = error_state(rs.LISTENER, None)
    if err and (rejected is None or not rejected.name):
        dynamic.append({"name": "", "error_state": err})
    if dynamic:
        listeners["dynamic_listeners"] = dynamic

    routes = []
    for name, r in sorted(state.types[rs.ROUTE].resources.items()):
        item = entry(r, "route_config")
        err = error_state(rs.ROUTE, name)
        if err:
            item["error_state"] = err
        routes.append(item)
    if routes:
        configs["RoutesConfigDump"]["dynamic_route_configs"] = routes
    secrets = [
        {
            "name": name,
            "version_info": r.version,
            "last_updated": timestamp(r.last_updated),
            "secret": redacted_secret(
                json_format.MessageToDict(r.message, preserving_proto_field_name=True)
            ),
        }
        for name, r in sorted(state.types[rs.SECRET].resources.items())
    ]
    if secrets:
        configs["SecretsConfigDump"]["dynamic_active_secrets"] = secrets
    if include_eds:
        eds = [
            {
                "version_info": r.version,
                "endpoint_config": body(r),
                "last_updated": timestamp(r.last_updated),
            }
            for _, r in sorted(state.types[rs.ENDPOINT].resources.items())
        ]
        dump["configs"].insert(
            2, {"@type": _ADMIN + "EndpointsConfigDump", "dynamic_endpoint_configs": eds}
        )


def _decoded(any_msg: Any) -> Any:
    from proxyd.config.supported import unpack

    return unpack(any_msg) or any_msg
