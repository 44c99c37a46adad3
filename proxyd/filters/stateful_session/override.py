"""Host selection with an override host (Envoy's ``HostUtility::selectOverrideHost``).

A stream whose stateful session named a host carries ``override_host`` = (address,
strict). The connection manager asks :func:`pick` before the balancer for the first
attempt (a retry's host is the balancer's: Envoy's router gives no override host to a
retry): the cluster's host of that address (``ip:port``, as
``%UPSTREAM_HOST%`` prints it) is taken when its health status is one of the cluster's
``common_lb_config.override_host_status`` (default UNKNOWN, HEALTHY, DEGRADED). Else
the balancer picks, unless the session is strict: then there is no host (503, "no
healthy upstream").

proxyd's hosts have two of Envoy's statuses: UNKNOWN (no EDS health status, not failing
active health checks, not ejected) and UNHEALTHY (failing active health checks or
ejected by outlier detection). The map of the hosts a session may pick is built for a
cluster state on its first use (a change of health or membership makes a new state).
"""

from __future__ import annotations

from typing import Any

# What the router gives and reads (proxyd.worker.upstream.ClusterState, HostState): the
# filter package imports nothing of the worker.
ClusterState = Any
HostState = Any


def session_hosts(cluster: ClusterState) -> dict[str, HostState]:
    """The hosts an override may pick, by address; built once per cluster state."""
    hosts = cluster.session_hosts
    if hosts is None:
        statuses = cluster.cluster.override_host_status
        usable_ok = "UNKNOWN" in statuses
        unusable_ok = "UNHEALTHY" in statuses
        hosts = cluster.session_hosts = {
            h.label: h for h in cluster.hosts if (usable_ok if h.usable else unusable_ok)
        }
    return hosts


def pick(cluster: ClusterState, override: tuple[str, bool]) -> tuple[HostState | None, bool]:
    """(the host, True) when the override decides: its host, or None in strict mode;
    (None, False) when the balancer is to pick."""
    host = session_hosts(cluster).get(override[0])
    if host is not None:
        return host, True
    return None, override[1]
