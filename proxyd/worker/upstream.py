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

import socket
import time
from collections import deque

import trio

from proxyd.epoch import Cluster, Endpoint
from proxyd.protocol.circuit_breakers import per_worker, retry_limit
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


class Overflow(Exception):
    """A circuit breaker refused the request (the stat is counted already)."""


class _Waiter:
    """A pending request in the queue: woken with a released connection (``conn``) or
    with a reserved connection slot (``conn`` None) to open one itself."""

    __slots__ = ("host", "conn", "event")

    def __init__(self, host: HostState) -> None:
        self.host = host
        self.conn: UpstreamConnection | None = None
        self.event = trio.Event()


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
        "outcomes", "priority", "locality", "locality_weight", "usable", "connections",
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
        # This pool's connections to the host, open or being opened.
        self.connections = 0
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
        # Circuit breakers: the proxy-wide limits, split evenly over the workers
        # (proxyd.protocol.circuit_breakers).
        self.worker_count = worker_count
        workers = max(worker_count, 1)
        self.cb_max_connections = per_worker(cluster.cb_max_connections, workers)
        self.cb_max_pending = per_worker(cluster.cb_max_pending_requests, workers)
        self.cb_max_requests = per_worker(cluster.cb_max_requests, workers)
        self.cb_max_retries = per_worker(cluster.cb_max_retries, workers)
        self.cb_budget_percent = cluster.cb_retry_budget_percent
        self.cb_min_retry_concurrency = per_worker(cluster.cb_min_retry_concurrency, workers)
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
        # Connections open or being opened (or promised to a waiter): max_connections.
        self.connections = 0
        # Requests without a connection yet (max_pending_requests), the FIFO of those
        # that wait for one, and retries outstanding (max_retries / retry_budget).
        self.pending = 0
        self.waiters: deque[_Waiter] = deque()
        self.retries = 0
        # The newest state of the cluster reports the *_open gauges.
        self.stats.breakers = self

    # -- circuit breakers -------------------------------------------------------------

    def overflow(self) -> str:
        """Why a request may not be attached to a connection now, or "" when it may;
        counts the Envoy overflow stat. Called before the request counts as active."""
        stats = self.stats
        if stats.rq_active >= self.cb_max_requests:
            stats.rq_active_overflow += 1
            return "max_requests"
        return ""

    def retry_limit(self) -> int:
        return retry_limit(
            self.cb_max_retries,
            self.cb_budget_percent,
            self.cb_min_retry_concurrency,
            self.stats.rq_active,
            self.pending,
        )

    def retry_allowed(self) -> bool:
        """Whether one more retry may start (then it is outstanding until
        :meth:`retry_done`); counts ``upstream_rq_retry`` or, refused,
        ``upstream_rq_retry_overflow``."""
        if self.retries < self.retry_limit():
            self.retries += 1
            self.stats.rq_retry += 1
            return True
        self.stats.rq_retry_overflow += 1
        return False

    def retry_done(self, success: bool) -> None:
        """The retried attempt got a response (``success``) or ended without one."""
        self.retries -= 1
        if success:
            self.stats.rq_retry_success += 1

    def open_gauges(self) -> tuple[int, int, int, int]:
        """Envoy's ``circuit_breakers.default.{cx,rq_pending,rq,rq_retry}_open``: 1 while
        the count is at its limit."""
        return (
            int(self.connections >= self.cb_max_connections),
            int(self.pending >= self.cb_max_pending),
            int(self.stats.rq_active >= self.cb_max_requests),
            int(self.retries >= self.retry_limit()),
        )

    # -- the pending queue --------------------------------------------------------------

    async def acquire(self, host: HostState) -> UpstreamConnection:
        """A connection to ``host`` for a request that found no idle one.

        As in Envoy's pools, the request is *pending* until it has one: while a new
        connection is opened for it, or, with max_connections reached, while it waits
        (FIFO) for a connection of the host to be released or for a connection of the
        cluster to close. Raises :class:`Overflow` beyond max_pending_requests, or
        :class:`ConnectFailure`; the caller's cancel scope is the request's deadline
        (a cancelled pending request is Envoy's ``upstream_rq_cancelled``).
        """
        stats = self.stats
        if self.pending >= self.cb_max_pending:
            stats.rq_pending_overflow += 1
            raise Overflow()
        stats.rq_pending_total += 1
        stats.rq_pending_active += 1
        self.pending += 1
        try:
            if self.connections >= self.cb_max_connections:
                stats.cx_overflow += 1
                # Envoy opens one anyway to a host with none, so every waiter has a
                # connection of its host that will wake it.
                if host.connections:
                    conn = await self._wait(host)
                    if conn is not None:
                        return conn
                    return await self.connect(host, reserved=True)
            return await self.connect(host)
        except ConnectFailure:
            raise
        except BaseException:
            stats.rq_cancelled += 1
            raise
        finally:
            stats.rq_pending_active -= 1
            self.pending -= 1

    async def _wait(self, host: HostState) -> UpstreamConnection | None:
        """Queue up; a released connection, or None for a reserved slot to connect."""
        w = _Waiter(host)
        self.waiters.append(w)
        try:
            await w.event.wait()
        except BaseException:
            self._give_up(w)
            raise
        return w.conn

    def _give_up(self, w: _Waiter) -> None:
        """A waiter was cancelled: out of the queue, or what it was just given passes
        on."""
        if not w.event.is_set():
            self.waiters.remove(w)
        elif w.conn is not None:
            self.put_back(w.conn)
        else:
            self._unreserve(w.host)

    def _first_waiter(self, host: HostState) -> _Waiter | None:
        for w in self.waiters:
            if w.host is host:
                return w
        return None

    def _slot_freed(self, host: HostState) -> None:
        """A connection to ``host`` closed (or was never opened): the oldest waiter for
        that host, else the oldest waiter, may open one if the limit allows."""
        w = self._first_waiter(host) or self.waiters[0]
        if self.connections < self.cb_max_connections or not w.host.connections:
            self.waiters.remove(w)
            self.connections += 1
            w.host.connections += 1
            w.event.set()

    def _unreserve(self, host: HostState) -> None:
        self.connections -= 1
        host.connections -= 1
        if self.waiters:
            self._slot_freed(host)

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

    async def connect(self, host: HostState, reserved: bool = False) -> UpstreamConnection:
        """Open a connection to ``host`` (its slot counted here unless ``reserved``)."""
        if not reserved:
            self.connections += 1
            host.connections += 1
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
            self._unreserve(host)
            raise ConnectFailure("connection timeout") from None
        except OSError:
            stats.cx_connect_fail += 1
            hstats.cx_connect_fail += 1
            self._unreserve(host)
            raise ConnectFailure("remote connection failure") from None
        except BaseException:
            self._unreserve(host)
            raise
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
        if self.waiters:
            self.put_back(conn)
            return
        conn.idle_since = time.monotonic()
        conn.host.idle.append(conn)

    def put_back(self, conn: UpstreamConnection) -> None:
        """A clean, reusable connection: to the oldest request waiting for its host, or
        to the host's idle list."""
        if self.retired:
            self.destroy(conn)
            return
        if self.waiters:
            w = self._first_waiter(conn.host)
            if w is not None:
                self.waiters.remove(w)
                w.conn = conn
                w.event.set()
                return
        conn.idle_since = time.monotonic()
        conn.host.idle.append(conn)

    def destroy(self, conn: UpstreamConnection) -> None:
        if conn in self.open:
            self.open.discard(conn)
            self.stats.cx_active -= 1
            self.stats.cx_destroy += 1
            conn.host.stats.cx_active -= 1
            self._unreserve(conn.host)
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
