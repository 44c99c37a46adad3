"""The TCP proxy network filter (``envoy.filters.network.tcp_proxy``) in a worker.

A listener whose one network filter is a TcpProxy gets a :class:`TcpListenerPlan`
(compiled once per epoch, beside the HTTP listeners' plans) and each connection it
accepts a :class:`TcpConnection`, whose :meth:`~TcpConnection.serve` runs it from
accept to close, as Envoy's ``TcpProxy::Filter`` does:

* pick the cluster (``cluster``, or ``weighted_clusters`` at random by weight); one
  that does not exist closes the connection (``downstream_cx_no_route``, flag NC);
* the cluster's circuit breaker on connections (the DEFAULT priority's
  max_connections, per worker as for HTTP): over it, ``upstream_cx_overflow`` and
  flag UO;
* up to ``max_connect_attempts`` connects, each to a host the cluster's balancer picks
  (its health and outlier ejections as for HTTP; the outcome goes to outlier
  detection), by the client's IP with ``hash_policy`` ``source_ip`` on a RING_HASH or
  MAGLEV cluster; none healthy: ``upstream_cx_none_healthy``, flag UH; every attempt
  failed: ``upstream_cx_connect_attempts_exceeded``, flags UF,URX, and the client's
  connection is closed;
* then bytes are pumped both ways, one receive buffer per direction (from the
  worker's pool of 64 KiB buffers, of which at most ``per_connection_buffer_limit_bytes``
  is used, given back while the
  direction waits for bytes): a direction reads again only when the other side took
  what it read, so a slow reader stops the writer (backpressure) and proxyd holds a
  bounded amount per connection;
* an end of stream from one side is passed on as a half-close (``shutdown(SHUT_WR)``)
  to the other, and the connection ends when both directions have ended; a reset or
  a failed write on either side closes both (an upstream reset resets the client's
  connection, flag UR);
* ``idle_timeout`` (no byte either way for that long: ``idle_timeout``) and
  ``max_downstream_connection_duration`` (flag DT) close both sides;
* with ``tunneling_config``, the bytes go inside an HTTP/1.1 CONNECT or POST request
  to the host (:mod:`proxyd.worker.tcp_tunnel`): a tunnel the host refuses is a failed
  connect attempt;
* at the end, the ``access_log`` line (ACCESS_LOG_TYPE ``TcpConnectionEnd``), and with
  ``access_log_options.flush_access_log_on_connected`` one when the upstream connection
  is made (``TcpUpstreamConnected``).

The HTTP path is untouched: the accept loop looks a TCP plan up only for a listener
that has no HTTP plan.
"""

from __future__ import annotations

import contextlib
import math
import random
import socket
import time
from typing import TYPE_CHECKING, Any, Protocol

import trio

from proxyd.epoch import Epoch, Listener
from proxyd.epoch_types.listeners import same_but_secrets
from proxyd.errors import ProtocolError
from proxyd.protocol.access_log import TCP_CONNECTION_END, TCP_UPSTREAM_CONNECTED, LogRecord
from proxyd.protocol.access_log_filters import NO_RUNTIME, Runtime
from proxyd.protocol.hash_lb import xxh64
from proxyd.protocol.histogram import record
from proxyd.worker import accesslog_plan, io
from proxyd.worker.accesslog import AccessLogWriter
from proxyd.worker.accesslog_plan import LogPlans
from proxyd.worker.buffers import BufferPool
from proxyd.worker.network_rbac import NetworkRbacPlan
from proxyd.worker.outcomes import OK
from proxyd.worker.pool import ConnectFailure, Overflow, UpstreamConnection
from proxyd.worker.stats import ListenerStats, StatsStore, TcpStats, note_unexpected
from proxyd.worker.tcp_tunnel import (
    LAST_CHUNK,
    ResponseBody,
    TunnelFailed,
    TunnelPlan,
    establish,
    frame_chunk,
)
from proxyd.worker.tcp_tunnel_h2 import (
    H2Tunnel,
    client_to_stream,
    open_h2_tunnel,
    stream_to_client,
)
from proxyd.worker.tls import TlsPlan, TlsSocket
from proxyd.worker.tls import handshake as tls_handshake

