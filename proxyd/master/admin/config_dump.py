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
    return {
        "configs": [
            {
                "@type": _ADMIN + "BootstrapConfigDump",
                "bootstrap": bootstrap,
                "last_updated": updated,
            },
            {
                "@type": _ADMIN + "ClustersConfigDump",
                "static_clusters": [
                    {"cluster": {"@type": _CLUSTER, **c}, "last_updated": updated} for c in clusters
                ],
            },
            {
                "@type": _ADMIN + "ListenersConfigDump",
                "static_listeners": [
                    {"listener": {"@type": _LISTENER, **x}, "last_updated": updated}
                    for x in listeners
                ],
            },
            {"@type": _ADMIN + "ScopedRoutesConfigDump"},
            {
                "@type": _ADMIN + "RoutesConfigDump",
                "static_route_configs": [
                    {"route_config": {"@type": _ROUTE, **rc}, "last_updated": updated}
                    for rc in routes
                ],
            },
            {"@type": _ADMIN + "SecretsConfigDump"},
        ]
    }
