"""proxyd and real Envoy agree on which slow_start_config, hedge_policy and
header_to_metadata response_rules configs are valid (``--mode validate`` against
``proxyd.config.load``): the fields proxyd implements are taken, and broken ones are
refused, by both."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from proxyd.config import load
from proxyd.errors import ConfigError
from tests.compat.envoy_runner import ENVOY_PATH, envoy_available

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

H2M = "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config"
LB = "type.googleapis.com/envoy.extensions.load_balancing_policies."
SLOW = {
    "slow_start_window": "5s",
    "aggression": {"default_value": 2.0, "runtime_key": "ss.aggression"},
    "min_weight_percent": {"value": 20},
}


def bootstrap(
    cluster: dict | None = None, hedge: dict | None = None, response_rules: list | None = None
) -> dict:
    route: dict = {"cluster": "svc", "retry_policy": {"retry_on": "5xx"}}
    if hedge is not None:
        route["hedge_policy"] = hedge
    filters = []
    if response_rules is not None:
        filters.append(
            {
                "name": "envoy.filters.http.header_to_metadata",
                "typed_config": {"@type": H2M, "response_rules": response_rules},
            }
        )
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "in",
        "route_config": {
            "virtual_hosts": [
                {"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": route}]}
            ]
        },
        "http_filters": [
            *filters,
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }  # fmt: skip
    address = {"socket_address": {"address": "127.0.0.1", "port_value": 1}}
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "l",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "svc",
                    "load_assignment": {
                        "cluster_name": "svc",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
                    },
                    **(cluster or {}),
                }
            ],
        }
    }


def typed(name: str, **fields: object) -> dict:
    return {
        "load_balancing_policy": {
            "policies": [
                {"typed_extension_config": {"name": "p", "typed_config": {"@type": LB + name, **fields}}}
            ]
        }
    }  # fmt: skip


CASES: dict[str, tuple[dict, bool]] = {
    "rr-slow-start": (bootstrap({"round_robin_lb_config": {"slow_start_config": SLOW}}), True),
    "lr-slow-start": (
        bootstrap(
            {"lb_policy": "LEAST_REQUEST", "least_request_lb_config": {"slow_start_config": SLOW}}
        ),
        True,
    ),
    "typed-slow-start": (
        bootstrap(typed("least_request.v3.LeastRequest", slow_start_config=SLOW)),
        True,
    ),
    "slow-start-min-over-100": (
        bootstrap(
            {
                "round_robin_lb_config": {
                    "slow_start_config": {
                        "slow_start_window": "5s",
                        "min_weight_percent": {"value": 150},
                    }
                }
            }
        ),
        False,
    ),
    "slow-start-negative-window": (
        bootstrap({"round_robin_lb_config": {"slow_start_config": {"slow_start_window": "-1s"}}}),
        False,
    ),
    "hedge": (bootstrap(hedge={"hedge_on_per_try_timeout": True}), True),
    "hedge-unimplemented-fields": (
        bootstrap(
            hedge={
                "hedge_on_per_try_timeout": True,
                "initial_requests": 2,
                "additional_request_chance": {"numerator": 50},
            }
        ),
        True,
    ),
    "hedge-initial-requests-0": (bootstrap(hedge={"initial_requests": 0}), False),
    "response-rule": (
        bootstrap(response_rules=[{"header": "x-a", "on_header_present": {"key": "a"}}]),
        True,
    ),
    "response-cookie-rule": (
        bootstrap(response_rules=[{"cookie": "a", "on_header_present": {"key": "a"}}]),
        True,
    ),
    "response-rule-without-action": (bootstrap(response_rules=[{"header": "x-a"}]), False),
    "response-cookie-remove": (
        bootstrap(
            response_rules=[{"cookie": "a", "on_header_present": {"key": "a"}, "remove": True}]
        ),
        False,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_both_agree(tmp_path: Path, name: str) -> None:
    doc, valid = CASES[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    envoy = subprocess.run(
        [str(ENVOY_PATH), "--mode", "validate", "-c", str(path), "--log-level", "critical"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (envoy.returncode == 0) == valid, envoy.stdout + envoy.stderr
    if valid:
        load(str(path))
    else:
        with pytest.raises(ConfigError):
            load(str(path))
