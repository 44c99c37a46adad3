"""codec_type and http2_protocol_options as proxyd loads them (downstream HTTP/2)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxyd.config import compile_bootstrap
from proxyd.epoch import Http2Options
from proxyd.errors import ConfigError
from proxyd.protocol.epoch_check import EpochRejected, check_listener

BASE: dict[str, Any] = yaml.safe_load(
    (Path(__file__).parent / "config_corpus" / "good-full.yaml").read_text()
)
HCM_PATH = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"


def hcm(d: dict[str, Any]) -> dict[str, Any]:
    return d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def compiled_hcm(d: dict[str, Any]) -> Any:
    return compile_bootstrap(d, "conf.yaml").epoch_template.listeners[0].hcm


def reject(d: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        compile_bootstrap(d, "conf.yaml")
    return info.value


def test_codec_types_and_options_compile() -> None:
    d = copy.deepcopy(BASE)
    assert compiled_hcm(d).http2 is None  # Envoy's defaults (Http2Options())
    hcm(d)["codec_type"] = "HTTP2"
    hcm(d)["http2_protocol_options"] = {
        "max_concurrent_streams": 7,
        "initial_stream_window_size": 65535,
        "initial_connection_window_size": 1048576,
    }
    h = compiled_hcm(d)
    assert h.codec_type == "HTTP2"
    assert h.http2 == Http2Options(7, 65535, 1048576)
    hcm(d)["http2_protocol_options"] = {"max_concurrent_streams": 9}
    assert compiled_hcm(d).http2 == Http2Options(max_concurrent_streams=9)
    assert Http2Options() == Http2Options(1024, 16 * 1024 * 1024, 24 * 1024 * 1024)


@pytest.mark.parametrize(
    ("options", "field", "words"),
    [
        ({"initial_stream_window_size": 1000}, "initial_stream_window_size", "65535"),
        ({"hpack_table_size": 10}, "hpack_table_size", "not supported by proxyd"),
        ({"allow_metadata": True}, "allow_metadata", "not supported by proxyd"),
        ({"max_outbound_frames": 0}, "max_outbound_frames", "greater than or equal to 1"),
        (
            {"max_inbound_window_update_frames_per_data_frame_sent": 0},
            "max_inbound_window_update_frames_per_data_frame_sent",
            "greater than or equal to 1",
        ),
    ],
)
def test_options_proxyd_lacks_or_out_of_range_are_refused_by_name(
    options: dict[str, Any], field: str, words: str
) -> None:
    d = copy.deepcopy(BASE)
    hcm(d)["http2_protocol_options"] = options
    err = reject(d)
    assert err.path == f"{HCM_PATH}.http2_protocol_options.{field}"
    assert words in err.reason


def test_http2_with_stream_durations_is_refused() -> None:
    d = copy.deepcopy(BASE)
    hcm(d)["codec_type"] = "HTTP2"
    hcm(d)["common_http_protocol_options"] = {"max_stream_duration": "1s"}
    err = reject(d)
    assert err.path == f"{HCM_PATH}.common_http_protocol_options.max_stream_duration"
    assert "not supported by proxyd" in err.reason
    del hcm(d)["common_http_protocol_options"]
    route = hcm(d)["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    route["max_stream_duration"] = {"max_stream_duration": "1s"}
    err = reject(d)
    assert err.path == f"{HCM_PATH}.route_config"
    # The same route config by RDS: the epoch check refuses it when it arrives.
    hcm(d)["codec_type"] = "AUTO"
    listener = compile_bootstrap(d, "conf.yaml").epoch_template.listeners[0]
    check_listener(listener)  # AUTO: such a listener stays HTTP/1.1
    assert listener.hcm is not None
    http2 = dataclasses.replace(listener, hcm=dataclasses.replace(listener.hcm, codec_type="HTTP2"))
    with pytest.raises(EpochRejected, match="not supported by proxyd"):
        check_listener(http2)
