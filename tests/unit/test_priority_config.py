"""Priorities, localities, overprovisioning factor and panic threshold in the config:
what is accepted (as real Envoy accepts it), what is rejected, and the epoch values."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import json_format

from proxyd.config import compile_bootstrap
from proxyd.config.endpoints import compile_load_assignment
from proxyd.epoch import Cluster, Endpoint
from proxyd.errors import ConfigError


def ep(port: int) -> dict[str, Any]:
    return {
        "endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}
    }


def bootstrap(cluster: dict[str, Any]) -> dict[str, Any]:
    base = {"name": "c", "type": "STATIC", "connect_timeout": "1s"}
    return {"static_resources": {"clusters": [{**base, **cluster}]}}


def compile_cluster(cluster: dict[str, Any]) -> Cluster:
    (c,) = compile_bootstrap(bootstrap(cluster), "conf.yaml").epoch_template.clusters
    return c


def reject(cluster: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        compile_bootstrap(bootstrap(cluster), "conf.yaml")
    return info.value


def test_defaults() -> None:
    c = compile_cluster(
        {"load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [ep(1)]}]}}
    )
    assert (c.overprovisioning_factor, c.healthy_panic_threshold, c.locality_weighted_lb) == (
        140,
        50,
        False,
    )
    assert c.endpoints == (Endpoint("127.0.0.1", 1),)


def test_priorities_localities_and_policy() -> None:
    c = compile_cluster(
        {
            "common_lb_config": {
                "healthy_panic_threshold": {"value": 33.9},
                "locality_weighted_lb_config": {},
            },
            "load_assignment": {
                "cluster_name": "c",
                "policy": {"overprovisioning_factor": 200},
                "endpoints": [
                    {
                        "locality": {"region": "eu", "zone": "a"},
                        "load_balancing_weight": 3,
                        "lb_endpoints": [ep(1), ep(2)],
                    },
                    # Same locality again at P0: its weight replaces 3 (Envoy: last wins).
                    {
                        "locality": {"region": "eu", "zone": "a"},
                        "load_balancing_weight": 4,
                        "lb_endpoints": [ep(3)],
                    },
                    # The same locality at P1 keeps its own weight.
                    {
                        "priority": 1,
                        "locality": {"region": "eu", "zone": "a"},
                        "load_balancing_weight": 1,
                        "lb_endpoints": [ep(4)],
                    },
                    # A weight without a locality does not count.
                    {"priority": 1, "load_balancing_weight": 9, "lb_endpoints": [ep(5)]},
                ],
            },
        }
    )
    assert c.overprovisioning_factor == 200
    assert c.healthy_panic_threshold == 33  # truncated, as Envoy does
    assert c.locality_weighted_lb is True
    got = [(e.port, e.priority, e.locality, e.locality_weight) for e in c.endpoints]
    assert got == [
        (1, 0, "eu/a/", 4),
        (2, 0, "eu/a/", 4),
        (3, 0, "eu/a/", 4),
        (4, 1, "eu/a/", 1),
        (5, 1, "", 0),
    ]


def test_panic_threshold_below_one_percent_disables_panic() -> None:
    c = compile_cluster({"common_lb_config": {"healthy_panic_threshold": {"value": 0.5}}})
    assert c.healthy_panic_threshold == 0
    # 100 * (57 / 100.0) is 56.99999999999999 in doubles: Envoy gets 56, and so do we.
    c = compile_cluster({"common_lb_config": {"healthy_panic_threshold": {"value": 57}}})
    assert c.healthy_panic_threshold == 56


def test_priority_gaps_are_accepted() -> None:
    # Envoy accepts a gap (P1 is then an empty level).
    c = compile_cluster(
        {
            "load_assignment": {
                "cluster_name": "c",
                "endpoints": [{"lb_endpoints": [ep(1)]}, {"priority": 2, "lb_endpoints": [ep(2)]}],
            }
        }
    )
    assert [e.priority for e in c.endpoints] == [0, 2]


@pytest.mark.parametrize(
    ("cluster", "path", "reason"),
    [
        (
            {"load_assignment": {"cluster_name": "c", "policy": {"overprovisioning_factor": 0}}},
            "load_assignment.policy.overprovisioning_factor",
            "value must be greater than 0",
        ),
        (
            {"common_lb_config": {"healthy_panic_threshold": {"value": 101}}},
            "common_lb_config.healthy_panic_threshold.value",
            "100",
        ),
        (
            {
                "load_assignment": {
                    "cluster_name": "c",
                    "endpoints": [{"priority": 129, "lb_endpoints": [ep(1)]}],
                }
            },
            "load_assignment.endpoints[0].priority",
            "value must be less than or equal to 128",
        ),
        (
            {
                "load_assignment": {
                    "cluster_name": "c",
                    "endpoints": [{"load_balancing_weight": 0, "lb_endpoints": [ep(1)]}],
                }
            },
            "load_assignment.endpoints[0].load_balancing_weight",
            "value must be greater than or equal to 1",
        ),
        (
            {"common_lb_config": {"zone_aware_lb_config": {}}},
            "common_lb_config.zone_aware_lb_config",
            "field not supported by proxyd",
        ),
        (
            {
                "common_lb_config": {
                    "healthy_panic_threshold": {"value": 10},
                    "update_merge_window": "1s",
                }
            },
            "common_lb_config.update_merge_window",
            "update_merge_window other than 0s not supported by proxyd (health and endpoint "
            "updates are applied at once)",
        ),
        (
            {
                "load_assignment": {
                    "cluster_name": "c",
                    "policy": {"weighted_priority_health": True},
                }
            },
            "load_assignment.policy.weighted_priority_health",
            "field not supported by proxyd",
        ),
        (
            {
                "load_assignment": {
                    "cluster_name": "c",
                    "endpoints": [{"proximity": 1, "lb_endpoints": [ep(1)]}],
                }
            },
            "load_assignment.endpoints[0].proximity",
            "field not supported by proxyd",
        ),
    ],
)
def test_rejections(cluster: dict[str, Any], path: str, reason: str) -> None:
    err = reject(cluster)
    assert err.path == f"static_resources.clusters[0].{path}"
    assert reason in err.reason


def test_compile_load_assignment_on_a_bare_cla() -> None:
    """What EDS hands over: a ClusterLoadAssignment message on its own."""
    cla = json_format.ParseDict(
        {
            "cluster_name": "svc",
            "policy": {"overprovisioning_factor": 150},
            "endpoints": [
                {"locality": {"zone": "z"}, "load_balancing_weight": 2, "lb_endpoints": [ep(7)]},
                {"priority": 1, "lb_endpoints": [ep(8)]},
            ],
        },
        endpoint_pb2.ClusterLoadAssignment(),
    )
    got = compile_load_assignment(cla, "EDS", "resources[0]", "eds.yaml")
    assert got.overprovisioning_factor == 150
    assert got.endpoints == (
        Endpoint("127.0.0.1", 7, locality="/z/", locality_weight=2),
        Endpoint("127.0.0.1", 8, priority=1),
    )
    # EDS addresses are IPs, as for STATIC.
    cla.endpoints[1].lb_endpoints[0].endpoint.address.socket_address.address = "example.com"
    with pytest.raises(ConfigError) as info:
        compile_load_assignment(cla, "EDS", "resources[0]", "eds.yaml")
    assert info.value.path.startswith("resources[0].endpoints[1].lb_endpoints[0].endpoint.address")
