"""What the overload manager asks of a worker at accept, and its share of the global count.

:class:`WorkerOverload` decides for each accepted connection (:meth:`admit`), in
Envoy's order (``TcpListenerImpl::onSocketEvent``):

1. the global downstream connection limit (``Epoch.global_cx_limit``): over it the
   connection is closed at once and counted in the listener's
   ``downstream_global_cx_overflow`` (and, with the overload manager's monitor, in
   ``overload.envoy.resource_monitors.global_downstream_max_connections.failed_updates``,
   as Envoy counts a refused allocation); a listener with ``ignore_global_conn_limit``
   is never refused. The count is shared by all workers (:mod:`proxyd.cx_limit`).
2. ``envoy.overload_actions.reject_incoming_connections``: closed at once, counted in
   ``downstream_cx_overload_reject``.

``stop_accepting_connections`` pauses the accept loops (connections wait in the
kernel's backlog, as with Envoy's disabled listeners); ``disable_http_keepalive`` makes
every response say ``connection: close`` (:attr:`Worker.draining`);
``stop_accepting_requests`` answers each new request 503 ``envoy overloaded`` (flag
``OM``, ``http.<prefix>.downstream_rq_overload_close``; :mod:`proxyd.worker.manager`);
``shrink_heap``, when it comes on, collects garbage and gives the C heap's free memory
back to the system (``malloc_trim``), as Envoy's releases tcmalloc's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

import trio

from proxyd import ipc
from proxyd.cx_limit import SharedConnectionCount
from proxyd.epoch import Epoch
from proxyd.worker import manager
from proxyd.worker.plan import ListenerPlan
from proxyd.worker.stats import StatsStore
from proxyd.worker.tcp_proxy import TcpListenerPlan

REFUSED, COUNTED, FREE = 0, 1, 2


def shrink_heap() -> None:
    """envoy.overload_actions.shrink_heap: Python's garbage collected, and the C
    allocator's free memory returned to the system (glibc's malloc_trim; a C library
    without it just skips that part)."""
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is not None:
        trim(0)
MONITOR_STATS = "overload.envoy.resource_monitors.global_downstream_max_connections."


class WorkerOverload:
    def __init__(self, counts: SharedConnectionCount | None, stats: StatsStore) -> None:
        self.counts = counts
        self.stats = stats
        self.limit = -1
        self.count_all = False
        self.stop_accepting = False
        self.reject_incoming = False
        self.disable_keepalive = False
        self.shrinking = False
        # Anything to decide at accept (else the accept loop skips admit()).
        self.checks = False
        self._accepting = trio.Event()
        self._accepting.set()

    def apply_epoch(self, epoch: Epoch) -> None:
        self.limit = epoch.global_cx_limit
        self.count_all = epoch.global_cx_count_all
        self._update()

    def apply_actions(self, msg: ipc.OverloadActions) -> None:
        self.reject_incoming = msg.reject_incoming_connections
        self.disable_keepalive = msg.disable_http_keepalive
        manager.OVERLOAD.stop_requests = msg.stop_accepting_requests
        if msg.shrink_heap and not self.shrinking:
            shrink_heap()
        self.shrinking = msg.shrink_heap
        if msg.stop_accepting_connections != self.stop_accepting:
            self.stop_accepting = msg.stop_accepting_connections
            if self.stop_accepting:
                self._accepting = trio.Event()
            else:
                self._accepting.set()
        self._update()

    def _update(self) -> None:
        self.checks = self.reject_incoming or (self.limit >= 0 and self.counts is not None)

    async def wait_accepting(self) -> None:
        """Until stop_accepting_connections is no longer active."""
        await self._accepting.wait()

    def admit(self, plan: ListenerPlan | TcpListenerPlan) -> int:
        """REFUSED (close it), COUNTED (give it back when it closes) or FREE."""
        counts = self.counts
        verdict = FREE
        if self.limit >= 0 and counts is not None:
            if plan.listener.ignore_global_conn_limit:
                if self.count_all:  # the runtime key counts every accepted socket
                    counts.take()
                    verdict = COUNTED
            elif counts.try_take(self.limit):
                verdict = COUNTED
            else:
                plan.listener_stats.global_cx_overflow += 1
                if not self.count_all:
                    self.stats.named(MONITOR_STATS).inc("failed_updates")
                return REFUSED
        if self.reject_incoming:
            if verdict == COUNTED:
                self.give()
            plan.listener_stats.cx_overload_reject += 1
            return REFUSED
        return verdict

    def give(self) -> None:
        if self.counts is not None:
            self.counts.give()
