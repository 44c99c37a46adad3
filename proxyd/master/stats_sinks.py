"""The master's stats flush: every ``stats_flush_interval`` (or on each admin stats read
with ``stats_flush_on_admin``) it sends the stats totals it aggregated over the workers
to the ``stats_sinks``, as Envoy's main thread does.

A flush closes the histograms' interval (:meth:`proxyd.stats.StatsStore.latch_histograms`,
also with no sink configured: ``/stats`` shows the interval values), takes one snapshot
(:meth:`proxyd.stats.StatsStore.sink_snapshot`: the used counters with their change
since the previous flush, the used gauges) and each sink writes it, with the interval's
histogram samples as timers, in its format (:mod:`proxyd.protocol.statsd`):

* UDP sinks (statsd, DogStatsD) send datagrams from a non-blocking socket. A datagram
  that cannot be sent (no route, nobody listening and the kernel said so) is dropped, as
  Envoy drops it: statsd over UDP is fire-and-forget, and the next flush carries on.
* A TCP statsd sink (``tcp_cluster_name``) keeps one connection to a host of its cluster
  (the usable hosts in turn, a new one after a connection fails or closes) and writes
  each flush's lines, newline-terminated, to it. Like Envoy, when more than 16 MiB wait
  to be written it closes the connection, drops them and counts ``statsd.cx_overflow``.
"""

from __future__ import annotations

import math
import socket
from typing import TYPE_CHECKING

import trio

from proxyd.config.stats import StatsSettings, StatsSink, build_view
from proxyd.log import get_logger
from proxyd.protocol.statsd import datagrams, flush_lines

if TYPE_CHECKING:
    from proxyd.master.master import Master

log = get_logger("proxyd.master.stats_sinks")

# Envoy's TcpStatsdSink MAX_BUFFERED_STATS_BYTES.
MAX_BUFFERED_STATS_BYTES = 16 * 1024 * 1024
CX_OVERFLOW_STAT = "statsd.cx_overflow"


