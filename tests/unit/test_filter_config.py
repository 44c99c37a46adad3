"""The buffer and fault filters' configs through proxyd.config.compile_bootstrap: what
they compile to (HCM http_filters and each route's resolved typed_per_filter_config),
and refusals that name the field path, as Envoy's validation does."""

from __future__ import annotations

import copy
from typing import Any

import msgpack
import pytest
import yaml

from proxyd.config import compile_bootstrap
from proxyd.epoch import Epoch, FilterOverride, HttpConnectionManager, from_wire, to_wire
from proxyd.errors import ConfigError

BUFFER = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"
BUFFER_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute"
FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
HCM = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"

BASE: dict[str, Any] = yaml.safe_load(
    f"""
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: 8000}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: s
          route_config:
            virtual_hosts:
            - name: v
              domains: ["*"]
              routes:
              - name: r0
                match: {{prefix: /a}}
                route: {{cluster: c}}
              - name: r1
                match: {{prefix: /}}
                route: {{cluster: c}}
          http_filters:
          - name: buf
            typed_config: {{"@type": {BUFFER}, max_request_bytes: 1024}}
          - name: flt
            typed_config:
              "@type": {FAULT}
              abort: {{http_status: 503, percentage: {{numerator: 25}}}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: c
    load_assignment:
      cluster_name: c
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 9000}}}}}}
"""
)


def base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def hcm(d: dict[str, Any]) -> dict[str, Any]:
    return d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def route_config(d: dict[str, Any]) -> dict[str, Any]:
    return hcm(d)["route_config"]


def vhost(d: dict[str, Any]) -> dict[str, Any]:
    return route_config(d)["virtual_hosts"][0]


def route(d: dict[str, Any], i: int) -> dict[str, Any]:
    return vhost(d)["routes"][i]


def compiled(d: dict[str, Any]) -> HttpConnectionManager:
    hcm = compile_bootstrap(d, "conf.yaml").epoch_template.listeners[0].hcm
    assert hcm is not None
    return hcm


def overrides(d: dict[str, Any], i: int) -> dict[str, FilterOverride]:
    routes = compiled(d).route_config.virtual_hosts[0].routes
    return {o.name: o for o in routes[i].filter_configs}


def reject(d: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        compile_bootstrap(d, "conf.yaml")
    assert info.value.file == "conf.yaml"
    return info.value


def fault_config(**fields: Any) -> dict[str, Any]:
    return {"@type": FAULT, **fields}


# -- what compiles --------------------------------------------------------------------------


def test_http_filters_compile_in_order() -> None:
    filters = compiled(base()).http_filters
    assert [(f.name, f.disabled) for f in filters] == [("buf", False), ("flt", False)]
    assert filters[0].config == {"max_request_bytes": 1024}
    assert filters[1].config == {
        "abort": {
            "http_status": 503,
            "grpc_status": None,
            "header": False,
            "numerator": 25,
            "denominator": 100,
        },
        "delay": None,
        "upstream_cluster": "",
        "downstream_nodes": [],
        "headers": [],
        "max_active_faults": None,
        "disable_downstream_cluster_stats": False,
        "runtime_keys": {
            "abort_percent": "fault.http.abort.abort_percent",
            "abort_http_status": "fault.http.abort.http_status",
            "abort_grpc_status": "fault.http.abort.grpc_status",
            "delay_percent": "fault.http.delay.fixed_delay_percent",
            "delay_duration": "fault.http.delay.fixed_duration_ms",
            "max_active_faults": "fault.http.max_active_faults",
        },
    }


def test_fault_runtime_key_fields_rename_the_keys() -> None:
    d = base()
    hcm(d)["http_filters"][1]["typed_config"].update(
        abort_percent_runtime="canary.abort", max_active_faults_runtime="canary.max"
    )
    keys = compiled(d).http_filters[1].config["runtime_keys"]
    assert keys["abort_percent"] == "canary.abort"
    assert keys["max_active_faults"] == "canary.max"
    assert keys["delay_percent"] == "fault.http.delay.fixed_delay_percent"


def test_filter_entries_survive_the_epoch_wire() -> None:
    d = base()
    hcm(d)["http_filters"][1]["typed_config"]["headers"] = [
        {"name": "x-canary", "string_match": {"prefix": "y", "ignore_case": True}}
    ]
    epoch = compile_bootstrap(d, "conf.yaml").epoch_template
    wire = msgpack.unpackb(msgpack.packb(to_wire(epoch), use_bin_type=True), raw=False)
    back = from_wire(Epoch, wire)
    assert back.listeners[0].hcm is not None
    assert (
        back.listeners[0].hcm.http_filters[1].config
        == epoch.listeners[0].hcm.http_filters[1].config
    )  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("percentage", "expected"),
    [
        (None, (0, 100)),  # Envoy's default: 0 of HUNDRED
        ({"numerator": 5}, (5, 100)),
        ({"numerator": 5, "denominator": "TEN_THOUSAND"}, (5, 10_000)),
        ({"numerator": 5, "denominator": "MILLION"}, (5, 1_000_000)),
        ({"numerator": 200, "denominator": "HUNDRED"}, (200, 100)),
    ],
)
def test_percentages(percentage: dict[str, Any] | None, expected: tuple[int, int]) -> None:
    d = base()
    delay: dict[str, Any] = {"fixed_delay": "1.5s"}
    abort: dict[str, Any] = {"header_abort": {}}
    if percentage is not None:
        delay["percentage"] = abort["percentage"] = percentage
    hcm(d)["http_filters"][1]["typed_config"] = fault_config(abort=abort, delay=delay)
    config = compiled(d).http_filters[1].config
    assert (config["abort"]["numerator"], config["abort"]["denominator"]) == expected
    assert (config["delay"]["numerator"], config["delay"]["denominator"]) == expected
    assert config["abort"]["header"] is True
    assert config["delay"]["fixed_ms"] == 1500


