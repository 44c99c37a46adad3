"""``envoy.access_loggers.http_grpc`` / ``tcp_grpc`` → the epoch's GrpcAccessLog, and
what is refused with its path."""

from __future__ import annotations

from typing import Any

from tests.unit.test_config_parse import HCM, base, hcm, load, reject

HTTP_GRPC = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
TCP_GRPC = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig"


def common(**fields: Any) -> dict[str, Any]:
    return {
        "log_name": "edge",
        "grpc_service": {"envoy_grpc": {"cluster_name": "als"}},
        "transport_api_version": "V3",
        **fields,
    }


def logger(type_url: str = HTTP_GRPC, name: str = "envoy.access_loggers.http_grpc",
           **fields: Any) -> dict[str, Any]:  # fmt: skip
    return {"name": name, "typed_config": {"@type": type_url, "common_config": common(), **fields}}


def test_http_and_tcp_loggers() -> None:
    d = base()
    http = logger(
        additional_request_headers_to_log=["X-Tenant"],
        additional_response_headers_to_log=["Content-Type"],
    )
    http["typed_config"]["common_config"].update(
        buffer_flush_interval="0.2s", buffer_size_bytes=100, grpc_service={
            "envoy_grpc": {"cluster_name": "als"}, "timeout": "2s"}
    )  # fmt: skip
    hcm(d)["access_log"] = [http, logger(TCP_GRPC, "envoy.access_loggers.tcp_grpc")]
    first, second = load(d).epoch_template.listeners[0].hcm.access_logs
    assert first.sink == "grpc" and first.writer_key == ""
    g = first.grpc
    assert g is not None
    assert (g.log_name, g.cluster, g.tcp, g.timeout_s) == ("edge", "als", False, 2.0)
    assert (g.flush_interval_s, g.buffer_size_bytes) == (0.2, 100)
    assert g.request_headers == ("x-tenant",) and g.response_headers == ("content-type",)
    assert second.grpc is not None and second.grpc.tcp
    assert first.grpc.custom_tags == ()
    assert second.grpc.flush_interval_s == 1.0 and second.grpc.buffer_size_bytes == 16384


def test_refused_fields_are_named() -> None:
    for field, value in (
        ("additional_response_trailers_to_log", ["grpc-status"]),
        ("common_config", common(filter_state_objects_to_log=["k"])),
        ("common_config", common(custom_tags=[{"tag": "t", "metadata": {"kind": {"route": {}}}}])),
        ("common_config", common(grpc_stream_retry_policy={"retry_back_off": {}})),
    ):
        d = base()
        hcm(d)["access_log"] = [logger(**{field: value})]
        err = reject(d)
        assert "not supported by proxyd" in str(err), field
        assert err.path.startswith(f"{HCM}.access_log[0].typed_config"), err.path


def test_a_log_name_and_an_envoy_grpc_cluster_are_needed() -> None:
    d = base()
    log = logger()
    log["typed_config"]["common_config"]["log_name"] = ""
    hcm(d)["access_log"] = [log]
    assert reject(d).path.endswith("common_config.log_name")
    d = base()
    log = logger()
    log["typed_config"]["common_config"]["grpc_service"] = {
        "google_grpc": {"target_uri": "x:1", "stat_prefix": "s"}
    }
    hcm(d)["access_log"] = [log]
    assert "not supported by proxyd" in str(reject(d))
