"""Upstream clusters of one worker: hosts, balancers and connection pools.

A :class:`ClusterState` is compiled from an :class:`proxyd.epoch.Cluster` and lives as
long as the cluster is unchanged, across epochs, so its pools and connections survive
reloads. It has one :class:`proxyd.worker.pool.ConnPool` per routing priority
(``pools[DEFAULT]``, ``pools[HIGH]``), each with that priority's circuit breakers, as
Envoy keeps one pool and one ``ResourceManager`` per priority. Each :class:`HostState`
keeps the idle keep-alive connections to one host (one list per priority), its
``active_requests`` for the balancer and its :class:`HostStats` (resolved when the
cluster is compiled, so a request never formats a stat name).
"""

from __future__ import annotations

from proxyd import pipes
from proxyd.epoch import Cluster, Endpoint, UpstreamTls, transport_for
from proxyd.protocol.balancers import Balancer
from proxyd.protocol.circuit_breakers import PRIORITIES, STAT_NAMES
from proxyd.protocol.hash_lb import HASH_POLICIES, HashBalancer, make_hash_balancer
from proxyd.protocol.priority import make_priority_balancer
from proxyd.protocol.slow_start import SlowStart
from proxyd.worker.h2_pool import H2Pool
from proxyd.worker.outcomes import NO_LOG, OutcomeLog
from proxyd.worker.pool import ConnectFailure, ConnPool, Overflow, UpstreamConnection
from proxyd.worker.stats import ClusterStats, HostStats, StatsStore
from proxyd.worker.upstream_tls import UpstreamTlsPlan

# ConnectFailure, Overflow and UpstreamConnection are the pool's, re-exported.
__all__ = [
    "ClusterState",
    "ConnPool",
    "ConnectFailure",
    "HostState",
    "Overflow",
    "UpstreamConnection",
]


