"""The master's outlier detection: one ClusterDetector per cluster, fed by the workers.

:class:`OutlierDetector` keeps a :class:`~proxyd.master.outlier.detector.ClusterDetector`
for every cluster of the current epoch that has ``outlier_detection`` (a changed
configuration starts it afresh, as Envoy's new cluster does). Workers' ``HostOutcomes``
reports go to :meth:`OutlierDetector.add_report`; :meth:`OutlierDetector.run` ticks
each cluster's detector every ``interval``. When a host is ejected or comes back,
:meth:`wait_changed` wakes the master, which publishes a new epoch with
:meth:`apply` (``Endpoint.ejected``); every epoch the master builds goes through
:meth:`apply` too, so a reload or a DNS refresh keeps the ejections.

A decision takes effect when the workers apply the epoch: an ejection lags the
outcome that caused it by up to a worker watchdog tick (failures are sent at once, see
``proxyd.worker.outcomes``) plus the publish. The master hands :meth:`health_check_passed` to its health checker, so a
passing active check ends an ejection (``successful_active_health_check_uneject_host``). Stats (Envoy's names): ``cluster.<name>.outlier_detection.<counter>`` (see
``detector.COUNTERS``) and the gauge ``cluster.<name>.outlier_detection.ejections_active``.
"""

from __future__ import annotations

import dataclasses
import math
import random

import trio

from proxyd import pipes
from proxyd.epoch import Cluster, Endpoint, Epoch, OutlierDetection
from proxyd.log import get_logger
from proxyd.master.outlier.detector import COUNTERS, ClusterDetector
from proxyd.stats import StatsStore

log = get_logger("proxyd.master.outlier")


def host_label(address: str, port: int) -> str:
    """A host as workers report it and /clusters prints it."""
    return pipes.host_label(address, port)


class _Entry:
    """A cluster's detector and when it ticks next."""

    def __init__(self, detector: ClusterDetector, next_tick: float) -> None:
        self.detector = detector
        self.next_tick = next_tick


class OutlierDetector:
    """Outlier detection for every cluster of the current epoch."""

    def __init__(self, stats: StatsStore, rng: random.Random | None = None) -> None:
        self.stats = stats
        self.rng = rng or random.Random()
        self._clusters: dict[str, _Entry] = {}
        self._changed = trio.Event()
        self._reconfigured = trio.Event()

    # -- epochs -----------------------------------------------------------------------

    def apply(self, epoch: Epoch) -> Epoch:
        """``epoch`` with Endpoint.ejected from the detectors; starts detectors for new
        clusters (or changed configurations) and forgets those gone."""
        wanted = {c.name: c for c in epoch.clusters if c.outlier_detection is not None}
        for name, old in list(self._clusters.items()):
            cluster = wanted.get(name)
            if cluster is None or cluster.outlier_detection != old.detector.config:
                del self._clusters[name]
                self.stats.remove_gauges(f"cluster.{name}.outlier_detection.")
        for name, cluster in wanted.items():
            entry = self._clusters.get(name)
            if entry is None:
                entry = self._clusters[name] = self._new_entry(name, cluster.outlier_detection)
                self._reconfigured.set()
            entry.detector.set_hosts(host_label(e.address, e.port) for e in cluster.endpoints)
            self._update_gauge(name)
        clusters = tuple(self._apply_cluster(c) for c in epoch.clusters)
        if clusters == epoch.clusters:
            return epoch
        return dataclasses.replace(epoch, clusters=clusters)

    def _new_entry(self, name: str, config: OutlierDetection | None) -> _Entry:
        assert config is not None
        prefix = f"cluster.{name}.outlier_detection."
        self.stats.ensure_counters([prefix + c for c in COUNTERS])

        def count(stat: str) -> None:
            self.stats.add_counter(prefix + stat)

        detector = ClusterDetector(config, count, self.rng)
        return _Entry(detector, trio.current_time() + config.interval_s)

    def _apply_cluster(self, c: Cluster) -> Cluster:
        entry = self._clusters.get(c.name)
        if entry is None:
            if any(e.ejected for e in c.endpoints):  # outlier detection was turned off
                endpoints = tuple(dataclasses.replace(e, ejected=False) for e in c.endpoints)
                return dataclasses.replace(c, endpoints=endpoints)
            return c
        endpoints = tuple(self._apply_endpoint(entry.detector, e) for e in c.endpoints)
        return c if endpoints == c.endpoints else dataclasses.replace(c, endpoints=endpoints)

    @staticmethod
    def _apply_endpoint(detector: ClusterDetector, e: Endpoint) -> Endpoint:
        ejected = detector.is_ejected(host_label(e.address, e.port))
        return e if e.ejected == ejected else dataclasses.replace(e, ejected=ejected)

    # -- reports and the interval ------------------------------------------------------

    def add_report(self, outcomes: dict[str, dict[str, list[int]]]) -> None:
        """A worker's HostOutcomes: each host's runs, in order."""
        now = trio.current_time()
        for cluster, hosts in outcomes.items():
            entry = self._clusters.get(cluster)
            if entry is None:
                continue  # outlier detection is off for it now
            for host, runs in hosts.items():
                entry.detector.record(host, runs, now)
            self._after(cluster, entry)

    def health_check_passed(self, cluster: str, address: str, port: int) -> None:
        """The health checker's callback: a check of the host passed and it is healthy
        (see ClusterDetector.health_check_passed)."""
        entry = self._clusters.get(cluster)
        if entry is not None:
            entry.detector.health_check_passed(host_label(address, port), trio.current_time())
            self._after(cluster, entry)

    async def run(self) -> None:
        """Tick each cluster's detector every ``interval`` until cancelled."""
        while True:
            now = trio.current_time()
            due = math.inf
            for name, entry in list(self._clusters.items()):
                if entry.next_tick <= now:
                    entry.detector.tick(now)
                    entry.next_tick = now + entry.detector.config.interval_s
                    self._after(name, entry)
                due = min(due, entry.next_tick)
            with trio.move_on_at(due):
                await self._reconfigured.wait()
                self._reconfigured = trio.Event()

    def _after(self, name: str, entry: _Entry) -> None:
        detector = entry.detector
        if detector.changed:
            detector.changed = False
            self._update_gauge(name)
            ejected = sorted(h for h, m in detector.hosts.items() if m.ejected)
            log.info("outlier_detection_changed", cluster=name, ejected=ejected)
            self._changed.set()

    def _update_gauge(self, name: str) -> None:
        entry = self._clusters[name]
        active = entry.detector.ejections_active
        self.stats.set_gauge(f"cluster.{name}.outlier_detection.ejections_active", active)

    async def wait_changed(self) -> None:
        """Wait until a host was ejected or came back since the last call (one caller:
        the master's publisher)."""
        await self._changed.wait()
        self._changed = trio.Event()

    # -- views ------------------------------------------------------------------------

    def success_rates(self, cluster: str, address: str, port: int) -> tuple[float, float]:
        """(success rate, local-origin success rate) of a host in the last interval, as
        /clusters shows them (-1 when not computed)."""
        entry = self._clusters.get(cluster)
        monitor = entry.detector.hosts.get(host_label(address, port)) if entry else None
        if monitor is None:
            return -1.0, -1.0
        return monitor.success_rate, monitor.local_success_rate