if TYPE_CHECKING:
    from proxyd.worker.chains import ChainChooser
    from proxyd.worker.deadlines import DeadlineKind
    from proxyd.worker.upstream import ClusterState

# What one receive of one direction takes at most: the size of the worker's TCP
# buffers (Worker.tcp_buffers). Against 16 KiB, 64 KiB cuts the time a bulk
# transfer takes through a worker by about 40% (fewer system calls and wake-ups per
# byte; measured with 64 MiB echoed on loopback).
MAX_CHUNK = 64 * 1024
# Free buffers a worker keeps for its TCP connections (4 MiB at most).
POOLED_BUFFERS = 64


def buffer_pool() -> BufferPool:
    """The worker's pool of receive buffers for TCP proxy connections."""
    return BufferPool(MAX_CHUNK, POOLED_BUFFERS)


class ClusterPick:
    """TcpProxy's cluster: the one ``cluster``, or one of ``weighted_clusters`` at
    random with the chance of its weight (Envoy's pick: a random number modulo the
    weights' sum, against the running sum)."""

    __slots__ = ("names", "bounds", "total", "_random")

    def __init__(self, names: tuple[str, ...], weights: tuple[int, ...]) -> None:
        self.names = names
        bounds = []
        end = 0
        for w in weights:
            end += w
            bounds.append(end)
        self.bounds = tuple(bounds)
        self.total = end
        self._random = random.Random()

    def __call__(self) -> str:
        if len(self.names) == 1:
            return self.names[0]
        selected = self._random.getrandbits(64) % self.total
        for name, end in zip(self.names, self.bounds, strict=True):
            if selected < end:
                return name
        raise AssertionError("the bounds end at the total")  # pragma: no cover


class TcpListenerPlan:
    """A TCP proxy listener (or one TCP proxy filter chain of a listener with several)
    compiled for one epoch."""

    is_tcp = True

    def __init__(
        self,
        listener: Listener,
        clusters: dict[str, ClusterState],
        stats: StatsStore,
        writers: dict[str, AccessLogWriter],
        runtime: Runtime = NO_RUNTIME,
    ) -> None:
        tcp = listener.tcp_proxy
        assert tcp is not None
        self.name = listener.name
        # The worker's key of this plan: the listener's name, or for one of its filter
        # chains proxyd.worker.chains.chain_key; and, on a listener with several
        # chains that are all TCP proxies, the chooser of the chain (the plan then is
        # the first chain's and serves no connection itself).
        self.key = listener.name
        self.chooser: ChainChooser | None = None
        self.listener = listener
        # As ListenerPlan.generation: kept across epochs while the listener is unchanged;
        # a changed or removed listener's connections are closed after the drain time.
        self.generation = object()
        self.listener_stats: ListenerStats = stats.listener(listener.stat_name)
        self.stats: TcpStats = stats.tcp(tcp.stat_prefix)
        self.access = LogPlans(listener, writers, runtime, otel=(stats, clusters))
        self.clusters = clusters
        if tcp.weighted:
            self.pick = ClusterPick(
                tuple(c.name for c in tcp.weighted), tuple(c.weight for c in tcp.weighted)
            )
        else:
            self.pick = ClusterPick((tcp.cluster,), (1,))
        self.idle_timeout = tcp.idle_timeout_s or math.inf
        self.max_duration = tcp.max_downstream_connection_duration_s or math.inf
        self.max_attempts = max(tcp.max_connect_attempts, 1)
        self.chunk = max(min(listener.per_connection_buffer_limit_bytes, MAX_CHUNK), 1024)
        self.log_on_connected = tcp.log_on_connected and bool(self.access.tcp_logs)
        self.hash_source_ip = tcp.hash_source_ip
        # tunneling_config (None: the bytes go raw).
        self.tunnel = TunnelPlan(tcp.tunneling) if tcp.tunneling is not None else None
        # Network RBAC filters before the proxy (None: none).
        self.network_rbac = NetworkRbacPlan(tcp.network_rbac, stats) if tcp.network_rbac else None
        # TLS termination in front of the proxy (transport_socket), None: plaintext.
        # The handshake is bounded by transport_socket_connect_timeout, else the idle
        # timeout.
        self.tls = (
            TlsPlan(
                listener.tls,
                stats,
                listener.stat_name,
                tcp.stat_prefix,
                tcp.idle_timeout_s or math.inf,
                listener.tls_inspector,
            )
            if listener.tls is not None
            else None
        )


