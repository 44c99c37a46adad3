"""Envoy's circuit breakers, with no I/O: one set per routing priority, limits per worker.

Envoy keeps one ``ResourceManager`` per routing priority (``DEFAULT``, ``HIGH``) per
cluster, each with its own thresholds (``CircuitBreakers.Thresholds``, Envoy's
defaults for a priority the config leaves out) and its own counts of connections,
pending requests, requests and retries; a route's ``RouteAction.priority`` says which
one its requests use. :class:`ResourceManager` is that accounting for one priority in
one worker (``proxyd.worker.pool.ConnPool`` adds the connections and the queue).

Envoy's thresholds count per proxy process. proxyd's workers share nothing at run time,
so each enforces its share, ``ceil(limit / workers)``, of every count limit. A retry
budget is a percentage of the worker's own active and pending requests of that
priority, so only its floor (``min_retry_concurrency``) is split.
"""

from __future__ import annotations

import math
from typing import Protocol

from proxyd.epoch import CircuitBreakerThresholds, Cluster

# Envoy's core.v3.RoutingPriority, indexed by its enum number, and the names its stats
# use (``circuit_breakers.<name>.*_open``).
PRIORITIES = ("DEFAULT", "HIGH")
STAT_NAMES = ("default", "high")
DEFAULT = 0
HIGH = 1


def per_worker(limit: int, workers: int) -> int:
    """One worker's share of a proxy-wide count limit (0 stays 0)."""
    return math.ceil(limit / max(workers, 1))


def retry_limit(
    max_retries: int,
    budget_percent: float,
    min_retry_concurrency: int,
    active: int,
    pending: int,
) -> int:
    """How many retries may be outstanding at once.

    Without a retry budget (``budget_percent`` < 0) it is ``max_retries``. With one, as
    Envoy's ``RetryBudgetImpl::max()``: ``budget_percent`` of the active plus pending
    requests, truncated, but never below ``min_retry_concurrency``.
    """
    if budget_percent < 0:
        return max_retries
    return max(int(budget_percent / 100.0 * (active + pending)), min_retry_concurrency)


def thresholds(cluster: Cluster, priority: int) -> CircuitBreakerThresholds:
    """The cluster's thresholds for a routing priority (index into PRIORITIES)."""
    if priority == HIGH:
        return cluster.cb_high
    return CircuitBreakerThresholds(
        max_connections=cluster.cb_max_connections,
        max_pending_requests=cluster.cb_max_pending_requests,
        max_requests=cluster.cb_max_requests,
        max_retries=cluster.cb_max_retries,
        retry_budget_percent=cluster.cb_retry_budget_percent,
        min_retry_concurrency=cluster.cb_min_retry_concurrency,
    )


class BreakerCounters(Protocol):
    """The cluster counters a ResourceManager bumps (``proxyd.worker.stats.ClusterStats``);
    Envoy counts them per cluster, whatever the priority."""

    rq_active_overflow: int
    rq_retry: int
    rq_retry_success: int
    rq_retry_overflow: int


class ResourceManager:
    """One routing priority's circuit breakers of a cluster in one worker.

    The limits are this worker's share (``cb_*``); the counts are this priority's own:
    ``connections`` (open, being opened, or promised to a waiter: max_connections),
    ``pending`` (requests without a connection yet: max_pending_requests),
    ``requests`` (requests attached to a connection: max_requests) and ``retries``
    (outstanding: max_retries or the retry budget). Whoever opens a connection or
    queues a request keeps ``connections`` and ``pending`` up to date.
    """

    def __init__(
        self,
        t: CircuitBreakerThresholds,
        workers: int,
        counters: BreakerCounters,
        priority: int = DEFAULT,
    ) -> None:
        self.priority = priority
        self.cb_max_connections = per_worker(t.max_connections, workers)
        self.cb_max_pending = per_worker(t.max_pending_requests, workers)
        self.cb_max_requests = per_worker(t.max_requests, workers)
        self.cb_max_retries = per_worker(t.max_retries, workers)
        self.cb_budget_percent = t.retry_budget_percent
        self.cb_min_retry_concurrency = per_worker(t.min_retry_concurrency, workers)
        self.counters = counters
        self.connections = 0
        self.pending = 0
        self.requests = 0
        self.retries = 0

    def attach(self) -> bool:
        """A request gets its connection: counted in ``requests`` (until
        :meth:`detach`), or refused over max_requests (``upstream_rq_active_overflow``).
        As in Envoy 1.40 a pending request does not count against max_requests."""
        if self.requests >= self.cb_max_requests:
            self.counters.rq_active_overflow += 1
            return False
        self.requests += 1
        return True

    def detach(self) -> None:
        self.requests -= 1

    def retry_limit(self) -> int:
        return retry_limit(
            self.cb_max_retries,
            self.cb_budget_percent,
            self.cb_min_retry_concurrency,
            self.requests,
            self.pending,
        )

    def retry_allowed(self) -> bool:
        """Whether one more retry may start (then it is outstanding until
        :meth:`retry_done`); counts ``upstream_rq_retry`` or, refused,
        ``upstream_rq_retry_overflow``."""
        if self.retries < self.retry_limit():
            self.retries += 1
            self.counters.rq_retry += 1
            return True
        self.counters.rq_retry_overflow += 1
        return False

    def retry_done(self, success: bool) -> None:
        """The retried attempt got a response (``success``) or ended without one."""
        self.retries -= 1
        if success:
            self.counters.rq_retry_success += 1

    def open_gauges(self) -> tuple[int, int, int, int]:
        """Envoy's ``circuit_breakers.<priority>.{cx,rq_pending,rq,rq_retry}_open``: 1
        while the count is at its limit."""
        return (
            int(self.connections >= self.cb_max_connections),
            int(self.pending >= self.cb_max_pending),
            int(self.requests >= self.cb_max_requests),
            int(self.retries >= self.retry_limit()),
        )