@pytest.mark.parametrize(
    ("delay", "fixed_ms"),
    [({"fixed_delay": "0.0005s"}, 0), ({"fixed_delay": "2s"}, 2000), ({"header_delay": {}}, None)],
)
def test_delays(delay: dict[str, Any], fixed_ms: int | None) -> None:
    d = base()
    hcm(d)["http_filters"][1]["typed_config"] = fault_config(delay=delay)
    assert compiled(d).http_filters[1].config["delay"]["fixed_ms"] == fixed_ms


def test_fault_selectors_and_limits() -> None:
    d = base()
    hcm(d)["http_filters"][1]["typed_config"] = fault_config(
        abort={"grpc_status": 14, "percentage": {"numerator": 100}},
        upstream_cluster="c",
        downstream_nodes=["n1"],
        headers=[{"name": "X-Canary", "exact_match": "yes"}, {"name": "x-user"}],
        max_active_faults=3,
        disable_downstream_cluster_stats=True,
    )
    config = compiled(d).http_filters[1].config
    assert config["abort"]["grpc_status"] == 14
    assert config["abort"]["http_status"] is None
    assert config["upstream_cluster"] == "c"
    assert config["downstream_nodes"] == ["n1"]
    assert config["headers"] == [
        ["x-canary", ["exact", "yes", False], False, False],
        ["x-user", None, False, False],
    ]
    assert config["max_active_faults"] == 3
    assert config["disable_downstream_cluster_stats"] is True


def test_filter_disabled_in_the_hcm() -> None:
    d = base()
    hcm(d)["http_filters"][0]["disabled"] = True
    assert [f.disabled for f in compiled(d).http_filters] == [True, False]


def test_per_route_levels_most_specific_wins() -> None:
    d = base()
    route_config(d)["typed_per_filter_config"] = {
        "buf": {"@type": BUFFER_PER_ROUTE, "buffer": {"max_request_bytes": 1}},
        "flt": fault_config(abort={"http_status": 500, "percentage": {"numerator": 100}}),
    }
    vhost(d)["typed_per_filter_config"] = {
        "buf": {"@type": BUFFER_PER_ROUTE, "buffer": {"max_request_bytes": 2}},
    }
    route(d, 0)["typed_per_filter_config"] = {
        "buf": {"@type": BUFFER_PER_ROUTE, "disabled": True},
        "flt": fault_config(delay={"fixed_delay": "1s", "percentage": {"numerator": 100}}),
    }
    r0, r1 = overrides(d, 0), overrides(d, 1)
    assert r0["buf"] == FilterOverride("buf", {"disabled": True})
    assert r0["flt"].config["delay"]["fixed_ms"] == 1000
    assert r0["flt"].config["abort"] is None
    assert r1["buf"] == FilterOverride("buf", {"max_request_bytes": 2})
    assert r1["flt"].config["abort"]["http_status"] == 500


def test_filter_config_wrapper() -> None:
    d = base()
    hcm(d)["http_filters"][1]["disabled"] = True
    route(d, 0)["typed_per_filter_config"] = {
        "buf": {"@type": FILTER_CONFIG, "disabled": True},
        "flt": {"@type": FILTER_CONFIG, "config": fault_config(abort={"http_status": 418})},
    }
    vhost(d)["typed_per_filter_config"] = {"flt": {"@type": FILTER_CONFIG}}
    r0, r1 = overrides(d, 0), overrides(d, 1)
    assert r0["buf"] == FilterOverride("buf", None, disabled=True)
    assert r0["flt"].enabled and r0["flt"].config["abort"]["http_status"] == 418
    assert r1["flt"] == FilterOverride("flt", None, enabled=True)


# -- what is refused, by path ---------------------------------------------------------------

