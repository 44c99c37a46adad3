"""Upstream clusters of one worker: hosts, balancers and HTTP/1 connection pools.

A :class:`ClusterState` is compiled from an :class:`proxyd.epoch.Cluster` and lives as
long as the cluster is unchanged, across epochs, so its pools and connections survive
reloads. Each :class:`HostState` keeps the idle keep-alive connections to one host
(LIFO, so the warmest is reused and the coldest times out), its
``active_requests`` for the balancer and its :class:`HostStats` (resolved when the
cluster is compiled, so a request never formats a stat name).

An idle connection is checked before reuse: one idle for longer than the cluster's
``idle_timeout_s`` is closed, and one idle for more than :data:`PEEK_AFTER_S` is
peeked (non-blocking) so a peer that closed it, or sent bytes nobody asked for, is
noticed before a request is written to it. A connection handed back moments ago is
reused without the extra syscall; if its upstream closed it in that moment, the
router's retry (a reused connection failing before any response byte) covers it, as
Envoy's does for the same race. :meth:`ClusterState.sweep` peeks all idle connections
about once a second, so a closed upstream does not leave sockets in CLOSE_WAIT.
"""

from __future__ import annotations

import math
import socket
import time

from proxyd.epoch import Cluster, Endpoint
from proxyd.protocol.http1 import ResponseHeadParser
from proxyd.protocol.priority import make_priority_balancer
from proxyd.worker import io
from proxyd.worker.outcomes import NO_LOG, OutcomeLog
from proxyd.worker.stats import ClusterStats, HostStats, StatsStore

UPSTREAM_BUFFER = 64 * 1024
PEEK_AFTER_S = 0.05


