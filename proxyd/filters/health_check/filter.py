"""The health check filter on a stream: Envoy's ``HealthCheckFilter``.

A request that all ``headers`` matchers match (every request when there are none) is a
health check:

* **not pass-through**: answered here, no body. 200, unless a cluster of
  ``cluster_min_healthy_percentages`` does not exist (503), has no hosts while its
  percentage is above 0 (503), or has fewer hosts able to take traffic (healthy and not
  ejected) than its percentage of all its hosts (503, response flag ``LH``). The
  clusters' membership is the epoch's (:class:`proxyd.filters.api.EpochFacts`), so the
  answer is decided once per epoch;
* **pass-through**: it goes upstream; with ``cache_time``, the upstream's status is kept
  (per worker) and, until ``cache_time`` has passed since it was kept, later health
  checks are answered here with it;

and every answer to a health check gets ``x-envoy-upstream-healthchecked-cluster`` with
the bootstrap's ``node.cluster``. proxyd has no ``/healthcheck/fail``, so the server is
never in Envoy's "health check failed" state (no 503 for that, no
``x-envoy-immediate-health-check-fail``).
"""

from __future__ import annotations

from typing import Any

import trio

from proxyd.epoch import HeaderMatch, from_wire
from proxyd.filters.api import (
    CONTINUE,
    EpochFacts,
    FilterStream,
    HttpFilter,
    LocalReply,
    ResponseView,
    Result,
    StatsScope,
)
from proxyd.protocol.routing import compile_headers, header_names, headers_match
from proxyd.protocol.runtime import EMPTY, Snapshot

CHECKED_CLUSTER = "x-envoy-upstream-healthchecked-cluster"
FAILED_FLAG = "LH"


def cluster_status(min_healthy: dict[str, int], membership: Any) -> tuple[int, str]:
    """Envoy's answer to a health check from the clusters' membership: (status,
    response code details)."""
    details = "health_check_ok"
    for name, percent in min_healthy.items():
        details = "health_check_ok_cluster_healthy"
        counts = membership.get(name)
        if counts is None:
            return 503, "health_check_failed_no_cluster_found"
        total, healthy = counts
        if total == 0:
            if percent == 0:
                continue
            return 503, "health_check_failed_cluster_empty"
        if 100 * healthy < total * percent:
            return 503, "health_check_failed_cluster_unhealthy"
    return 200, details


class Factory:
    """One per epoch (the filter has no per-route config)."""

    takes_epoch_facts = True

    __slots__ = (
        "name", "wanted_headers", "decodes", "encodes", "pass_through", "cache_s", "tests",
        "reply", "cluster_name", "cached",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        config: Any,
        per_route: Any,
        stats: StatsScope,
        runtime: Snapshot = EMPTY,
        facts: EpochFacts | None = None,
    ) -> None:
        facts = facts or EpochFacts()
        self.name = name
        matches = tuple(from_wire(HeaderMatch, w) for w in config["headers"])
        self.tests = compile_headers(matches)
        self.wanted_headers: frozenset[str] = header_names(self.tests)
        self.decodes = True
        self.encodes = True
        self.pass_through = bool(config["pass_through"])
        self.cache_s = config["cache_ms"] / 1000
        self.cluster_name = facts.node_cluster
        status, details = cluster_status(config["min_healthy"], facts.membership)
        self.reply = LocalReply(
            status, "", details=details, flag="" if status < 300 else FAILED_FLAG
        )
        # pass-through with cache_time: (status, kept until) in this worker.
        self.cached: tuple[int, float] | None = None

    def create(self) -> HealthCheckFilter:
        return HealthCheckFilter(self)


class HealthCheckFilter(HttpFilter):
    __slots__ = ("factory", "checked")

    def __init__(self, factory: Factory) -> None:
        self.factory = factory
        self.checked = False

    async def on_request_headers(self, stream: FilterStream, end_stream: bool) -> Result:
        f = self.factory
        h = stream.head
        if not headers_match(f.tests, h.headers, h.host, h.path):
            return CONTINUE
        self.checked = True
        if not f.pass_through:
            return f.reply
        cached = f.cached
        if cached is not None and trio.current_time() < cached[1]:
            status = cached[0]
            flag = "" if 200 <= status < 300 else FAILED_FLAG
            return LocalReply(status, "", flag=flag, details="health_check_cached")
        return CONTINUE

    async def on_response_headers(
        self, stream: FilterStream, response: ResponseView, end_stream: bool
    ) -> Result:
        if not self.checked:
            return CONTINUE
        f = self.factory
        now = trio.current_time()
        if f.cache_s and f.pass_through and (f.cached is None or now >= f.cached[1]):
            f.cached = (response.status, now + f.cache_s)
        stream.set_response_header(CHECKED_CLUSTER, f.cluster_name)
        return CONTINUE