class HostState:
    """One endpoint of a cluster as the balancer and the pools see it."""

    __slots__ = (
        "address", "port", "weight", "active_requests", "idle", "cluster", "label", "stats",
        "outcomes", "priority", "locality", "locality_weight", "usable", "healthy", "connections",
        "hostname", "hash_key", "active_since", "tls_session", "tls", "alpn",
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
        self.healthy = ep.healthy  # by active health checking (outlier ejection aside)
        self.hostname = ep.hostname  # a STRICT_DNS host's name (auto_host_rewrite)
        self.hash_key = ep.hash_key  # RING_HASH, MAGLEV: the key in place of the address
        self.active_since = ep.active_since  # slow start: when its window began
        self.active_requests = 0
        # A TLS cluster's last session with the host, offered to resume (upstream_tls).
        self.tls_session = None
        # auto_config: the protocol ALPN chose on the host's first connection ("h2",
        # "http/1.1"; None: not known yet; proxyd.worker.h2_upstream.by_alpn).
        self.alpn: str | None = None
        # Its transport socket: the cluster's, or what transport_socket_matches chose.
        self.tls = cluster.tls_for(ep)
        # Per routing priority (the index of ConnPool.priority): the pool's
        # connections to the host, open or being opened, and its idle ones.
        self.connections = [0] * len(PRIORITIES)
        self.idle: tuple[list[UpstreamConnection], ...] = tuple([] for _ in PRIORITIES)
        self.cluster = cluster
        # %UPSTREAM_HOST% as Envoy prints it, which is also the host's key in /clusters.
        self.label = pipes.host_label(address, port)
        self.stats: HostStats = store.host(cluster.name, self.label)
        # What the router tells outlier detection (a no-op log when the cluster has none).
        self.outcomes: OutcomeLog = (
            store.outcomes.log(cluster.name, self.label)
            if cluster.cluster.outlier_detection is not None
            else NO_LOG
        )


class ClusterState:
    """A cluster compiled for this worker: its hosts, balancer, pools and stats."""

    def __init__(
        self, cluster: Cluster, store: StatsStore, worker_count: int = 1, aggression: float = 1.0
    ) -> None:
        self.cluster = cluster
        # Circuit breakers: the proxy-wide limits, split evenly over the workers
        # (proxyd.protocol.circuit_breakers).
        self.worker_count = worker_count
        self.name = cluster.name
        self.stats: ClusterStats = store.cluster(cluster.name)
        if cluster.track_timeout_budgets or cluster.track_request_response_sizes:
            self.stats.track(cluster.track_timeout_budgets, cluster.track_request_response_sizes)
        # TLS to the hosts (transport_socket), or None for plaintext.
        self.tls = UpstreamTlsPlan(cluster.tls, cluster.name, store) if cluster.tls else None
        # transport_socket_matches: a plan per distinct transport socket they choose.
        self._tls_plans: dict[UpstreamTls, UpstreamTlsPlan] = {}
        if cluster.tls is not None and self.tls is not None:
            self._tls_plans[cluster.tls] = self.tls
        self._store = store
        self.retired = False
        # Every host, usable or not: a priority level in panic routes to all of its hosts
        # (proxyd.protocol.priority decides which ones a pick may use).
        self.hosts = [
            HostState(ep.address, ep.port, max(ep.weight, 1), self, store, ep)
            for ep in cluster.endpoints
        ]
        # RING_HASH and MAGLEV: the ring or table of each priority level, built here
        # (once per host-set change: health and membership changes make a new
        # ClusterState); ``hashing`` is that balancer, whose pick_hash takes a
        # request's hash (a plain ``pick()`` uses a random one).
        self.hashing: HashBalancer[HostState] | None = None
        # slow_start_config (None: the cluster has none, and its balancer pays nothing).
        self.aggression = aggression  # slow start's, the runtime's value resolved
        self.slow_start = (
            SlowStart(cluster.slow_start_window_s, aggression, cluster.slow_start_min_weight)
            if cluster.slow_start_window_s
            else None
        )
        if cluster.lb_policy in HASH_POLICIES:
            self.hashing = make_hash_balancer(
                cluster.lb_policy,
                self.hosts,
                min_ring_size=cluster.ring_min_size,
                max_ring_size=cluster.ring_max_size,
                hash_function=cluster.ring_hash_function,
                table_size=cluster.maglev_table_size,
                overprovisioning_factor=cluster.overprovisioning_factor,
                panic_threshold=cluster.healthy_panic_threshold,
                stats=self.stats,
            )
            self.balancer: Balancer[HostState] = self.hashing
        else:
            self.balancer = make_priority_balancer(
                cluster.lb_policy,
                self.hosts,
                choice_count=cluster.choice_count,
                overprovisioning_factor=cluster.overprovisioning_factor,
                panic_threshold=cluster.healthy_panic_threshold,
                locality_weighted=cluster.locality_weighted_lb,
                stats=self.stats,
                slow_start=self.slow_start,
            )
        # Balancers that leave some priority levels out (retry_priority
        # previous_priorities), made when a retry first needs one.
        self._without: dict[frozenset[int], Balancer[HostState]] = {}
        # The hosts a stateful session may name, by address: built at the first use
        # (proxyd.filters.stateful_session.override), None until then.
        self.session_hosts: dict[str, HostState] | None = None
        # One pool per routing priority, indexed as PRIORITIES.
        self.pools = tuple(ConnPool(self, p) for p in range(len(PRIORITIES)))
        # HTTP/2 to the hosts (explicit_http_config.http2_protocol_options): the routes'
        # pools (proxyd.worker.h2_upstream; the TCP proxy keeps the ones above).
        self.h2pools: tuple[H2Pool, ...] = ()
        if cluster.http2 or cluster.http2_downstream:  # (auto_config sets the latter)
            named = store.named(f"cluster.{cluster.name}.")
            self.h2pools = tuple(H2Pool(self, p, named) for p in range(len(PRIORITIES)))
        # The newest state of the cluster reports the *_open gauges.
        self.stats.breakers = self

    def tls_for(self, endpoint: Endpoint) -> UpstreamTlsPlan | None:
        """The transport socket plan of a host (compiled once per distinct socket)."""
        if not self.cluster.tls_matches:
            return self.tls
        tls = transport_for(self.cluster, endpoint)
        if tls is None:
            return None
        plan = self._tls_plans.get(tls)
        if plan is None:
            plan = self._tls_plans[tls] = UpstreamTlsPlan(tls, self.name, self._store)
        return plan

    def balancer_without(self, excluded: frozenset[int]) -> Balancer[HostState]:
        """The balancer with the ``excluded`` priority levels' load given to the others
        (:func:`proxyd.protocol.priority.load_without`)."""
        b = self._without.get(excluded)
        if b is None:
            c = self.cluster
            b = self._without[excluded] = make_priority_balancer(
                c.lb_policy,
                self.hosts,
                choice_count=c.choice_count,
                overprovisioning_factor=c.overprovisioning_factor,
                panic_threshold=c.healthy_panic_threshold,
                locality_weighted=c.locality_weighted_lb,
                stats=self.stats,
                excluded=excluded,
                slow_start=self.slow_start,
            )
        return b

    def pool(self, priority: str) -> ConnPool:
        """The pool of a route's priority ("DEFAULT" or "HIGH")."""
        return self.pools[PRIORITIES.index(priority)]

    def open_gauges(self) -> tuple[tuple[str, tuple[int, int, int, int]], ...]:
        """Each priority's ``circuit_breakers.<priority>.*_open`` gauges, by stat name."""
        pools = self.h2pools or self.pools
        return tuple((STAT_NAMES[p.priority], p.open_gauges()) for p in pools)

    # -- life cycle -------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Close idle connections that timed out or that the upstream closed."""
        for pool in (*self.pools, *self.h2pools):
            pool.sweep(now)

    def retire(self) -> None:
        """The cluster left the epoch or changed: close idle connections now, busy ones
        when their request ends."""
        self.retired = True
        for pool in (*self.pools, *self.h2pools):
            pool.retire()

    def close_all(self) -> None:
        for pool in (*self.pools, *self.h2pools):
            pool.close_all()
