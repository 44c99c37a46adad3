"""gRPC health checks with values only: the grpc.health.v1 messages, the verdict on a
call, the config compiler, and a passing check ending an outlier ejection.

The messages are cross-checked against protobuf's own encoder and parser (a message
class built from a hand-written descriptor in tests/grpc_health_server.py).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxyd.config import compile_bootstrap
from proxyd.epoch import HeaderToAdd, HealthCheck, OutlierDetection
from proxyd.errors import ConfigError
from proxyd.master.health import grpc_check
from proxyd.master.health.grpc_check import CheckReply, ServingStatus
from proxyd.master.health.state import Result
from proxyd.master.outlier.detector import ClusterDetector
from proxyd.master.xds.grpc import Status
from proxyd.worker.outcomes import ERROR_5XX
from tests.grpc_health_server import HealthCheckRequest, HealthCheckResponse

# -- messages -------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["", "a", "grpc.health.v1.Health", "x" * 200, "sérvice/ü"])
def test_request_is_protobufs_encoding(service: str) -> None:
    ours = grpc_check.encode_request(service)
    assert ours == HealthCheckRequest(service=service).SerializeToString()
    assert HealthCheckRequest.FromString(ours).service == service


@pytest.mark.parametrize("status", [0, 1, 2, 3, 7, 300, -1])
def test_response_status_as_protobuf_writes_it(status: int) -> None:
    data = HealthCheckResponse(status=status).SerializeToString()
    assert grpc_check.decode_response(data) == status


def test_response_skips_unknown_fields_and_the_last_status_wins() -> None:
    # field 2 varint, field 3 bytes, field 4 fixed64, field 5 fixed32, then status twice
    data = b"\x10\x05" + b"\x1a\x02hi" + b"\x21" + b"\0" * 8 + b"\x2d" + b"\0" * 4
    data += b"\x08\x02" + b"\x08\x01"
    assert grpc_check.decode_response(data) == ServingStatus.SERVING
    assert HealthCheckResponse.FromString(data).status == ServingStatus.SERVING
    # the status with the wrong wire type is an unknown field, as protobuf treats it
    assert grpc_check.decode_response(b"\x0a\x01\x01") == ServingStatus.UNKNOWN
    assert grpc_check.decode_response(b"") == ServingStatus.UNKNOWN


@pytest.mark.parametrize(
    "data",
    [b"\x08", b"\x08\x80", b"\x0a\x05ab", b"\x21\0\0", b"\x0b", b"\x00\x01", b"\x08" + b"\xff" * 11],
    ids=["no-value", "cut-varint", "cut-bytes", "cut-fixed64", "group", "field-0", "long-varint"],
)  # fmt: skip
def test_malformed_response_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        grpc_check.decode_response(data)


# -- the verdict ----------------------------------------------------------------------------

SERVING = HealthCheckResponse(status=1).SerializeToString()
NOT_SERVING = HealthCheckResponse(status=2).SerializeToString()


@pytest.mark.parametrize(
    ("messages", "status", "result"),
    [
        ([SERVING], Status.OK, Result.SUCCESS),
        ([b"", SERVING, b""], Status.OK, Result.SUCCESS),  # empty frames are skipped
        ([NOT_SERVING], Status.OK, Result.ACTIVE_FAILURE),
        ([HealthCheckResponse(status=0).SerializeToString()], Status.OK, Result.ACTIVE_FAILURE),
        ([HealthCheckResponse(status=3).SerializeToString()], Status.OK, Result.ACTIVE_FAILURE),
        ([], Status.OK, Result.ACTIVE_FAILURE),  # OK without a response
        ([b"\x08"], Status.OK, Result.ACTIVE_FAILURE),  # does not parse
        ([SERVING], Status.UNIMPLEMENTED, Result.ACTIVE_FAILURE),
        ([], Status.NOT_FOUND, Result.ACTIVE_FAILURE),
        ([], Status.INTERNAL, Result.ACTIVE_FAILURE),
        ([], Status.UNAVAILABLE, Result.NETWORK_FAILURE),  # connection lost, GOAWAY
    ],
)
def test_verdict(messages: list[bytes], status: int, result: Result) -> None:
    reply = CheckReply()
    for m in messages:
        assert reply.message(m) is None
    assert reply.end(status) is result


def test_a_second_response_fails_at_once() -> None:
    reply = CheckReply()
    assert reply.message(SERVING) is None
    assert reply.message(SERVING) is Result.ACTIVE_FAILURE


def _hc(**kw: Any) -> HealthCheck:
    return HealthCheck(kind="grpc", timeout_s=1.0, interval_s=1.0, unhealthy_threshold=1, healthy_threshold=1, **kw)  # fmt: skip


def test_authority_and_metadata() -> None:
    assert grpc_check.authority(_hc(), "backend") == "backend"
    assert grpc_check.authority(_hc(grpc_authority="h.example"), "backend") == "h.example"
    hc = _hc(
        grpc_metadata=(
            HeaderToAdd("x-a", "1"),
            HeaderToAdd("x-a", "2"),
            HeaderToAdd("x-b", "3", "ADD_IF_ABSENT"),
            HeaderToAdd("x-b", "4", "ADD_IF_ABSENT"),
            HeaderToAdd("x-a", "5", "OVERWRITE_IF_EXISTS_OR_ADD"),
        )
    )
    assert grpc_check.metadata(hc) == [("x-a", "5"), ("x-b", "3")]


# -- configuration --------------------------------------------------------------------------

GOOD: dict[str, Any] = yaml.safe_load(
    (Path(__file__).parent / "config_corpus" / "good-full.yaml").read_text()
)
HTTP2 = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}


def _compile(grpc: dict[str, Any], http2: bool = True) -> HealthCheck:
    data = copy.deepcopy(GOOD)
    cluster: dict[str, Any] = {
        "name": "backend",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9}}}}
        ]}]},
        "health_checks": [{"timeout": "1s", "interval": "2s", "unhealthy_threshold": 2, "healthy_threshold": 3, "grpc_health_check": grpc}],
    }  # fmt: skip
    if http2:
        cluster["typed_extension_protocol_options"] = HTTP2
    data["static_resources"]["clusters"].append(cluster)
    clusters = compile_bootstrap(data, "conf.yaml").epoch_template.clusters
    return next(c for c in clusters if c.name == "backend").health_checks[0]


PATH = "static_resources.clusters[2].health_checks[0].grpc_health_check"


def test_config_grpc_check() -> None:
    hc = _compile({})
    assert hc == HealthCheck(
        kind="grpc", timeout_s=1.0, interval_s=2.0, unhealthy_threshold=2, healthy_threshold=3,
        no_traffic_interval_s=60.0, no_traffic_healthy_interval_s=60.0, unhealthy_interval_s=2.0,
        unhealthy_edge_interval_s=2.0, healthy_edge_interval_s=2.0,
    )  # fmt: skip
    hc = _compile({
        "service_name": "pkg.Svc", "authority": "svc.internal",
        "initial_metadata": [
            {"header": {"key": "X-Token", "value": "a%%b"}},
            {"header": {"key": "x-env", "value": "prod"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
        ],
    })  # fmt: skip
    assert hc.grpc_service_name == "pkg.Svc" and hc.grpc_authority == "svc.internal"
    assert hc.grpc_metadata == (
        HeaderToAdd("x-token", "a%b"),
        HeaderToAdd("x-env", "prod", "OVERWRITE_IF_EXISTS_OR_ADD"),
    )


@pytest.mark.parametrize(
    ("grpc", "http2", "where", "reason"),
    [
        ({}, False, "", "backend cluster must support HTTP/2 for gRPC healthchecking"),
        ({"initial_metadata": [{"header": {"key": "grpc-timeout", "value": "1S"}}]}, True, ".initial_metadata[0].header.key", "cannot be set"),
        ({"initial_metadata": [{"header": {"key": "x", "value": "1"}}, {"header": {"key": "User-Agent", "value": "me"}}]}, True, ".initial_metadata[1].header.key", "cannot be set"),
        ({"initial_metadata": [{"header": {"key": "te", "value": "x"}}]}, True, ".initial_metadata[0].header.key", "cannot be set"),
        ({"initial_metadata": [{"header": {"key": ":path", "value": "/x"}}]}, True, ".initial_metadata[0].header.key", ":-prefixed or host headers may not be modified"),
        ({"initial_metadata": [{"header": {"key": "Host", "value": "x"}}]}, True, ".initial_metadata[0].header.key", ":-prefixed or host headers may not be modified"),
        ({"initial_metadata": [{"header": {"key": "x", "value": "%UPSTREAM_METADATA(a:b)%"}}]}, True, ".initial_metadata[0].header.value", "formatters"),
        ({"initial_metadata": [{"header": {"key": "x", "value": "1"}, "keep_empty_value": True}]}, True, ".initial_metadata[0].keep_empty_value", "not supported by proxyd"),
    ],
    ids=["not-http2", "grpc-header", "user-agent", "te", "pseudo", "host", "formatter", "keep-empty"],
)  # fmt: skip
def test_config_errors(grpc: dict[str, Any], http2: bool, where: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        _compile(grpc, http2=http2)
    assert info.value.path == PATH + where
    assert reason in info.value.reason


# -- a passing check ends an outlier ejection --------------------------------------------


@pytest.mark.parametrize("uneject", [True, False])
def test_passing_health_check_ends_an_ejection(uneject: bool) -> None:
    cfg = OutlierDetection(
        consecutive_5xx=2, base_ejection_time_s=300.0, max_ejection_percent=50,
        successful_active_health_check_uneject_host=uneject,
    )  # fmt: skip
    d = ClusterDetector(cfg, lambda _s: None)
    d.set_hosts(["10.0.0.1:80", "10.0.0.2:80"])
    d.health_check_passed("10.0.0.1:80", 0.5)  # not ejected: nothing happens
    assert not d.changed
    d.record("10.0.0.1:80", [ERROR_5XX, 2], 1.0)
    assert d.is_ejected("10.0.0.1:80")
    d.changed = False
    d.health_check_passed("10.0.0.2:80", 2.0)  # another host
    assert d.is_ejected("10.0.0.1:80")
    d.health_check_passed("10.0.0.1:80", 2.0)
    assert d.is_ejected("10.0.0.1:80") is not uneject
    assert d.changed is uneject
    if uneject:  # counters were reset: one more 5xx does not eject it again
        d.record("10.0.0.1:80", [ERROR_5XX, 1], 3.0)
        assert not d.is_ejected("10.0.0.1:80")
