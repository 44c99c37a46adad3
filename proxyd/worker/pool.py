"""One routing priority's HTTP/1 connection pool of a cluster in one worker.

Envoy keeps a separate connection pool per routing priority (and per host), each
accounted against that priority's circuit breakers. proxyd does the same: a
:class:`proxyd.worker.upstream.ClusterState` has one :class:`ConnPool` per priority
(``DEFAULT``, ``HIGH``), and a route's plan holds the pool its priority leads to, so a
request never looks its priority up. A pool is the priority's
:class:`~proxyd.protocol.circuit_breakers.ResourceManager` plus its connections: the
idle keep-alive connections of each host for this priority (``HostState.idle[p]``,
LIFO, so the warmest is reused and the coldest times out), the connections open or
being opened, and the FIFO of pending requests beyond max_connections. A connection
opened for one priority is never used by the other.

An idle connection is checked before reuse: one idle for longer than the cluster's
``idle_timeout_s`` is closed, and one idle for more than :data:`PEEK_AFTER_S` is
peeked (non-blocking) so a peer that closed it, or sent bytes nobody asked for, is
noticed before a request is written to it. A connection handed back moments ago is
reused without the extra syscall; if its upstream closed it in that moment, the
router's retry (a reused connection failing before any response byte) covers it, as
Envoy's does for the same race. :meth:`ConnPool.sweep` peeks all idle connections
about once a second, so a closed upstream does not leave sockets in CLOSE_WAIT.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import trio

from proxyd.protocol.circuit_breakers import DEFAULT, ResourceManager, thresholds
from proxyd.protocol.histogram import record
from proxyd.protocol.http1 import ResponseHeadParser
from proxyd.protocol.http1_framing import ReceiveBuffer
from proxyd.worker import io
from proxyd.worker.upstream_tls import HandshakeFailed, UpstreamTlsPlan, originate, remember_session

if TYPE_CHECKING:
    from proxyd.epoch import Cluster
    from proxyd.worker.stats import ClusterStats, HostStats


class HostState(Protocol):
    """What a pool uses of a host (:class:`proxyd.worker.upstream.HostState`): its
    address, its stats, and per routing priority its connections and idle ones."""

    address: str
    port: int
    stats: HostStats
    connections: list[int]
    idle: tuple[list[UpstreamConnection], ...]
    tls_session: Any
    # Its transport socket (the cluster's, or the one transport_socket_matches chose).
    tls: UpstreamTlsPlan | None


class ClusterState(Protocol):
    """What a pool uses of its cluster (:class:`proxyd.worker.upstream.ClusterState`)."""

    cluster: Cluster
    name: str
    stats: ClusterStats
    worker_count: int
    tls: UpstreamTlsPlan | None

    @property
    def hosts(self) -> Sequence[HostState]: ...


UPSTREAM_BUFFER = 64 * 1024
PEEK_AFTER_S = 0.05


class ConnectFailure(Exception):
    """Connecting to an upstream host failed; ``reason`` is Envoy's reset reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        # The system's words for a refused or failed connect ("Connection refused"),
        # "" for a timeout (the TCP proxy's UPSTREAM_TRANSPORT_FAILURE_REASON).
        self.detail = detail


class Overflow(Exception):
    """A circuit breaker refused the request (the stat is counted already)."""


def keepalive_options(c: Cluster) -> list[tuple[int, int, int]]:
    """(level, name, value) for the cluster's upstream_connection_options.tcp_keepalive."""
    if not c.tcp_keepalive:
        return []
    out = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (
        (socket.TCP_KEEPCNT, c.keepalive_probes),
        (socket.TCP_KEEPIDLE, c.keepalive_time_s),
        (socket.TCP_KEEPINTVL, c.keepalive_interval_s),
    ):
        if value:
            out.append((socket.IPPROTO_TCP, name, value))
    return out


