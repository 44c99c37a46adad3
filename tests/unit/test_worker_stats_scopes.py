"""The worker's stat scopes declare every counter and gauge they create.

_Scope.__init__ sets each COUNTERS and GAUGES attribute to 0 by name; the class
annotations are what mypy checks ``stats.rq_total += 1`` against, so the three lists
(``__slots__``, COUNTERS + GAUGES, the ``int`` annotations) must name the same attributes.
"""

from __future__ import annotations

import pytest

from proxyd.worker.stats import (
    ClusterStats,
    HostStats,
    HttpStats,
    ListenerStats,
    StatsStore,
    WorkerServerStats,
)

SCOPES = [ClusterStats, HttpStats, ListenerStats, HostStats, WorkerServerStats]


@pytest.mark.parametrize("cls", SCOPES, ids=lambda c: c.__name__)
def test_counters_and_gauges_are_declared_and_slotted(cls: type) -> None:
    stat_attrs = [attr for attr, _ in cls.COUNTERS + cls.GAUGES]
    assert len(set(stat_attrs)) == len(stat_attrs)
    declared = {name for name, tp in cls.__annotations__.items() if tp == "int"}
    assert declared == set(stat_attrs)
    assert set(stat_attrs) <= set(cls.__slots__)


def test_new_scopes_start_at_zero_and_report_envoy_names() -> None:
    store = StatsStore()
    cluster = store.cluster("up")
    assert store.cluster("up") is cluster
    for attr, _ in ClusterStats.COUNTERS + ClusterStats.GAUGES:
        assert getattr(cluster, attr) == 0
    cluster.rq_total += 2
    cluster.rq_active += 1
    http = store.http("ingress")
    http.rq_total += 1
    host = store.host("up", "127.0.0.1:8080")
    assert store.host("up", "127.0.0.1:8080") is host
    host.rq_error += 1
    store.listener("0.0.0.0_80").cx_active += 3
    counters, gauges = store.report()
    assert counters == {
        "cluster.up.upstream_rq_total": 2,
        "http.ingress.downstream_rq_total": 1,
        "up::127.0.0.1:8080::rq_error": 1,
    }
    assert gauges["cluster.up.upstream_rq_active"] == 1
    assert gauges["listener.0.0.0.0_80.downstream_cx_active"] == 3
    assert gauges["http.ingress.downstream_rq_active"] == 0
    # Counters report deltas: nothing new since the previous report.
    assert store.report()[0] == {}


def test_named_scope_reports_deltas_and_shows_new_names_at_zero() -> None:
    store = StatsStore()
    fault = store.named("http.ingress.")
    assert store.named("http.ingress.") is fault
    fault.inc("fault.aborts_injected", 0)
    fault.gauge_add("fault.active_faults", 0)
    assert store.report() == (
        {"http.ingress.fault.aborts_injected": 0},
        {"http.ingress.fault.active_faults": 0},
    )
    fault.inc("fault.aborts_injected")
    fault.inc("fault.aborts_injected")
    fault.inc("fault.web.aborts_injected")
    fault.gauge_add("fault.active_faults", 2)
    fault.gauge_add("fault.active_faults", -1)
    assert fault.value("fault.active_faults") == 1
    assert fault.value("fault.aborts_injected") == 2
    assert fault.value("never_touched") == 0
    counters, gauges = store.report()
    assert counters == {
        "http.ingress.fault.aborts_injected": 2,
        "http.ingress.fault.web.aborts_injected": 1,
    }
    assert gauges == {"http.ingress.fault.active_faults": 1}
    assert store.report()[0] == {}


def test_named_scope_beside_the_hcm_scope_of_the_same_prefix() -> None:
    # The buffer filter counts http.<prefix>.downstream_rq_too_large in a named scope
    # whose prefix is the HCM's own.
    store = StatsStore()
    store.http("ingress").rq_total += 1
    store.named("http.ingress.").inc("downstream_rq_too_large")
    assert store.report()[0] == {
        "http.ingress.downstream_rq_total": 1,
        "http.ingress.downstream_rq_too_large": 1,
    }


def test_a_filter_scope_opens_a_top_level_scope() -> None:
    """The local rate limit filter's stats are ``<stat_prefix>.http_local_rate_limit.*``,
    not under ``http.<prefix>.``: its scope opens one at the top of the names."""
    store = StatsStore()
    scope = store.named("http.ingress.")
    top = scope.root("rl.http_local_rate_limit.")
    assert top is store.named("rl.http_local_rate_limit.")
    top.inc("ok", 2)
    scope.inc("rbac.allowed")
    assert store.report()[0] == {"rl.http_local_rate_limit.ok": 2, "http.ingress.rbac.allowed": 1}
