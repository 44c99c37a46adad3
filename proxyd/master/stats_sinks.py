"""The master's stats flush: every ``stats_flush_interval`` (or on each admin stats read
with ``stats_flush_on_admin``) it sends the stats totals it aggregated over the workers
to the ``stats_sinks``, as Envoy's main thread does.

A flush takes one snapshot (:meth:`proxyd.stats.StatsStore.sink_snapshot`: the used
counters with their change since the previous flush, the used gauges) and each sink
writes it in its format (:mod:`proxyd.protocol.statsd`) over UDP. A datagram that cannot
be sent (no route, nobody listening and the kernel said so) is dropped, as Envoy drops
it: statsd over UDP is fire-and-forget, and the next flush carries on.
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


class StatsFlusher:
    def __init__(self, master: Master) -> None:
        self.master = master
        self.settings = StatsSettings()
        # One non-blocking UDP socket per sink address.
        self._sockets: dict[tuple[str, int], socket.socket] = {}
        self._reconfigured = trio.Event()
        self.flushes = 0  # flushes done, for statistics()
        self.dropped = 0  # datagrams the kernel refused

    def configure(self, settings: StatsSettings) -> None:
        """A config was loaded (at start or by a reload): its tags, matcher and sinks."""
        self.master.stats.configure(build_view(settings))
        if settings.sinks != self.settings.sinks:
            for sock in self._sockets.values():
                sock.close()
            self._sockets = {}
        self.settings = settings
        self._reconfigured.set()
        self._reconfigured = trio.Event()

    def statistics(self) -> dict[str, int]:
        return {"flushes": self.flushes, "dropped": self.dropped, "sinks": len(self.settings.sinks)}

    async def run(self) -> None:
        """Flush every ``stats_flush_interval`` (no timer with ``stats_flush_on_admin``);
        a reload that changes the interval takes effect at once."""
        try:
            while True:
                settings = self.settings
                wait = math.inf if settings.flush_on_admin else settings.flush_interval_s
                changed = self._reconfigured
                with trio.move_on_after(wait):
                    await changed.wait()
                if changed.is_set():
                    continue  # new settings: start the interval again
                self.flush()
        finally:
            for sock in self._sockets.values():
                sock.close()
            self._sockets = {}

    def flush_on_admin(self) -> None:
        """An admin stats page was read: flush if ``stats_flush_on_admin`` is set."""
        if self.settings.flush_on_admin:
            self.flush()

    def flush(self) -> None:
        sinks = self.settings.sinks
        if not sinks:
            return
        m = self.master
        m.refresh_server_stats()
        counters, gauges = m.stats.sink_snapshot()
        produce = m.stats.view.tags.produce
        for sink in sinks:
            lines = flush_lines(sink.format, counters, gauges, produce)
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
