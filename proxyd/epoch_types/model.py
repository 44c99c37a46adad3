"""The epoch itself (:class:`Epoch`) and its runtime values."""

from __future__ import annotations

from dataclasses import dataclass

from proxyd.epoch_types.clusters import Cluster
from proxyd.epoch_types.listeners import Listener


@dataclass(frozen=True, slots=True)
class RuntimeValue:
    """One key of the runtime, its layers merged (Envoy's ``Runtime::Snapshot`` entry).

    The master parses each value once (``proxyd.config.runtime``): ``uint`` is Envoy's
    ``uint_value_`` (a number >= 0, floored; None otherwise) and ``numerator`` /
    ``denominator`` its ``fractional_percent_value_`` (denominator 0: none)."""

    key: str
    raw: str
    uint: int | None = None
    numerator: int = 0
    denominator: int = 0


# -- the epoch ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Epoch:
    number: int
    listeners: tuple[Listener, ...]
    clusters: tuple[Cluster, ...]
    # How many workers share the proxy-wide limits (set by the master when publishing).
    worker_count: int = 1
    # --drain-time-s: how long an updated or removed listener's old connections may
    # stay open (idle ones are closed after it; set by the master when publishing).
    drain_time_s: float = 600.0
    # The global downstream connection limit across every worker (proxyd.cx_limit;
    # -1: none) and whether every accepted connection counts toward it (the runtime
    # key) or only those the limit allowed (the overload manager's monitor). Set by
    # the master when publishing.
    global_cx_limit: int = -1
    global_cx_count_all: bool = False
    # How often a worker sends a Heartbeat (half the worker watchdog's interval; 0:
    # none, the StatsReport once a second is the heartbeat). Set by the master.
    heartbeat_interval_s: float = 0.0
    # The bootstrap's node.id and node.cluster (add_user_agent sends them upstream).
    node_id: str = ""
    node_cluster: str = ""
    # The runtime (layered_runtime, every layer merged), by key order; set by the
    # master when publishing (proxyd.master.runtime).
    runtime: tuple[RuntimeValue, ...] = ()

    def cluster(self, name: str) -> Cluster | None:
        for c in self.clusters:
            if c.name == name:
                return c
        return None