class UpstreamConnection:
    """One HTTP/1.1 connection to a host, with its receive buffer and head parser."""

    __slots__ = ("sock", "host", "requests", "idle_since", "rb", "parser", "key", "opened")

    def __init__(self, sock: socket.socket, host: HostState, key: str | None = None) -> None:
        self.sock = sock
        self.host = host
        # auto_sni / auto_san_validation: the Host it was opened for (its SNI, the SAN
        # checked); only a request for the same Host reuses it. None otherwise.
        self.key = key
        self.requests = 0
        self.idle_since = 0.0
        self.opened = 0.0  # when it connected (upstream_cx_length_ms)
        # Received, unconsumed bytes; a response head over 64 KiB is a 502.
        self.rb = ReceiveBuffer(
            UPSTREAM_BUFFER, too_large_status=502, skip_crlf=False, size=UPSTREAM_BUFFER
        )
        self.parser = ResponseHeadParser()


class _Waiter:
    """A pending request in the queue: woken with a released connection (``conn``) or
    with a reserved connection slot (``conn`` None) to open one itself."""

    __slots__ = ("host", "key", "conn", "event")

    def __init__(self, host: HostState, key: str | None) -> None:
        self.host = host
        self.key = key
        self.conn: UpstreamConnection | None = None
        self.event = trio.Event()


