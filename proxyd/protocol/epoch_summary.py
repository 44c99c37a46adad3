"""What an epoch contains, in brief: ``proxyd --mode validate``'s summary.

:func:`summarize` returns a JSON-able document (the ``summary`` that ``proxyd --mode
validate --json`` prints):

* ``counts``: ``listeners``, ``route_configs`` (one per listener), ``virtual_hosts``,
  ``routes``, ``clusters``, ``endpoints`` and ``http_filters`` (the HTTP filters of every
  listener before its router);
* ``listeners``: ``{name, address, port, http_filters: [name...], route_config: {name,
  rds, virtual_hosts: [{name, domains, routes: [{name, cluster}]}]}}``, where ``rds`` is
  the RouteConfiguration name when the routes come from RDS ("" for inline routes) and a
  route's ``name`` is its name or its match, as in :func:`~proxyd.protocol.epoch_diff.route_key`;
* ``clusters``: ``{name, type, lb_policy, eds, endpoints: ["address:port"...]}``, where
  ``eds`` is the ClusterLoadAssignment name when the endpoints come from EDS, else "".

:func:`format_summary` renders it for people. No I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxyd.epoch import Cluster, Epoch, Listener, Route
from proxyd.protocol.epoch_diff import endpoint_key, route_key

COUNTS = ("listeners", "route_configs", "virtual_hosts", "routes", "clusters", "endpoints", "http_filters")  # fmt: skip


def summarize(epoch: Epoch) -> dict[str, Any]:
    listeners = [_listener(lst) for lst in epoch.listeners]
    clusters = [_cluster(c) for c in epoch.clusters]
    http = [lst for lst in listeners if "route_config" in lst]
    vhosts = [vh for lst in http for vh in lst["route_config"]["virtual_hosts"]]
    counts = {
        "listeners": len(listeners),
        "route_configs": len(http),
        "virtual_hosts": len(vhosts),
        "routes": sum(len(vh["routes"]) for vh in vhosts),
        "clusters": len(clusters),
        "endpoints": sum(len(c["endpoints"]) for c in clusters),
        "http_filters": sum(len(lst["http_filters"]) for lst in listeners),
    }
    return {"counts": counts, "listeners": listeners, "clusters": clusters}


def _listener(lst: Listener) -> dict[str, Any]:
    hcm = lst.hcm
    if hcm is None:
        tcp = lst.tcp_proxy
        assert tcp is not None
        return {
            "name": lst.name,
            "address": lst.address,
            "port": lst.port,
            "http_filters": [],
            "tcp_proxy": {
                "stat_prefix": tcp.stat_prefix,
                "clusters": [tcp.cluster] if tcp.cluster else [c.name for c in tcp.weighted],
            },
        }
    rc = hcm.route_config
    return {
        "name": lst.name,
        "address": lst.address,
        "port": lst.port,
        "http_filters": [f.name for f in hcm.http_filters],
        "route_config": {
            "name": rc.name,
            "rds": hcm.rds_route_config_name if hcm.rds_source is not None else "",
            "virtual_hosts": [
                {
                    "name": vh.name,
                    "domains": list(vh.domains),
                    "routes": [_route(r) for r in vh.routes],
                }
                for vh in rc.virtual_hosts
            ],
        },
    }


def _route(r: Route) -> dict[str, Any]:
    out: dict[str, Any] = {"name": route_key(r), "cluster": r.cluster}
    if r.weighted:
        out["weighted_clusters"] = [{"name": t.name, "weight": t.weight} for t in r.weighted]
    if r.cluster_header:
        out["cluster_header"] = r.cluster_header
    return out


def _cluster(c: Cluster) -> dict[str, Any]:
    return {
        "name": c.name,
        "type": c.type,
        "lb_policy": c.lb_policy,
        "eds": (c.eds_service_name or c.name) if c.eds_source is not None else "",
        "endpoints": [endpoint_key(e) for e in c.endpoints],
    }


def format_counts(counts: Mapping[str, int]) -> str:
    """``2 listeners, 2 route configs, 1 virtual host, ...``"""
    text = ", ".join(_count(counts.get(k, 0), k.replace("_", " ")) for k in COUNTS)
    return text + " before the router"  # the last count is the http filters


def _count(n: int, plural: str) -> str:
    return f"{n} {plural if n != 1 else plural[:-1]}"


def format_summary(summary: Mapping[str, Any]) -> list[str]:
    """The summary as lines: the counts, then each listener with its filters, virtual
    hosts and routes, then each cluster with its endpoints."""
    lines = [format_counts(summary["counts"])]
    for lst in summary["listeners"]:
        address = f"[{lst['address']}]" if ":" in lst["address"] else lst["address"]
        if "tcp_proxy" in lst:
            tcp = lst["tcp_proxy"]
            lines.append(
                f"listener '{lst['name']}' {address}:{lst['port']}: tcp proxy "
                f"'{tcp['stat_prefix']}' -> cluster {', '.join(repr(c) for c in tcp['clusters'])}"
            )
            continue
        filters = ", ".join(lst["http_filters"])
        lines.append(
            f"listener '{lst['name']}' {address}:{lst['port']}: "
            + (f"http filters {filters}, then the router" if filters else "router only")
        )
        rc = lst["route_config"]
        origin = f" (RDS '{rc['rds']}')" if rc["rds"] else ""
        if not rc["virtual_hosts"]:
            lines.append(f"  route config '{rc['name']}'{origin}: no virtual hosts yet" if rc["rds"] else f"  route config '{rc['name']}': no virtual hosts")  # fmt: skip
        for vh in rc["virtual_hosts"]:
            lines.append(
                f"  virtual host '{vh['name']}' (route config '{rc['name']}'{origin}), "
                f"domains {', '.join(vh['domains'])}: {_count(len(vh['routes']), 'routes')}"
            )
            for r in vh["routes"]:
                target = f" -> cluster '{r['cluster']}'" if r["cluster"] else ""
                lines.append(f"    route '{r['name']}'{target}")
    for c in summary["clusters"]:
        eds = f" (EDS '{c['eds']}')" if c["eds"] else ""
        hosts = c["endpoints"]
        lines.append(
            f"cluster '{c['name']}' {c['type']} {c['lb_policy']}{eds}: "
            f"{_count(len(hosts), 'endpoints')}" + (f" {', '.join(hosts)}" if hosts else "")
        )
    return lines
