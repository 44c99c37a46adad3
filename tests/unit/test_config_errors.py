"""Error paths and reasons beyond the file corpus: built from dicts, one field at a time."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxyd.config import compile_bootstrap, load
from proxyd.config.proto import locate_error
from proxyd.config.values import check_regex
from proxyd.errors import ConfigError

BASE: dict[str, Any] = yaml.safe_load(
    (Path(__file__).parent / "config_corpus" / "good-full.yaml").read_text()
)
HCM_PATH = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"


def hcm(d: dict[str, Any]) -> dict[str, Any]:
    return d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def cluster(d: dict[str, Any], i: int = 0) -> dict[str, Any]:
    return d["static_resources"]["clusters"][i]


def reject(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        compile_bootstrap(data, "conf.yaml")
    return info.value


def base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def test_error_carries_file_path_and_reason() -> None:
    d = base()
    hcm(d)["route_config"]["virtual_hosts"][1]["routes"][0]["match"]["prefx"] = "/"
    err = reject(d)
    assert err.file == "conf.yaml"
    assert err.path == f"{HCM_PATH}.route_config.virtual_hosts[1].routes[0].match.prefx"
    assert "unknown field 'prefx'" in err.reason
    assert "did you mean 'prefix'?" in err.reason
    assert str(err) == f"conf.yaml: {err.path}: {err.reason}"


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load("/nonexistent/proxyd.yaml")


@pytest.mark.parametrize(
    ("text", "reason"),
    [("", "the file is empty"), ("- a\n- b\n", "must be a mapping"), ("a: [", "YAML syntax error")],
)
def test_not_a_bootstrap(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=reason):
        load(str(path))


def test_unknown_field_in_map_value_names_the_key() -> None:
    d = base()
    options = cluster(d)["typed_extension_protocol_options"]
    options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"][
        "common_http_protocol_options"
    ]["idle_timeot"] = "1s"
    err = reject(d)
    assert err.path == (
        "static_resources.clusters[0].typed_extension_protocol_options"
        "['envoy.extensions.upstreams.http.v3.HttpProtocolOptions']"
        ".common_http_protocol_options.idle_timeot"
    )


def test_any_without_type() -> None:
    d = base()
    del hcm(d)["http_filters"][0]["typed_config"]["@type"]
    err = reject(d)
    assert err.path == f"{HCM_PATH}.http_filters[0].typed_config.@type"


def test_wrong_type_inside_a_list() -> None:
    d = base()
    hcm(d)["route_config"]["virtual_hosts"][0]["domains"][1] = {"a": 1}
    err = reject(d)
    assert err.path == f"{HCM_PATH}.route_config.virtual_hosts[0].domains[1]"


def test_a_string_that_is_not_a_number_is_named_as_such() -> None:
    # A template placeholder left in a port, as in nighthawk's benchmark configs.
    d = base()
    cluster(d)["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"
    ]["port_value"] = "$server_port"
    err = reject(d)
    assert err.path.endswith("endpoint.address.socket_address.port_value")
    assert err.reason == "expected an integer, got the string '$server_port'"


def test_locate_error_returns_none_for_valid_data() -> None:
    from envoy.config.bootstrap.v3 import bootstrap_pb2

    assert locate_error(BASE, bootstrap_pb2.Bootstrap.DESCRIPTOR, "") is None


def test_unsupported_bootstrap_field() -> None:
    d = base()
    d["header_prefix"] = "x-edge"
    err = reject(d)
    assert (err.path, err.reason) == ("header_prefix", "field not supported by proxyd")


def test_unsupported_filter_named_without_typed_config() -> None:
    d = base()
    hcm(d)["http_filters"].insert(0, {"name": "envoy.filters.http.lua"})
    err = reject(d)
    assert err.path == f"{HCM_PATH}.http_filters[0]"
    assert "'envoy.filters.http.lua' not supported by proxyd" in err.reason


def test_unsupported_network_filter() -> None:
    d = base()
    d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0] = {
        "name": "envoy.filters.network.echo",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo"
        },
    }
    err = reject(d)
    assert err.path == "static_resources.listeners[0].filter_chains[0].filters[0]"
    assert "network filter 'envoy.filters.network.echo'" in err.reason


def test_unsupported_protocol_options_key() -> None:
    d = base()
    options = cluster(d)["typed_extension_protocol_options"]
    options["envoy.filters.network.thrift_proxy"] = options.pop(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    )
    err = reject(d)
    assert "protocol options for 'envoy.filters.network.thrift_proxy'" in err.reason


def test_unsupported_socket_address_field() -> None:
    d = base()
    d["static_resources"]["listeners"][0]["address"]["socket_address"]["protocol"] = "UDP"
    err = reject(d)
    assert err.path == "static_resources.listeners[0].address.socket_address.protocol"


def test_two_filter_chains_with_the_same_matching_rules() -> None:
    d = base()
    chains = d["static_resources"]["listeners"][0]["filter_chains"]
    chains.append(copy.deepcopy(chains[0]))
    err = reject(d)
    assert err.path == "static_resources.listeners[0].filter_chains[1].filter_chain_match"
    assert "multiple filter chains with the same matching rules" in err.reason


def test_listener_address_must_be_an_ip() -> None:
    d = base()
    d["static_resources"]["listeners"][0]["address"]["socket_address"]["address"] = "localhost"
    err = reject(d)
    assert "malformed IP address: localhost" in err.reason


def test_max_requests_per_connection_twice() -> None:
    d = base()
    cluster(d)["max_requests_per_connection"] = 5
    err = reject(d)
    assert err.path == "static_resources.clusters[0].max_requests_per_connection"


def test_endpoint_port_zero() -> None:
    d = base()
    ep = cluster(d, 1)["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    ep["endpoint"]["address"]["socket_address"]["port_value"] = 0
    err = reject(d)
    assert err.path.endswith("lb_endpoints[0].endpoint.address.socket_address.port_value")


def test_choice_count_constraint() -> None:
    d = base()
    cluster(d)["least_request_lb_config"]["choice_count"] = 1
    err = reject(d)
    assert err.path == "static_resources.clusters[0].least_request_lb_config.choice_count"
    assert err.reason == "value must be greater than or equal to 2"


def test_header_string_match_regex_is_checked() -> None:
    d = base()
    headers = hcm(d)["route_config"]["virtual_hosts"][0]["routes"][1]["match"]["headers"]
    headers[4]["string_match"]["safe_regex"]["regex"] = "[a-"
    err = reject(d)
    assert err.path.endswith("headers[4].string_match.safe_regex.regex")


def test_case_sensitive_is_ignored_for_safe_regex() -> None:
    d = base()
    match = hcm(d)["route_config"]["virtual_hosts"][0]["routes"][1]["match"]
    match["case_sensitive"] = False
    loaded = compile_bootstrap(d, "conf.yaml")
    route = loaded.epoch_template.listeners[0].hcm.route_config.virtual_hosts[0].routes[1]
    assert route.match.case_sensitive is True


def test_present_match_false_and_invert_match_is_present() -> None:
    d = base()
    headers = hcm(d)["route_config"]["virtual_hosts"][0]["routes"][1]["match"]["headers"]
    headers[1]["invert_match"] = True
    loaded = compile_bootstrap(d, "conf.yaml")
    route = loaded.epoch_template.listeners[0].hcm.route_config.virtual_hosts[0].routes[1]
    assert route.match.headers[1].invert_match is False


def test_bad_log_format_in_inline_string() -> None:
    d = base()
    source = hcm(d)["access_log"][0]["typed_config"]["log_format"]["text_format_source"]
    source["inline_string"] = "%NOT_AN_OPERATOR%"
    err = reject(d)
    assert err.path == (
        f"{HCM_PATH}.access_log[0].typed_config.log_format.text_format_source.inline_string"
    )
    assert "NOT_AN_OPERATOR" in err.reason


def test_admin_access_log_path_and_no_address() -> None:
    d = base()
    d["admin"] = {"access_log_path": "/tmp/a.log"}
    assert compile_bootstrap(d, "conf.yaml").admin is None
    d["admin"]["address"] = {"socket_address": {"address": "::1", "port_value": 9000}}
    admin = compile_bootstrap(d, "conf.yaml").admin
    assert admin is not None
    assert (admin.address, admin.port, admin.access_log_path) == ("::1", 9000, "/tmp/a.log")


def test_admin_two_access_log_settings() -> None:
    d = base()
    d["admin"]["access_log_path"] = "/tmp/a.log"  # Envoy opens both logs
    err = reject(d)
    assert "only one admin access log" in err.reason


def test_admin_log_format_not_supported() -> None:
    d = base()
    d["admin"]["access_log"][0]["typed_config"]["format"] = "%PROTOCOL%\n"
    err = reject(d)
    assert err.path == "admin.access_log[0].typed_config.format"
    assert err.reason == "field not supported by proxyd"


@pytest.mark.parametrize("pattern", ["/v[0-9]+", "(?i)abc", "[^/]+", r"\d{3}", "a|b", "(?P<v>x)"])
def test_re2_patterns_accepted(pattern: str) -> None:
    check_regex(pattern, "x", "f")


@pytest.mark.parametrize(
    "pattern",
    ["(", "a{2,1}", "(?<=a)b", r"(a)\1", "(?P<n>a)(?P=n)", "(?>a)", "a*+", "[[:alpha:]]+"],
)
def test_regexes_rejected(pattern: str) -> None:
    with pytest.raises(ConfigError, match="invalid regex"):
        check_regex(pattern, "x", "f")