class ConnPool(ResourceManager):
    """The connections of one routing priority of a cluster, and its circuit breakers."""

    def __init__(self, cluster: ClusterState, priority: int = DEFAULT) -> None:
        c = cluster.cluster
        super().__init__(thresholds(c, priority), cluster.worker_count, cluster.stats, priority)
        self.cluster = cluster
        self.name = cluster.name
        self.stats = cluster.stats
        self.retired = False
        self.connect_timeout = c.connect_timeout_s
        # Socket options for each new connection (upstream_connection_options).
        self.keepalive = keepalive_options(c)
        self.idle_timeout = c.idle_timeout_s
        self.max_requests = c.max_requests_per_connection
        # TLS to the hosts (None: plaintext, nothing more to do after the connect).
        self.tls = cluster.tls
        # auto_sni / auto_san_validation: connections are kept apart by the request's
        # Host (UpstreamTlsPlan.key_of finds it in the upstream head).
        self.keyed = any(h.tls is not None and h.tls.keyed for h in cluster.hosts)
        self.open: set[UpstreamConnection] = set()
        # Requests waiting for a connection beyond max_connections, oldest first.
        self.waiters: deque[_Waiter] = deque()

    # -- the pending queue --------------------------------------------------------------

    async def acquire(self, host: HostState, key: str | None = None) -> UpstreamConnection:
        """A connection to ``host`` for a request that found no idle one.

        As in Envoy's pools, the request is *pending* until it has one: while a new
        connection is opened for it, or, with max_connections reached, while it waits
        (FIFO) for a connection of the host to be released or for a connection of the
        pool to close. Raises :class:`Overflow` beyond max_pending_requests, or
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
                # connection of its host that will wake it. In a keyed pool an idle
                # connection for another Host could never wake it: one is closed.
                if self.keyed and self._close_idle_other(host, key):
                    return await self.connect(host, key=key)
                if host.connections[self.priority]:
                    conn = await self._wait(host, key)
                    if conn is not None:
                        return conn
                    return await self.connect(host, reserved=True, key=key)
            return await self.connect(host, key=key)
        except ConnectFailure:
            raise
        except BaseException:
            stats.rq_cancelled += 1
            raise
        finally:
            stats.rq_pending_active -= 1
            self.pending -= 1

    async def _wait(self, host: HostState, key: str | None) -> UpstreamConnection | None:
        """Queue up; a released connection, or None for a reserved slot to connect."""
        w = _Waiter(host, key)
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

    def _first_waiter_for(self, conn: UpstreamConnection) -> _Waiter | None:
        """The oldest waiter that may take ``conn`` (its host, and its Host if keyed)."""
        host = conn.host
        key = conn.key
        for w in self.waiters:
            if w.host is host and w.key == key:
                return w
        return None

    def _slot_freed(self, host: HostState) -> None:
        """A connection to ``host`` closed (or was never opened): the oldest waiter for
        that host, else the oldest waiter, may open one if the limit allows."""
        w = self._first_waiter(host) or self.waiters[0]
        p = self.priority
        if self.connections < self.cb_max_connections or not w.host.connections[p]:
            self.waiters.remove(w)
            self.connections += 1
            w.host.connections[p] += 1
            w.event.set()

    def _unreserve(self, host: HostState) -> None:
        self.connections -= 1
        host.connections[self.priority] -= 1
        if self.waiters:
            self._slot_freed(host)

    # -- connections ------------------------------------------------------------------

    def take_idle(
        self, host: HostState, key: str | None = None, now: float = 0.0
    ) -> UpstreamConnection | None:
        """The most recently used live idle connection to ``host`` (for ``key``, in a
        keyed pool), or None. ``now``: time.monotonic() when the caller just read it."""
        idle = host.idle[self.priority]
        if self.keyed:
            return self._take_idle_keyed(idle, key)
        while idle:
            conn = idle.pop()
            idle_for = (now or time.monotonic()) - conn.idle_since
            if idle_for > PEEK_AFTER_S:
                if self.idle_timeout and idle_for > self.idle_timeout:
                    self.destroy(conn)
                    continue
                if io.peer_closed(conn.sock):
                    self.destroy(conn)
                    continue
            return conn
        return None

    def _close_idle_other(self, host: HostState, key: str | None) -> bool:
        """Close the coldest idle connection of ``host`` opened for another Host."""
        idle = host.idle[self.priority]
        for i, conn in enumerate(idle):
            if conn.key != key:
                del idle[i]
                self.destroy(conn)
                return True
        return False

    def _take_idle_keyed(
        self, idle: list[UpstreamConnection], key: str | None
    ) -> UpstreamConnection | None:
        now = time.monotonic()
        for i in range(len(idle) - 1, -1, -1):
            conn = idle[i]
            if conn.key != key:
                continue
            del idle[i]
            idle_for = now - conn.idle_since
            if idle_for > PEEK_AFTER_S and (
                (self.idle_timeout and idle_for > self.idle_timeout) or io.peer_closed(conn.sock)
            ):
                self.destroy(conn)
                return self._take_idle_keyed(idle, key)
            return conn
        return None

    async def connect(
        self, host: HostState, reserved: bool = False, key: str | None = None
    ) -> UpstreamConnection:
        """Open a connection to ``host`` (its slot counted here unless ``reserved``);
        ``key``: the request's Host in a keyed pool."""
        if not reserved:
            self.connections += 1
            host.connections[self.priority] += 1
        stats = self.stats
        hstats = host.stats
        stats.cx_total += 1
        hstats.cx_total += 1
        started = time.monotonic()
        try:
            if host.tls is None:
                sock = await io.connect(host.address, host.port, self.connect_timeout)
            else:
                sock = await self._connect_tls(host, key)
        except io.Timeout:
            stats.cx_connect_fail += 1
            stats.cx_connect_timeout += 1
            hstats.cx_connect_fail += 1
            self._unreserve(host)
            raise ConnectFailure("connection timeout") from None
        except OSError as exc:
            stats.cx_connect_fail += 1
            hstats.cx_connect_fail += 1
            self._unreserve(host)
            detail = os.strerror(exc.errno) if exc.errno else ""
            raise ConnectFailure("remote connection failure", detail) from None
        except HandshakeFailed as exc:
            # Envoy counts a failed TLS handshake as a connect failure (its transport
            # socket never says "connected"), a timed-out one as a connect timeout.
            stats.cx_connect_fail += 1
            hstats.cx_connect_fail += 1
            if exc.timeout:
                stats.cx_connect_timeout += 1
            self._unreserve(host)
            raise ConnectFailure(
                "connection timeout" if exc.timeout else "remote connection failure",
                f"TLS_error:{exc.detail}" if exc.detail else "",
            ) from None
        except BaseException:
            self._unreserve(host)
            raise
        if self.keepalive:
            for level, name, value in self.keepalive:
                sock.setsockopt(level, name, value)
        conn = UpstreamConnection(sock, host, key)
        conn.opened = now = time.monotonic()
        record(stats.h_cx_connect_ms, int((now - started) * 1000))
        stats.cx_active += 1
        hstats.cx_active += 1
        self.open.add(conn)
        return conn

    async def _connect_tls(self, host: HostState, key: str | None) -> Any:
        """TCP connect, then the TLS handshake, both within the connect timeout."""
        tls = host.tls
        assert tls is not None
        limit = self.connect_timeout
        start = trio.current_time()
        sock = await io.connect(host.address, host.port, limit)
        if limit > 0:
            # (at least a moment: 0 would mean no limit)
            limit = max(limit - (trio.current_time() - start), 1e-3)
        return await originate(sock, tls, host, limit, key)

    def release(self, conn: UpstreamConnection, reusable: bool, now: float = 0.0) -> None:
        """Give a connection back after a complete exchange (or destroy it). ``now``:
        time.monotonic() when the caller just read it (the connection is idle since)."""
        conn.requests += 1
        if (
            not reusable
            or self.retired
            or conn.rb.end != conn.rb.start  # bytes nobody asked for
            or (self.max_requests and conn.requests >= self.max_requests)
        ):
            self.destroy(conn)
            return
        if self.waiters:
            self.put_back(conn)
            return
        conn.idle_since = now or time.monotonic()
        conn.host.idle[self.priority].append(conn)

    def put_back(self, conn: UpstreamConnection) -> None:
        """A clean, reusable connection: to the oldest request waiting for its host, or
        to the host's idle list."""
        if self.retired:
            self.destroy(conn)
            return
        if self.waiters:
            w = self._first_waiter_for(conn)
            if w is not None:
                self.waiters.remove(w)
                w.conn = conn
                w.event.set()
                return
        conn.idle_since = time.monotonic()
        conn.host.idle[self.priority].append(conn)

    def destroy(self, conn: UpstreamConnection) -> None:
        if conn in self.open:
            self.open.discard(conn)
            stats = self.stats
            stats.cx_active -= 1
            stats.cx_destroy += 1
            record(stats.h_cx_length_ms, int((time.monotonic() - conn.opened) * 1000))
            if conn.requests:  # an HTTP connection (the TCP proxy's carry none)
                record(stats.h_rq_per_cx, conn.requests)
            conn.host.stats.cx_active -= 1
            self._unreserve(conn.host)
        if conn.host.tls is not None:
            remember_session(conn.host.tls, conn.sock, conn.host)  # type: ignore[arg-type]
        io.close(conn.sock)

    # -- life cycle -------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Close idle connections that timed out or that the upstream closed."""
        limit = self.idle_timeout
        p = self.priority
        for host in self.cluster.hosts:
            idle = host.idle[p]
            if not idle:
                continue
            keep = []
            for conn in idle:
                if (limit and now - conn.idle_since > limit) or io.peer_closed(conn.sock):
                    self.destroy(conn)
                else:
                    keep.append(conn)
            idle[:] = keep

    def retire(self) -> None:
        """Close idle connections now, busy ones when their request ends."""
        self.retired = True
        p = self.priority
        for host in self.cluster.hosts:
            idle = host.idle[p]
            for conn in idle:
                self.destroy(conn)
            idle.clear()

    def close_all(self) -> None:
        for conn in list(self.open):
            self.destroy(conn)
        for host in self.cluster.hosts:
            host.idle[self.priority].clear()