class ConnectFailure(Exception):
    """Connecting to an upstream host failed; ``reason`` is Envoy's reset reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UpstreamConnection:
    """One HTTP/1.1 connection to a host, with its receive buffer and head parser."""

    __slots__ = ("sock", "host", "requests", "idle_since", "buf", "view", "start", "end", "parser")

    def __init__(self, sock: socket.socket, host: HostState) -> None:
        self.sock = sock
        self.host = host
        self.requests = 0
        self.idle_since = 0.0
        self.buf = bytearray(UPSTREAM_BUFFER)
        self.view = memoryview(self.buf)
        # Unconsumed bytes are buf[start:end].
        self.start = 0
        self.end = 0
        self.parser = ResponseHeadParser()


class HostState:
    """One endpoint of a cluster as the balancer and the pool see it."""

    __slots__ = (
        "address", "port", "weight", "active_requests", "idle", "cluster", "label", "stats",
        "outcomes", "priority", "locality", "locality_weight", "usable",
    )  # fmt: skip

    def __init__(
        self,
        address: str,
        port: int,
        weight: int,
        cluster: ClusterState,
        store: StatsStore,
        endpoint: Endpoint | None = None,
    ) -> None:
        self.address = address
        self.port = port
        self.weight = weight
        # What proxyd.protocol.priority reads: the endpoint's level, locality and
        # whether it may take traffic outside panic mode (healthy and not ejected).
        ep = endpoint or Endpoint(address, port)
        self.priority = ep.priority
        self.locality = ep.locality
        self.locality_weight = ep.locality_weight
        self.usable = ep.usable
        self.active_requests = 0
        self.idle: list[UpstreamConnection] = []
        self.cluster = cluster
        # %UPSTREAM_HOST% as Envoy prints it, which is also the host's key in /clusters.
        self.label = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        self.stats: HostStats = store.host(cluster.name, self.label)
        # What the router tells outlier detection (a no-op log when the cluster has none).
        self.outcomes: OutcomeLog = (
            store.outcomes.log(cluster.name, self.label)
            if cluster.cluster.outlier_detection is not None
            else NO_LOG
        )


class ClusterState:
    """A cluster compiled for this worker: its hosts, balancer, pools and stats."""

    def __init__(self, cluster: Cluster, store: StatsStore, worker_count: int = 1) -> None:
        self.cluster = cluster
        # Circuit breakers: the proxy-wide limits, split evenly over the workers.
        self.worker_count = worker_count
        workers = max(worker_count, 1)
        self.cb_max_connections = math.ceil(cluster.cb_max_connections / workers)
        self.cb_max_requests = math.ceil(cluster.cb_max_requests / workers)
        self.name = cluster.name
        self.stats: ClusterStats = store.cluster(cluster.name)
        self.retired = False
        self.connect_timeout = cluster.connect_timeout_s
        self.idle_timeout = cluster.idle_timeout_s
        self.max_requests = cluster.max_requests_per_connection
        # Every host, usable or not: a priority level in panic routes to all of its hosts
        # (proxyd.protocol.priority decides which ones a pick may use).
        self.hosts = [
            HostState(ep.address, ep.port, max(ep.weight, 1), self, store, ep)
            for ep in cluster.endpoints
        ]
        self.balancer = make_priority_balancer(
            cluster.lb_policy,
            self.hosts,
            choice_count=cluster.choice_count,
            overprovisioning_factor=cluster.overprovisioning_factor,
            panic_threshold=cluster.healthy_panic_threshold,
            locality_weighted=cluster.locality_weighted_lb,
            stats=self.stats,
        )
        self.open: set[UpstreamConnection] = set()

    # -- circuit breakers -------------------------------------------------------------

    def overflow(self) -> str:
        """Why a new request may not go upstream now, or "" when it may; counts the
        Envoy overflow stat. Called before the request counts as active."""
        stats = self.stats
        if stats.rq_active >= self.cb_max_requests:
            stats.rq_active_overflow += 1
            return "max_requests"
        return ""

    def connection_allowed(self) -> bool:
        """Whether one more connection fits under max_connections; counts
        ``upstream_cx_overflow`` and ``upstream_rq_pending_overflow`` when it does not
        (proxyd queues no requests: it behaves as Envoy with max_pending_requests 0)."""
        if not self.cb_max_connections or len(self.open) < self.cb_max_connections:
            return True
        self.stats.cx_overflow += 1
        self.stats.rq_pending_overflow += 1
        return False

    # -- connections ------------------------------------------------------------------

    def take_idle(self, host: HostState) -> UpstreamConnection | None:
        """The most recently used live idle connection to ``host``, or None."""
        idle = host.idle
        while idle:
            conn = idle.pop()
            idle_for = time.monotonic() - conn.idle_since
            if idle_for > PEEK_AFTER_S:
                if self.idle_timeout and idle_for > self.idle_timeout:
                    self.destroy(conn)
                    continue
                if io.peer_closed(conn.sock):
                    self.destroy(conn)
                    continue
            return conn
        return None

    async def connect(self, host: HostState) -> UpstreamConnection:
        stats = self.stats
        hstats = host.stats
        stats.cx_total += 1
        hstats.cx_total += 1
        try:
            sock = await io.connect(host.address, host.port, self.connect_timeout)
        except io.Timeout:
            stats.cx_connect_fail += 1
            stats.cx_connect_timeout += 1
            hstats.cx_connect_fail += 1
            raise ConnectFailure("connection timeout") from None
        except OSError:
            stats.cx_connect_fail += 1
            hstats.cx_connect_fail += 1
            raise ConnectFailure("remote connection failure") from None
        conn = UpstreamConnection(sock, host)
        stats.cx_active += 1
        hstats.cx_active += 1
        self.open.add(conn)
        return conn

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        """Give a connection back after a complete exchange (or destroy it)."""
        conn.requests += 1
        if (
            not reusable
            or self.retired
            or conn.start != conn.end
            or (self.max_requests and conn.requests >= self.max_requests)
        ):
            self.destroy(conn)
            return
        conn.start = conn.end = 0
        conn.idle_since = time.monotonic()
        conn.host.idle.append(conn)

    def destroy(self, conn: UpstreamConnection) -> None:
        if conn in self.open:
            self.open.discard(conn)
            self.stats.cx_active -= 1
            self.stats.cx_destroy += 1
            conn.host.stats.cx_active -= 1
        io.close(conn.sock)

    # -- life cycle -------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Close idle connections that timed out or that the upstream closed."""
        limit = self.idle_timeout
        for host in self.hosts:
            if not host.idle:
                continue
            keep = []
            for conn in host.idle:
                if (limit and now - conn.idle_since > limit) or io.peer_closed(conn.sock):
                    self.destroy(conn)
                else:
                    keep.append(conn)
            host.idle[:] = keep

    def retire(self) -> None:
        """The cluster left the epoch or changed: close idle connections now, busy ones
        when their request ends."""
        self.retired = True
        for host in self.hosts:
            for conn in host.idle:
                self.destroy(conn)
            host.idle.clear()

    def close_all(self) -> None:
        for conn in list(self.open):
            self.destroy(conn)
        for host in self.hosts:
            host.idle.clear()