def tcp_plans(
    epoch: Epoch,
    clusters: dict[str, ClusterState],
    stats: StatsStore,
    writers: dict[str, AccessLogWriter],
    runtime: Runtime,
    old: dict[str, TcpListenerPlan] | None,
) -> dict[str, TcpListenerPlan]:
    """The plans of ``epoch``'s TCP proxy listeners; one whose listener did not change
    keeps the generation of its plan in ``old``."""
    plans = {
        lst.name: TcpListenerPlan(lst, clusters, stats, writers, runtime)
        for lst in epoch.listeners
        if lst.tcp_proxy is not None
    }
    for name, plan in plans.items():
        before = (old or {}).get(name)
        if before is not None and same_but_secrets(before.listener, plan.listener):
            plan.generation = before.generation
    return plans


class WorkerContext(Protocol):
    """What a TCP connection uses of its worker (:class:`proxyd.worker.process.Worker`)."""

    tcp_buffers: BufferPool
    stats: StatsStore
    connections: set[Any]

    def connection_closed(self) -> None: ...


class Ended(Exception):
    """One side reset the connection, or a write to it failed: close both.
    ``upstream``: that side was the upstream one."""

    def __init__(self, upstream: bool) -> None:
        super().__init__("upstream" if upstream else "downstream")
        self.upstream = upstream


