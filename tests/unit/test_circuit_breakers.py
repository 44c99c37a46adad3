"""circuit_breakers compile to the epoch with Envoy's defaults; what proxyd lacks is
rejected by name; workers split the proxy-wide limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxyd.config import load
from proxyd.epoch import Cluster
from proxyd.errors import ConfigError
from proxyd.worker.stats import StatsStore
from proxyd.worker.upstream import ClusterState
from tests.unit.test_config_load import MINIMAL, write

ANCHOR = "  - name: c\n"


def with_breakers(thresholds: str) -> str:
    return MINIMAL.replace(
        ANCHOR, ANCHOR + "    circuit_breakers:\n      thresholds:\n" + thresholds
    )


def test_defaults(tmp_path: Path) -> None:
    # max_requests keeps Envoy's 1024; max_connections is unlimited unless set, since
    # proxyd has no pending queue to hold what Envoy would queue beyond 1024.
    (cluster,) = load(write(tmp_path, MINIMAL)).epoch_template.clusters
    assert (cluster.cb_max_connections, cluster.cb_max_requests) == (0, 1024)


def test_default_priority_thresholds(tmp_path: Path) -> None:
    text = with_breakers(
        "      - {priority: DEFAULT, max_requests: 7}\n"
        "      - {max_requests: 99, max_connections: 3}\n"  # same priority: first wins
    )
    (cluster,) = load(write(tmp_path, text)).epoch_template.clusters
    assert (cluster.cb_max_connections, cluster.cb_max_requests) == (0, 7)


@pytest.mark.parametrize(
    ("thresholds", "where"),
    [
        ("      - {priority: HIGH, max_requests: 7}\n", "thresholds[0].priority"),
        ("      - {max_retries: 1}\n", "max_retries"),
        ("      - {max_pending_requests: 1}\n", "max_pending_requests"),
        ("      - {retry_budget: {}}\n", "retry_budget"),
    ],
)
def test_unsupported_rejected_by_name(tmp_path: Path, thresholds: str, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, with_breakers(thresholds)))
    assert where in str(info.value)


def test_workers_split_limits() -> None:
    c = Cluster("c", "STATIC", 1.0, "ROUND_ROBIN", (), cb_max_connections=5, cb_max_requests=1)
    state = ClusterState(c, StatsStore(), worker_count=2)
    assert (state.cb_max_connections, state.cb_max_requests) == (3, 1)
    assert state.overflow() == ""
    state.stats.rq_active = 1
    assert state.overflow() == "max_requests"
    assert state.stats.rq_active_overflow == 1


def test_max_connections_limits_only_when_set() -> None:
    unset = ClusterState(Cluster("c", "STATIC", 1.0, "ROUND_ROBIN", ()), StatsStore())
    unset.open.update(range(5000))
    assert unset.connection_allowed()
    limited = ClusterState(
        Cluster("c", "STATIC", 1.0, "ROUND_ROBIN", (), cb_max_connections=2), StatsStore()
    )
    limited.open.update(range(2))
    assert not limited.connection_allowed()
    assert limited.stats.cx_overflow == 1
