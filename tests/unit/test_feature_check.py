"""A parse error inside a feature proxyd does not implement is refused as that feature.

proxyd's descriptors can be older than Envoy's; what they do not know inside an
unimplemented filter or field is reported as the missing feature, by name
(proxyd.config.feature_check). Everything else keeps the parser's error.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2

from proxyd.config import compile_bootstrap
from proxyd.config.feature_check import unsupported_around
from proxyd.config.supported import BOOTSTRAP
from proxyd.errors import ConfigError

HCM_T = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"  # noqa: E501
HCM = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
BOOTSTRAP_DESC = bootstrap_pb2.Bootstrap.DESCRIPTOR


def bootstrap(http_filter: dict[str, Any], **top: Any) -> dict[str, Any]:
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        },  # noqa: E501
    }
    hcm = {
        "@type": HCM_T,
        "stat_prefix": "in",
        "route_config": {"virtual_hosts": [{"name": "a", "domains": "*", "routes": []}]},
        "http_filters": [http_filter, router],
    }
    listener = {
        "name": "l",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
        "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}],
    }
    return {"static_resources": {"listeners": [listener]}, **top}


def refusal(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        compile_bootstrap(data, "f.yaml")
    return caught.value


def test_a_type_newer_than_the_descriptors_is_refused_as_the_filter() -> None:
    newer = {
        "name": "sse",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.sse_to_metadata.v3.SseToMetadata"
        },  # noqa: E501
    }
    err = refusal(bootstrap(newer))
    assert err.path == f"{HCM}.http_filters[0]"
    assert err.reason == (
        "HTTP filter 'sse' (envoy.extensions.filters.http.sse_to_metadata.v3.SseToMetadata)"
        " not supported by proxyd"
    )


def test_an_unknown_field_in_an_unsupported_top_level_field_names_the_field() -> None:
    sinks = {"stats_sinks": [{"name": "s", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.stat_sinks.open_telemetry.v3.SinkConfig",
        "field_from_the_future": 1,
    }}]}  # fmt: skip
    data = bootstrap({"name": "x", "typed_config": {"@type": HCM_T}}, **sinks)
    found = unsupported_around(
        data,
        BOOTSTRAP_DESC,
        {"static_resources": {}},
        "stats_sinks[0].typed_config.field_from_the_future",
    )  # noqa: E501
    assert found == ("stats_sinks", "field not supported by proxyd")


def test_a_camel_case_key_and_a_single_value_for_a_list_are_walked() -> None:
    data = {"staticResources": {"clusters": {"name": "c", "lrsServer": {"x": 1}}}}
    found = unsupported_around(
        data, BOOTSTRAP_DESC, BOOTSTRAP, "staticResources.clusters.lrsServer.x"
    )
    assert found == ("staticResources.clusters.lrsServer", "field not supported by proxyd")


def test_an_error_outside_any_unsupported_feature_stays_a_parse_error() -> None:
    data = bootstrap({"name": "x", "typed_config": {"@type": HCM_T}})
    data["static_resources"]["clusters"] = [{"name": "c", "conect_timeout": "1s"}]
    err = refusal(data)
    assert err.path == "static_resources.clusters[0].conect_timeout"
    assert err.reason.startswith("unknown field 'conect_timeout'")


def test_v2_misspelt_and_foreign_type_urls_stay_unknown_types_as_in_envoy() -> None:
    for type_url in (
        "type.googleapis.com/envoy.config.filter.http.cors.v2.Cors",
        "type.googleapis.com/envoy.extensions.filters.http.routr.v3.Router",
        "type.googleapis.com/example.com.NoSuchFilter",
    ):
        err = refusal(bootstrap({"name": "x", "typed_config": {"@type": type_url}}))
        assert err.path == f"{HCM}.http_filters[0].typed_config.@type"
        assert err.reason.startswith("unknown type URL")


def test_a_wrong_type_inside_an_unsupported_filter_stays_a_parse_error() -> None:
    ext_authz = {
        "name": "authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "failure_mode_allow": [1],
        },
    }
    err = refusal(bootstrap(ext_authz))
    assert err.path == f"{HCM}.http_filters[0].typed_config.failure_mode_allow"
    assert "not supported" not in err.reason


def test_a_deprecated_field_is_left_to_the_parser_and_the_translation() -> None:
    text = """
    static_resources:
      clusters:
      - name: c
        http2_protocol_options: {no_such_option: 1}
    """
    err = refusal(yaml.safe_load(text))
    assert err.path == "static_resources.clusters[0].http2_protocol_options.no_such_option"
    assert err.reason.startswith("unknown field")


def test_refusals_list_every_feature_set_and_skip_values_protobuf_leaves_unset() -> None:
    from proxyd.config.feature_check import refusals

    data = bootstrap({"name": "x", "typed_config": {"@type": HCM_T}}, enable_dispatcher_stats=True)
    listener = data["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["protocol"] = "tcp"  # the default: not set
    listener["listener_filters"] = []  # empty: not set
    listener["tcp_fast_open_queue_length"] = 5
    listener["filter_chains"][0]["metadata"] = {"filter_metadata": {"a": {"b": 1}}}
    paths = [path for path, _reason in refusals(data, BOOTSTRAP_DESC, BOOTSTRAP)]
    assert paths == [
        f"{HCM}.http_filters[0]",  # an HttpConnectionManager is no HTTP filter
        "static_resources.listeners[0].filter_chains[0].metadata",
        "static_resources.listeners[0].tcp_fast_open_queue_length",
        "enable_dispatcher_stats",
    ]