class TcpConnection:
    """One downstream connection of a TCP proxy listener, and its upstream one."""

    __slots__ = (
        "worker", "listener_name", "sock", "remote_ip", "remote", "local", "generation",
        "scope", "drained", "flags", "cluster_name", "host_label", "connected",
        "failure", "rx", "tx", "idle_scope", "reset_client", "t_wall", "t0", "_idle_timeout",
        "_cluster", "upstream_tls", "tls", "tunnel_first", "tunnel_body",
    )  # fmt: skip

    # For the worker's drain of a changed listener: a TCP connection may be closed at
    # any moment once the drain time is over (Envoy closes them then).
    idle = True

    def __init__(
        self, worker: WorkerContext, listener_name: str, sock: socket.socket, peer: tuple
    ) -> None:
        self.worker = worker
        self.listener_name = listener_name
        self.sock = sock
        self.remote_ip = peer[0]
        self.remote = f"{peer[0]}:{peer[1]}" if ":" not in peer[0] else f"[{peer[0]}]:{peer[1]}"
        self.local = ""
        self.generation: object = None
        self.scope: trio.CancelScope | None = None
        self.idle_scope: trio.CancelScope | None = None
        self.drained = False
        self.flags: list[str] = []
        self.cluster_name: str | None = None
        self.host_label: str | None = None
        self.connected = False
        self.failure: str | None = None
        self.rx = 0  # bytes read from the client
        self.tx = 0  # bytes written to the client
        # The upstream reset its connection: the client's is reset too (Envoy's UR).
        self.reset_client = False
        self.t_wall = self.t0 = 0.0  # when it was accepted (wall clock, monotonic)
        self._idle_timeout = math.inf
        self._cluster: ClusterState | None = None
        # The TLS session to a TLS cluster's host (%UPSTREAM_TLS_*%), else None.
        self.upstream_tls: Any = None
        # The downstream TLS session (a TLS listener's, after the handshake), else None.
        self.tls: TlsSocket | None = None
        # A tunnel's first bytes for the client (after the response head), and a POST
        # tunnel's response framing (None: CONNECT, or no tunnel).
        self.tunnel_first = b""
        self.tunnel_body: ResponseBody | None = None

    def local_address(self) -> str:
        if not self.local:
            try:
                local = self.sock.getsockname()
            except OSError:
                local = None
            if isinstance(local, tuple):
                self.local = f"{local[0]}:{local[1]}"
            else:  # closed, or an unnamed Unix socket (a pipe listener sets ``local``)
                self.local = "-"
        return self.local

    def set_deadline(self, kind: DeadlineKind, seconds: float) -> None:
        """The worker's drain of a changed or removed listener: close it now."""
        del kind, seconds
        self.drained = True
        if self.scope is not None:
            self.scope.cancel()

    def close_for_health(self) -> None:
        """Its host failed active health checking on a cluster with
        close_connections_on_host_health_failure: the connection ends (Envoy closes it)."""
        self.drained = True  # not a duration timeout
        if self.scope is not None:
            self.scope.cancel()

    # -- life cycle -----------------------------------------------------------------

    async def serve(self, plan: TcpListenerPlan) -> None:
        if plan.chooser is not None:  # a listener with several filter chains
            chosen = await self._choose(plan.chooser)
            if chosen is None:
                return
            plan = chosen
        worker = self.worker
        lstats = plan.listener_stats
        lstats.cx_total += 1
        lstats.cx_active += 1
        plan.stats.cx_total += 1
        self.generation = plan.generation
        self._idle_timeout = plan.idle_timeout
        self.t_wall, self.t0 = time.time(), time.monotonic()
        if plan.access.connection_logs:
            accesslog_plan.connection_opened(self, plan)
        upstream: UpstreamConnection | H2Tunnel | None = None
        try:
            with trio.CancelScope(deadline=trio.current_time() + plan.max_duration) as scope:
                self.scope = scope
                upstream = await self._connect(plan)
                # (Envoy's TCP proxy connects as the connection is accepted, before
                # the client's TLS handshake, which only the data waits for.)
                if plan.tls is not None and not await self._handshake(plan.tls):
                    await self._give_up(upstream)
                    upstream = None
                if (
                    upstream is not None
                    and plan.network_rbac is not None
                    and not await plan.network_rbac.admit(self.sock, self.tls)
                ):
                    # Denied on the first bytes, after the proxy connected, as in
                    # Envoy (the proxy connects when the connection is accepted).
                    await self._give_up(upstream)
                    upstream = None
                if upstream is not None:
                    await self._relay(plan, upstream)
            if scope.cancelled_caught and not self.drained:
                plan.stats.max_duration += 1
                self.flags.append("DT")
        except Exception as exc:  # a bug: counted, logged once, only this connection ends
            note_unexpected(worker.stats, exc, "tcp proxy connection")
        finally:
            self.scope = None
            if isinstance(upstream, H2Tunnel):
                await upstream.close()
            elif upstream is not None and self._cluster is not None:
                self._cluster.pools[0].destroy(upstream)
            lstats.cx_active -= 1
            record(lstats.h_cx_length_ms, int((time.monotonic() - self.t0) * 1000))
            worker.connections.discard(self)
            try:
                if accesslog_plan.OPEN:
                    accesslog_plan.connection_closed(self, (self.rx, self.tx))
                if plan.access.tcp_logs:
                    self.local_address()  # while the socket is open
            except Exception as exc:  # a bug: the connection is closed regardless
                note_unexpected(worker.stats, exc, "tcp proxy access log")
            if self.reset_client:
                io.abort(self.sock)
            else:
                io.close(self.sock)
            try:
                if plan.access.tcp_logs:
                    self._log(plan, TCP_CONNECTION_END)
            except Exception as exc:  # a bug: counted, logged once
                note_unexpected(worker.stats, exc, "tcp proxy access log")
            worker.connection_closed()

    async def _choose(self, chooser: ChainChooser) -> TcpListenerPlan | None:
        """The filter chain's plan (every chain of this listener is a TCP proxy); None:
        no chain took the connection, which is closed."""
        try:
            chosen = await chooser.choose(self.sock)
        except Exception as exc:  # a bug: counted, logged once, only this connection
            note_unexpected(self.worker.stats, exc, "filter chain choice")
            chosen = None
        if chosen is None or not isinstance(chosen, TcpListenerPlan):
            io.close(self.sock)
            self.worker.connections.discard(self)
            self.worker.connection_closed()
            return None
        self.listener_name = chosen.key
        return chosen

    async def _connect(self, plan: TcpListenerPlan) -> UpstreamConnection | H2Tunnel | None:
        """A connection to a host of the cluster, or None (the flags say why)."""
        name = plan.pick()
        cluster = plan.clusters.get(name)
        if cluster is None:
            plan.stats.cx_no_route += 1
            self.flags.append("NC")
            return None
        self._cluster = cluster
        self.cluster_name = name
        pool = cluster.pools[0]  # TCP connections are accounted at DEFAULT priority
        if pool.connections >= pool.cb_max_connections:
            cluster.stats.cx_overflow += 1
            self.flags.append("UO")
            return None
        # hash_policy source_ip, on a cluster that balances by hash: Envoy's hash of the
        # client's IP (none for a pipe listener's client, whose remote is its path).
        lb_hash = (
            xxh64(self.remote_ip.encode("latin-1"))
            if plan.hash_source_ip and cluster.hashing is not None and self.remote != self.remote_ip
            else None
        )
        for _ in range(plan.max_attempts):
            if lb_hash is not None and cluster.hashing is not None:
                host = cluster.hashing.pick_hash(lb_hash)
            else:
                host = cluster.balancer.pick()
            if host is None:
                cluster.stats.cx_none_healthy += 1
                self.flags.append("UH")
                return None
            self.host_label = host.label
            if plan.tunnel is not None and cluster.h2pools:  # over HTTP/2
                try:
                    cluster.stats.rq_total += 1
                    rec = self._record(plan, TCP_UPSTREAM_CONNECTED) if plan.tunnel.needs_record else None  # fmt: skip
                    tunnel = await open_h2_tunnel(cluster.h2pools[0], host, plan.tunnel, rec)
                except Overflow:
                    self.flags.append("UO")
                    return None
                except ConnectFailure as exc:
                    host.outcomes.connect_failed()
                    detail = exc.detail.replace(" ", "_")
                    self.failure = f"delayed_connect_error:_{detail}" if detail else None
                    continue
                except TunnelFailed as exc:
                    self.failure = exc.reason
                    continue
                host.outcomes.add(OK)
                self.connected = True
                if plan.log_on_connected:
                    self.local_address()
                    self._log(plan, TCP_UPSTREAM_CONNECTED)
                return tunnel
            try:
                conn = await pool.connect(host)
            except ConnectFailure as exc:
                host.outcomes.connect_failed()
                detail = exc.detail.replace(" ", "_")
                if detail.startswith("TLS_error:"):
                    self.failure = detail  # a failed handshake (OpenSSL's reason)
                else:
                    self.failure = f"delayed_connect_error:_{detail}" if detail else None
                continue
            host.outcomes.add(OK)
            if plan.tunnel is not None and not await self._open_tunnel(plan, plan.tunnel, conn):
                pool.destroy(conn)
                continue
            self.connected = True
            if host.tls is not None:
                self.upstream_tls = conn.sock
            if plan.log_on_connected:
                self.local_address()
                self._log(plan, TCP_UPSTREAM_CONNECTED)
            return conn
        cluster.stats.cx_connect_attempts_exceeded += 1
        self.flags += ("UF", "URX")
        return None

    async def _open_tunnel(
        self, plan: TcpListenerPlan, tunnel: TunnelPlan, conn: UpstreamConnection
    ) -> bool:
        """tunneling_config: the HTTP request that opens the tunnel on ``conn``; False
        when the host did not establish it (``failure`` says why)."""
        assert self._cluster is not None
        cstats = self._cluster.stats
        cstats.rq_total += 1
        cstats.rq_pending_total += 1
        rec = self._record(plan, TCP_UPSTREAM_CONNECTED) if tunnel.needs_record else None
        try:
            self.tunnel_first, self.tunnel_body = await establish(conn.sock, tunnel, rec)
        except TunnelFailed as exc:
            self.failure = exc.reason
            return False
        except OSError:
            self.failure = None
            return False
        return True

    async def _handshake(self, tls: TlsPlan) -> bool:
        """TLS termination: the client's handshake; False when it failed (the client's
        socket is closed then)."""
        session = await tls_handshake(self.sock, tls)
        if session is None:
            return False
        self.sock = self.tls = session  # type: ignore[assignment]  # the pumps' socket methods
        return True

    async def _give_up(self, upstream: UpstreamConnection | H2Tunnel | None) -> None:
        """The client's handshake failed: its upstream connection goes too."""
        if isinstance(upstream, H2Tunnel):
            await upstream.close()
        elif upstream is not None and self._cluster is not None:
            self._cluster.pools[0].destroy(upstream)

    async def _relay(self, plan: TcpListenerPlan, upstream: UpstreamConnection | H2Tunnel) -> None:
        """Bytes both ways until both directions ended, one side broke, or the idle
        timeout passed."""
        if isinstance(upstream, H2Tunnel):
            await self._relay_h2(plan, upstream)
            return
        usock = upstream.sock
        with trio.CancelScope(deadline=trio.current_time() + plan.idle_timeout) as idle:
            self.idle_scope = idle
            try:
                if self.tunnel_first:  # the upstream's first bytes came with its head
                    await self._to_client(self.tunnel_first, plan)
                if self.tunnel_body is not None and self.tunnel_body.ended:
                    with contextlib.suppress(OSError):  # the whole response came with it
                        self.sock.shutdown(socket.SHUT_WR)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, self.sock, usock, plan, True)
                    await self._pump(usock, self.sock, plan, False)
            except* Ended as group:
                # One side is gone: both are closed by serve. An upstream reset is
                # passed on to the client as a reset, as Envoy does (flag UR).
                if any(isinstance(e, Ended) and e.upstream for e in group.exceptions):
                    self.flags.append("UR")
                    self.reset_client = True
        self.idle_scope = None
        if idle.cancelled_caught:
            plan.stats.idle_timeout += 1

    async def _pump(
        self, src: socket.socket, dst: socket.socket, plan: TcpListenerPlan, downstream: bool
    ) -> None:
        """One direction: what ``src`` sends goes to ``dst`` (``downstream``: from the
        client to the upstream). Raises :class:`Ended` when a side broke."""
        buffers = self.worker.tcp_buffers
        chunk = plan.chunk
        stats = plan.stats
        cluster = self._cluster
        assert cluster is not None
        cstats = cluster.stats
        idle = self.idle_scope
        idle_s = self._idle_timeout
        # The receive buffer is held only while bytes are on their way: a connection
        # waiting for its peer gives it back, so an idle one holds none.
        held: tuple[bytearray, memoryview] | None = None
        try:
            while True:
                if held is None:
                    held = buffers.take()
                    view = held[1][: min(chunk, len(held[0]))]
                try:
                    n = src.recv_into(view)
                except BlockingIOError:
                    buffers.give(*held)
                    held = None
                    await io.wait_readable(src)
                    continue
                except OSError:
                    raise Ended(not downstream) from None  # reset by the peer
                if n == 0:  # end of stream: a half-close, passed on
                    try:
                        if downstream and self.tunnel_body is not None:
                            await io.send_all(dst, LAST_CHUNK)  # a POST tunnel's end
                        else:
                            dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        raise Ended(downstream) from None  # the other side is gone too
                    return
                if downstream:
                    self.rx += n
                    stats.rx_bytes += n
                    cstats.cx_tx_bytes_total += n
                else:
                    cstats.cx_rx_bytes_total += n
                if idle is not None and idle_s != math.inf:
                    idle.deadline = trio.current_time() + idle_s
                if self.tunnel_body is not None:  # a POST tunnel: the body's framing
                    if await self._post_framed(dst, view[:n], plan, downstream):
                        return
                    continue
                try:
                    await io.send_all(dst, view[:n])
                except OSError:
                    raise Ended(downstream) from None
                if not downstream:
                    self.tx += n
                    stats.tx_bytes += n
                if idle is not None and idle_s != math.inf:
                    idle.deadline = trio.current_time() + idle_s
        finally:
            if held is not None:
                buffers.give(*held)

    async def _relay_h2(self, plan: TcpListenerPlan, t: H2Tunnel) -> None:
        """tunneling_config over HTTP/2: the bytes as the stream's DATA."""
        stats = plan.stats
        idle_s = self._idle_timeout

        def touch() -> None:
            if self.idle_scope is not None and idle_s != math.inf:
                self.idle_scope.deadline = trio.current_time() + idle_s

        def read(n: int) -> None:
            self.rx += n
            stats.rx_bytes += n
            touch()

        def wrote(n: int) -> None:
            self.tx += n
            stats.tx_bytes += n
            touch()

        with trio.CancelScope(deadline=trio.current_time() + plan.idle_timeout) as idle:
            self.idle_scope = idle
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client_to_stream, t, self.sock, plan.chunk, read)
                    await stream_to_client(t, self.sock, wrote)
            except* ConnectionAbortedError:
                self.flags.append("UR")  # the upstream reset its stream: so is the client
                self.reset_client = True
            except* ConnectionResetError:
                pass  # the client is gone: both are closed by serve
        self.idle_scope = None
        if idle.cancelled_caught:
            stats.idle_timeout += 1

    async def _post_framed(
        self, dst: socket.socket, data: memoryview, plan: TcpListenerPlan, downstream: bool
    ) -> bool:
        """A POST tunnel's ``data`` on its way: the client's as a chunk, the upstream's
        by its response framing. True when the response body ended (the client is then
        half-closed, and the direction is done)."""
        body = self.tunnel_body
        assert body is not None
        if downstream:
            try:
                await io.send_all(dst, b"".join(frame_chunk(data)))
            except OSError:
                raise Ended(True) from None
            return False
        try:
            out, done = body.feed(bytes(data))
        except ProtocolError:
            raise Ended(True) from None  # bad framing: as an upstream reset
        if out:
            await self._to_client(out, plan)
        if done:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                raise Ended(False) from None
        return done

    async def _to_client(self, data: bytes, plan: TcpListenerPlan) -> None:
        try:
            await io.send_all(self.sock, data)
        except OSError:
            raise Ended(False) from None
        self.tx += len(data)
        plan.stats.tx_bytes += len(data)

    # -- the access log ---------------------------------------------------------------

    def _record(self, plan: TcpListenerPlan, log_type: str) -> LogRecord:
        """The connection's access-log record as it stands (also what the tunnel's
        hostname and headers are formatted over)."""
        rec = LogRecord()
        rec.log_type = log_type
        rec.listener_name = plan.name
        rec.start_time = self.t_wall
        rec.duration_ms = int((time.monotonic() - self.t0) * 1000)
        rec.protocol = rec.scheme = None
        rec.response_flags = ",".join(self.flags) or "-"
        rec.bytes_received = self.rx
        rec.bytes_sent = self.tx
        rec.upstream_cluster = self.cluster_name
        rec.upstream_host = self.host_label
        rec.upstream_remote_address = self.host_label if self.connected else None
        rec.transport_failure = self.failure
        rec.tls = self.tls
        rec.upstream_tls = self.upstream_tls
        rec.attempt_count = 0
        rec.downstream_remote_address = self.remote
        rec.downstream_direct_remote_address = self.remote
        rec.downstream_local_address = self.local or self.local_address()
        return rec

    def _log(self, plan: TcpListenerPlan, log_type: str) -> None:
        rec = self._record(plan, log_type)
        for lp in plan.access.tcp_logs:
            lp.write(rec)
