"""Stats the master itself owns: ``server.*``, ``cluster_manager.*``,
``listener_manager.*`` and cluster membership, with Envoy's names and meanings.

Everything else (requests, connections, bytes) is counted by the workers.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import psutil

from proxyd.epoch import Epoch

if TYPE_CHECKING:
    from proxyd.master.master import Master

# Envoy's server.state values.
_STATE_VALUE = {"LIVE": 0, "DRAINING": 1, "PRE_INITIALIZING": 2, "INITIALIZING": 3}

# Counters shown at 0 before the workers count anything, as Envoy shows them.
_CLUSTER_COUNTERS = (
    "upstream_cx_total", "upstream_cx_connect_fail", "upstream_cx_connect_timeout",
    "upstream_rq_total", "upstream_rq_completed", "upstream_rq_timeout",
    "upstream_rq_pending_total", "membership_change", "lb_healthy_panic",
)  # fmt: skip
_LISTENER_COUNTERS = ("downstream_cx_total", "downstream_cx_destroy", "no_filter_chain_match")
_HCM_COUNTERS = (
    "downstream_cx_total", "downstream_cx_destroy", "downstream_cx_http1_total",
    "downstream_rq_total", "downstream_rq_http1_total", "downstream_rq_completed",
    "no_route", "no_cluster", "rq_total",
)  # fmt: skip
# tcp.<stat_prefix>.* of a TCP proxy (proxyd.worker.tcp_proxy counts them).
_TCP_COUNTERS = (
    "downstream_cx_total", "downstream_cx_no_route", "downstream_cx_rx_bytes_total",
    "downstream_cx_tx_bytes_total", "idle_timeout", "max_downstream_connection_duration",
)  # fmt: skip


class ServerStats:
    def __init__(self, master: Master) -> None:
        self.master = master
        self._me = psutil.Process(os.getpid())

    def epoch_changed(self, previous: Epoch, epoch: Epoch) -> None:
        store = self.master.stats
        old_clusters = {c.name: c for c in previous.clusters}
        new_clusters = {c.name: c for c in epoch.clusters}
        for name, cluster in new_clusters.items():
            old = old_clusters.get(name)
            if old is None:
                store.add_counter("cluster_manager.cluster_added")
            elif old != cluster:
                store.add_counter("cluster_manager.cluster_modified")
            if old is None or old.endpoints != cluster.endpoints:
                store.add_counter(f"cluster.{name}.membership_change")
            store.ensure_counters([f"cluster.{name}.{c}" for c in _CLUSTER_COUNTERS])
            store.set_gauge(f"cluster.{name}.membership_total", len(cluster.endpoints))
            store.set_gauge(
                f"cluster.{name}.membership_healthy", sum(1 for e in cluster.endpoints if e.usable)
            )
        for name in old_clusters.keys() - new_clusters.keys():
            store.add_counter("cluster_manager.cluster_removed")
            store.remove_gauges(f"cluster.{name}.membership_")
        store.set_gauge("cluster_manager.active_clusters", len(new_clusters))

        old_listeners = {x.name: x for x in previous.listeners}
        new_listeners = {x.name: x for x in epoch.listeners}
        for name, listener in new_listeners.items():
            old_listener = old_listeners.get(name)
            if old_listener is None:
                store.add_counter("listener_manager.listener_added")
            elif old_listener != listener:
                store.add_counter("listener_manager.listener_modified")
            scope = f"listener.{listener.stat_name}"
            store.ensure_counters([f"{scope}.{c}" for c in _LISTENER_COUNTERS])
            for hcm in listener.hcms:
                prefix = hcm.stat_prefix
                store.ensure_counters([f"http.{prefix}.{c}" for c in _HCM_COUNTERS])
            for tcp in listener.tcp_proxies:
                store.ensure_counters([f"tcp.{tcp.stat_prefix}.{c}" for c in _TCP_COUNTERS])
        for _name in old_listeners.keys() - new_listeners.keys():
            store.add_counter("listener_manager.listener_removed")
        store.set_gauge("listener_manager.total_listeners_active", len(new_listeners))
        store.set_gauge("server.proxyd.epoch", epoch.number)

    def refresh(self) -> None:
        """Update the gauges that change with time (called before each render)."""
        m = self.master
        store = m.stats
        store.set_gauge("server.live", 1 if m.state == "LIVE" else 0)
        store.set_gauge("server.state", _STATE_VALUE.get(m.state, 0))
        store.set_gauge("server.uptime", int(m.uptime_s()))
        store.set_gauge("server.concurrency", m.options.concurrency)
        store.set_gauge("server.hot_restart_epoch", m.options.restart_epoch)
        store.set_gauge("server.hot_restart_generation", m.generation)
        try:
            rss = self._me.memory_info().rss + m.workers.rss_total()
        except psutil.Error:
            return  # a worker exited while we looked; the next refresh is right again
        store.set_gauge("server.memory_physical_size", rss)