FILTER = f"{HCM}.http_filters[0].typed_config"
FAULT_AT = f"{HCM}.http_filters[1].typed_config"


@pytest.mark.parametrize(
    ("buffer", "where", "reason"),
    [
        ({}, "max_request_bytes", "value is required"),
        ({"max_request_bytes": 0}, "max_request_bytes", "value must be greater than 0"),
        ({"max_request_bytes": 1, "extra": 1}, "extra", "unknown field"),
    ],
)
def test_buffer_refused(buffer: dict[str, Any], where: str, reason: str) -> None:
    d = base()
    hcm(d)["http_filters"][0]["typed_config"] = {"@type": BUFFER, **buffer}
    err = reject(d)
    assert err.path == f"{FILTER}.{where}"
    assert reason in err.reason


ROUTE0 = f"{HCM}.route_config.virtual_hosts[0].routes[0].typed_per_filter_config['buf']"


@pytest.mark.parametrize(
    ("entry", "where", "reason"),
    [
        ({"@type": BUFFER_PER_ROUTE}, "override", "one of its fields is required"),
        ({"@type": BUFFER_PER_ROUTE, "disabled": False}, "disabled", "value must equal true"),
        (
            {"@type": BUFFER_PER_ROUTE, "buffer": {}},
            "buffer.max_request_bytes",
            "value is required",
        ),
        (
            {
                "@type": FILTER_CONFIG,
                "config": {"@type": BUFFER_PER_ROUTE, "buffer": {"max_request_bytes": 0}},
            },
            "config.buffer.max_request_bytes",
            "value must be greater than 0",
        ),
        ({"@type": BUFFER}, "", "per-route filter config"),
    ],
)
def test_buffer_per_route_refused(entry: dict[str, Any], where: str, reason: str) -> None:
    d = base()
    route(d, 0)["typed_per_filter_config"] = {"buf": entry}
    err = reject(d)
    assert err.path == (f"{ROUTE0}.{where}" if where else ROUTE0)
    assert reason in err.reason


@pytest.mark.parametrize(
    ("fault", "where", "reason"),
    [
        ({"abort": {"http_status": 199}}, "abort.http_status", "greater than or equal to 200"),
        ({"abort": {"http_status": 600}}, "abort.http_status", "less than 600"),
        ({"abort": {"percentage": {"numerator": 1}}}, "abort.error_type", "required"),
        ({"delay": {"fixed_delay": "0s"}}, "delay.fixed_delay", "greater than 0s"),
        ({"delay": {"percentage": {"numerator": 1}}}, "delay.fault_delay_secifier", "required"),
        (
            {"abort": {"http_status": 503, "percentage": {"numerator": 1, "denominator": 7}}},
            "abort.percentage.denominator",
            "not a defined DenominatorType",
        ),
        # Not implemented: refused by name.
        (
            {"response_rate_limit": {"fixed_limit": {"limit_kbps": 1}}},
            "response_rate_limit",
            "not supported by proxyd",
        ),
        (
            {"response_rate_limit_percent_runtime": "k"},
            "response_rate_limit_percent_runtime",
            "not supported by proxyd",
        ),
        ({"filter_metadata": {"a": 1}}, "filter_metadata", "not supported by proxyd"),
        (
            {"headers": [{"name": "x", "range_match": {"start": 1, "end": 2}}]},
            "headers[0].range_match",
            "not supported by proxyd",
        ),
    ],
)
def test_fault_refused(fault: dict[str, Any], where: str, reason: str) -> None:
    d = base()
    hcm(d)["http_filters"][1]["typed_config"] = fault_config(**fault)
    err = reject(d)
    assert err.path == f"{FAULT_AT}.{where}"
    assert reason in err.reason
    # The same message per route is refused at the route's path.
    d = base()
    vhost(d)["typed_per_filter_config"] = {"flt": fault_config(**fault)}
    err = reject(d)
    assert err.path == f"{HCM}.route_config.virtual_hosts[0].typed_per_filter_config['flt'].{where}"
    assert reason in err.reason


def test_fault_header_regex_checked() -> None:
    d = base()
    hcm(d)["http_filters"][1]["typed_config"] = fault_config(
        abort={"http_status": 503},
        headers=[{"name": "x", "string_match": {"safe_regex": {"regex": "(?=a)"}}}],
    )
    err = reject(d)
    assert err.path == f"{FAULT_AT}.headers[0].string_match.safe_regex.regex"


def test_every_filter_has_both_sides_under_one_type_name() -> None:
    """The worker's factories and the master's compilers name the same filters."""
    from proxyd.filters.compilers import COMPILERS
    from proxyd.filters.runtimes import FACTORIES

    assert set(FACTORIES) == set(COMPILERS)
    assert all(COMPILERS[t].TYPE == t for t in COMPILERS)
