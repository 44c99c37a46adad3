"""The overload manager in the master: resource pressures → actions → the workers.

Every ``refresh_interval`` the master measures the pressure (0.0-1.0) of each resource
monitor and sets each action active while any of its threshold triggers is at or above
its threshold, then tells every worker the actions in force (``ipc.OverloadActions``,
only when they change; a worker started later is told after its first Ready). As in
Envoy, the periodic refresh runs only when a regular monitor is configured
(``fixed_heap``): the connections monitor alone is a *proactive* one, enforced at
accept by the workers (:mod:`proxyd.worker.overload`), and its pressure is sampled only
together with a regular monitor.

Pressures: ``envoy.resource_monitors.fixed_heap`` is the resident memory of the master
and all its workers over ``max_heap_size_bytes`` (Envoy measures its one process's
heap; proxyd's heap is spread over processes); the connections monitor is the shared
count (:mod:`proxyd.cx_limit`) over ``max_active_downstream_connections``.

Stats, with Envoy's names: ``overload.<monitor>.pressure`` (percent) and
``failed_updates``, ``overload.<action>.active`` (0/1) and ``scale_percent``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psutil
import trio

from proxyd import ipc
from proxyd.config.overload import (
    CONNECTIONS_MONITOR,
    DISABLE_HTTP_KEEPALIVE,
    HEAP_MONITOR,
    REJECT_INCOMING_CONNECTIONS,
    SHRINK_HEAP,
    STOP_ACCEPTING_CONNECTIONS,
    STOP_ACCEPTING_REQUESTS,
    OverloadConfig,
)
from proxyd.log import get_logger

if TYPE_CHECKING:
    from proxyd.master.master import Master

log = get_logger("proxyd.master.overload")
IDLE_RECHECK_S = 1.0  # no regular monitor: how often to look whether a reload added one


REFRESH_DELAY_STAT = "overload.refresh_interval_delay"


class OverloadManager:
    def __init__(self, master: Master) -> None:
        self.master = master
        self.actions = ipc.OverloadActions()  # in force, as the workers were told
        self._active: dict[str, bool] = {}
        self._process = psutil.Process()

    def configure(self, config: OverloadConfig) -> None:
        """Make the stats of ``config`` visible at 0, as Envoy does."""
        stats = self.master.stats
        for monitor in config.monitors:
            stats.ensure_counters([f"overload.{monitor}.failed_updates"])
            if f"overload.{monitor}.pressure" not in stats.gauges():
                stats.set_gauge(f"overload.{monitor}.pressure", 0)
            if monitor == HEAP_MONITOR:
                stats.ensure_counters([f"overload.{monitor}.skipped_updates"])
        for action in config.actions:
            stats.set_gauge(
                f"overload.{action.name}.active", int(self._active.get(action.name, False))
            )
            stats.set_gauge(f"overload.{action.name}.scale_percent", 100 * int(self._active.get(action.name, False)))  # fmt: skip

    async def run(self) -> None:
        configured = None
        while True:
            config: OverloadConfig = self.master.loaded.overload
            if config is not configured:
                self.configure(config)
                configured = config
            if not config.max_heap_bytes:
                await trio.sleep(IDLE_RECHECK_S)
                if self._active:  # a reload removed the monitor: nothing stays active
                    await self._publish(config, {})
                continue
            due = trio.current_time() + config.refresh_interval_s
            await trio.sleep(config.refresh_interval_s)
            # Envoy's overload.refresh_interval_delay: how late the refresh ran.
            late_ms = int((trio.current_time() - due) * 1000)
            self.master.stats.record(REFRESH_DELAY_STAT, max(late_ms, 0))
            await self._publish(config, self.pressures(config))

    def pressures(self, config: OverloadConfig) -> dict[str, float]:
        stats = self.master.stats
        out: dict[str, float] = {}
        if config.max_heap_bytes:
            try:
                rss = self._process.memory_info().rss + self.master.workers.rss_total()
            except psutil.Error:  # a worker exited while being measured
                stats.add_counter(f"overload.{HEAP_MONITOR}.failed_updates")
            else:
                out[HEAP_MONITOR] = rss / config.max_heap_bytes
        if config.max_connections:
            out[CONNECTIONS_MONITOR] = self.master.cx_counts.total() / config.max_connections
        for monitor, pressure in out.items():
            stats.set_gauge(f"overload.{monitor}.pressure", int(min(pressure, 1.0) * 100))
        return out

    async def _publish(self, config: OverloadConfig, pressures: dict[str, float]) -> None:
        stats = self.master.stats
        active: dict[str, bool] = {}
        for action in config.actions:
            on = any(pressures.get(t.monitor, 0.0) >= t.threshold for t in action.triggers)
            active[action.name] = on
            stats.set_gauge(f"overload.{action.name}.active", int(on))
            stats.set_gauge(f"overload.{action.name}.scale_percent", 100 * int(on))
            if on != self._active.get(action.name, False):
                log.warning("overload_action", action=action.name, active=on, pressures=pressures)
        self._active = active
        actions = ipc.OverloadActions(
            stop_accepting_connections=active.get(STOP_ACCEPTING_CONNECTIONS, False),
            reject_incoming_connections=active.get(REJECT_INCOMING_CONNECTIONS, False),
            disable_http_keepalive=active.get(DISABLE_HTTP_KEEPALIVE, False),
            stop_accepting_requests=active.get(STOP_ACCEPTING_REQUESTS, False),
            shrink_heap=active.get(SHRINK_HEAP, False),
        )
        if actions != self.actions:
            self.actions = actions
            await self.master.workers.broadcast(actions)