class StatsFlusher:
    def __init__(self, master: Master) -> None:
        self.master = master
        self.settings = StatsSettings()
        # One non-blocking UDP socket per sink address.
        self._sockets: dict[tuple[str, int], socket.socket] = {}
        self._tcp: dict[StatsSink, TcpStatsdWriter] = {}
        self._reconfigured = trio.Event()
        self.flushes = 0  # flushes done, for statistics()
        self.dropped = 0  # UDP datagrams the kernel refused

    def configure(self, settings: StatsSettings) -> None:
        """A config was loaded (at start or by a reload): its tags, matcher and sinks."""
        self.master.stats.configure(build_view(settings))
        if any(s.kind == "tcp_statsd" for s in settings.sinks):
            self.master.stats.ensure_counters([CX_OVERFLOW_STAT])
        if settings.sinks != self.settings.sinks:
            self._close_udp()
        self.settings = settings
        self._reconfigured.set()
        self._reconfigured = trio.Event()

    def statistics(self) -> dict[str, int]:
        return {"flushes": self.flushes, "dropped": self.dropped, "sinks": len(self.settings.sinks)}

    async def run(self) -> None:
        """Flush every ``stats_flush_interval`` (no timer with ``stats_flush_on_admin``)
        and run the TCP sinks' writers; a reload restarts both with its settings."""
        try:
            while True:
                settings = self.settings
                changed = self._reconfigured
                async with trio.open_nursery() as nursery:
                    self._tcp = {}
                    for sink in settings.sinks:
                        if sink.kind == "tcp_statsd":
                            writer = self._tcp[sink] = TcpStatsdWriter(self.master, sink)
                            nursery.start_soon(writer.run)
                    await self._flush_until(changed, settings)
                    nursery.cancel_scope.cancel()
        finally:
            self._tcp = {}
            self._close_udp()

    async def _flush_until(self, changed: trio.Event, settings: StatsSettings) -> None:
        wait = math.inf if settings.flush_on_admin else settings.flush_interval_s
        while not changed.is_set():
            with trio.move_on_after(wait):
                await changed.wait()
            if not changed.is_set():
                self.flush()

    def flush_on_admin(self) -> None:
        """An admin stats page was read: flush if ``stats_flush_on_admin`` is set."""
        if self.settings.flush_on_admin:
            self.flush()

    def flush(self) -> None:
        """Close the histograms' interval, then send the snapshot to the sinks."""
        m = self.master
        interval = m.stats.latch_histograms()
        sinks = self.settings.sinks
        if not sinks:
            return
        m.refresh_server_stats()
        counters, gauges = m.stats.sink_snapshot()
        accepts = m.stats.view.matcher.accepts
        histograms = [(n, b) for n, b in sorted(interval.items()) if b and accepts(n)]
        produce = m.stats.view.tags.produce
        for sink in sinks:
            lines = flush_lines(sink.format, counters, gauges, produce, histograms)
            if sink.kind == "tcp_statsd":
                writer = self._tcp.get(sink)
                if writer is not None and lines:
                    writer.write_nowait("".join(f"{line}\n" for line in lines).encode())
                continue
            for payload in datagrams(sink.format, lines):
                self._send(sink, payload)
        self.flushes += 1

    def _send(self, sink: StatsSink, payload: bytes) -> None:
        """One datagram, without waiting: a non-blocking send that either goes into the
        kernel's buffer at once or is dropped (buffer full, ICMP unreachable seen)."""
        key = (sink.address, sink.port)
        try:
            sock = self._sockets.get(key)
            if sock is None:
                family = socket.AF_INET6 if ":" in sink.address else socket.AF_INET
                sock = self._sockets[key] = socket.socket(family, socket.SOCK_DGRAM)
                sock.setblocking(False)
            sock.sendto(payload, key)
        except OSError as exc:  # dropped, as Envoy's UDP writer drops it
            self.dropped += 1
            log.debug("stats_sink_send_failed", sink=sink.kind, address=key, error=str(exc))

    def _close_udp(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets = {}


class TcpStatsdWriter:
    """One TCP statsd sink: flushes queue here and one task writes them out."""

    def __init__(self, master: Master, sink: StatsSink) -> None:
        self.master = master
        self.sink = sink
        self._send, self._receive = trio.open_memory_channel[bytes](math.inf)
        self.pending = 0  # bytes queued and not yet written
        self._next_host = 0
        self._stream: trio.SocketStream | None = None

    def write_nowait(self, payload: bytes) -> None:
        if self.pending > MAX_BUFFERED_STATS_BYTES:
            # Backed up: drop what waits and this flush, start on a new connection.
            while True:
                try:
                    self.pending -= len(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            self.master.stats.add_counter(CX_OVERFLOW_STAT)
            self._drop_connection()
            return
        self.pending += len(payload)
        self._send.send_nowait(payload)

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                async for payload in self._receive:
                    try:
                        stream = self._stream or await self._connect(nursery)
                        if stream is not None:
                            await stream.send_all(payload)
                    except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                        log.info(
                            "tcp_statsd_write_failed", cluster=self.sink.cluster, error=repr(exc)
                        )
                        self._drop_connection()  # these lines are lost; the next flush reconnects
                    finally:
                        self.pending -= len(payload)
        finally:
            self._drop_connection()

    async def _watch(self, stream: trio.SocketStream) -> None:
        """Read until the peer closes (a statsd server sends nothing), then forget the
        connection, so the next flush opens a new one as Envoy's does on RemoteClose."""
        try:
            while await stream.receive_some(65536):
                pass
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # reset by the peer, or closed by _drop_connection: gone either way
        if self._stream is stream:
            self._drop_connection()

    async def _connect(self, nursery: trio.Nursery) -> trio.SocketStream | None:
        cluster = next((c for c in self.master.epoch.clusters if c.name == self.sink.cluster), None)
        hosts = [e for e in cluster.endpoints if e.usable] if cluster is not None else []
        if not hosts:
            log.info("tcp_statsd_no_host", cluster=self.sink.cluster)
            return None  # as Envoy's tcpConnForCluster without a host: this flush is lost
        host = hosts[self._next_host % len(hosts)]
        self._next_host += 1
        assert cluster is not None
        with trio.fail_after(cluster.connect_timeout_s):
            stream = self._stream = await trio.open_tcp_stream(host.address, host.port)
        nursery.start_soon(self._watch, stream)
        return stream

    def _drop_connection(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.socket.close()
