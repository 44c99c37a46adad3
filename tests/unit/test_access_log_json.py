"""json_format, omit_empty_values and the operators added for issue 9.

Expected lines are what Envoy 1.40 wrote for the same format and request (see
tests/compat/test_access_log_compat.py, which checks the same against the real binary).
"""

from __future__ import annotations

import json

from proxyd.protocol.access_log import JsonLogFormat, LogFormat, LogRecord, make_format

# Envoy 1.40, a 200 proxied to 127.0.0.1:35253 with "x-empty:" and no x-missing.
ENVOY_JSON = (
    '{"alpha":null,"b":true,"bs":26,"empty":"","lst":["HTTP/1.1","x"],"mid":"code 200 -",'
    '"nested":{"d":4,"e":"127.0.0.1:35253"},"nul":null,"num":5,"st":"1796338452",'
    '"zeta":200}\n'
)
FORMAT = {
    "zeta": "%RESPONSE_CODE%",
    "alpha": "%REQ(X-MISSING)%",
    "mid": "code %RESPONSE_CODE% %REQ(x-missing)%",
    "num": 5.0,  # a Struct number arrives as a double
    "b": True,
    "nested": {"d": "%DURATION%", "e": "%UPSTREAM_HOST%"},
    "empty": "%REQ(x-empty)%",
    "lst": ["%PROTOCOL%", "x"],
    "st": "%START_TIME(%s)%",
    "bs": "%BYTES_SENT%",
    "nul": None,
}


def rec(**kw: object) -> LogRecord:
    base: dict[str, object] = {
        "start_time": 1796338452.5,
        "response_code": 200,
        "duration_ms": 4,
        "bytes_sent": 26,
        "upstream_host": "127.0.0.1:35253",
        "req_headers": {"x-empty": ""},
    }
    base.update(kw)
    return LogRecord(**base)


def test_json_format_matches_envoy() -> None:
    fmt = JsonLogFormat(json.dumps(FORMAT))
    assert fmt.format(rec()) == ENVOY_JSON
    assert fmt.request_headers == frozenset({"x-missing", "x-empty"})


def test_json_omit_empty_values_drops_absent_values_and_emptied_objects() -> None:
    # Envoy: {"empty":"","zeta":404} for a 404 with no upstream (nested emptied: gone).
    src = {
        "zeta": "%RESPONSE_CODE%",
        "alpha": "%REQ(X-MISSING)%",
        "empty": "%REQ(x-empty)%",
        "nested": {"m": "%REQ(x-missing)%"},
    }
    fmt = JsonLogFormat(json.dumps(src), omit_empty_values=True)
    assert fmt.format(rec(response_code=404)) == '{"empty":"","zeta":404}\n'


def test_text_omit_empty_values() -> None:
    fmt = LogFormat("T1 [%REQ(x-missing)%] [%REQ(x-empty)%] [%RESPONSE_CODE%]\n", True)
    assert fmt.format(rec()) == "T1 [] [] [200]\n"
    assert LogFormat("%REQ(x-missing)%").format(rec()) == "-"


def test_make_format_picks_json_over_text() -> None:
    assert isinstance(make_format("", '{"a": "%PROTOCOL%"}'), JsonLogFormat)
    assert isinstance(make_format("%PROTOCOL%"), LogFormat)


def test_addresses_ports_and_names() -> None:
    fmt = LogFormat(
        "%DOWNSTREAM_REMOTE_PORT%|%DOWNSTREAM_LOCAL_PORT%|%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%|"
        "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%|%UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%|"
        "%UPSTREAM_REMOTE_PORT%|%UPSTREAM_HOST_NAME%|%UPSTREAM_HOST_NAME_WITHOUT_PORT%|"
        "%LISTENER_NAME%|%ACCESS_LOG_TYPE%|%STREAM_ID%|%UPSTREAM_CLUSTER_RAW%"
    )
    r = rec(
        downstream_remote_address="[::1]:5555",
        downstream_direct_remote_address="10.0.0.9:4444",
        downstream_local_address="127.0.0.1:10000",
        upstream_remote_address="10.1.1.1:80",
        upstream_hostname="svc.local:80",
        listener_name="main",
        request_id="r-1",
        upstream_cluster="c1",
    )
    assert fmt.format(r) == (
        "5555|10000|127.0.0.1|10.0.0.9:4444|10.1.1.1|80|svc.local:80|svc.local|main|"
        "DownstreamEnd|r-1|c1"
    )


def test_path_query_param_and_query_params() -> None:
    fmt = LogFormat(
        "%PATH%|%PATH(NQ)%|%PATH(WQ:PATH)%|%PATH(NQ:ORIG)%|%QUERY_PARAM(a)%|%QUERY_PARAM(b):2%|"
        "%QUERY_PARAM(c)%|%QUERY_PARAMS%|%PATH(:PATH):4%"
    )
    r = rec(path="/p/q?a=1&b=xyz", req_headers={"x-envoy-original-path": "/orig?z=1"})
    assert fmt.format(r) == "/orig?z=1|/orig|/p/q?a=1&b=xyz|/orig|1|xy|-|a=1&b=xyz|/p/q"
    assert LogFormat("%PATH(NQ:ORIG)%|%QUERY_PARAMS%").format(rec(path="/x")) == "-|-"


def test_grpc_status_is_read_only_for_grpc_requests() -> None:
    fmt = LogFormat(
        "%GRPC_STATUS%|%GRPC_STATUS(SNAKE_STRING)%|%GRPC_STATUS(NUMBER)%|%GRPC_STATUS_NUMBER%"
    )
    grpc = {"content-type": "application/grpc"}
    assert fmt.format(rec()) == "-|-|-|-"
    assert fmt.format(rec(req_headers=grpc)) == "Unknown|UNKNOWN|2|2"  # 200, no grpc-status
    assert fmt.format(rec(req_headers=grpc, response_code=503)) == ("Unavailable|UNAVAILABLE|14|14")
    r = rec(req_headers=grpc, resp_headers={"grpc-status": "5"})
    assert fmt.format(r) == "NotFound|NOT_FOUND|5|5"
    assert fmt.format(rec(req_headers=grpc, response_code=0)) == "-|-|-|-"


def test_response_flags_long_and_constants() -> None:
    fmt = LogFormat(
        "%RESPONSE_FLAGS_LONG%|%CUSTOM_FLAGS%|%TRACE_ID%|%REQUESTED_SERVER_NAME%|"
        "%CONNECTION_TERMINATION_DETAILS%|%VIRTUAL_CLUSTER_NAME%"
    )
    assert fmt.format(rec(response_flags="UF,UO")) == (
        "UpstreamConnectionFailure,UpstreamOverflow||-|-|-|-"
    )
    assert fmt.format(rec()) == "-||-|-|-|-"


def test_environment_and_unique_id(monkeypatch: object) -> None:
    import os

    os.environ["PROXYD_TEST_ENV_X"] = "value-x"
    try:
        fmt = LogFormat(
            "%ENVIRONMENT(PROXYD_TEST_ENV_X)%|%ENVIRONMENT(PROXYD_TEST_ENV_X):3%|%ENVIRONMENT(PROXYD_NOPE)%"
        )
    finally:
        del os.environ["PROXYD_TEST_ENV_X"]
    assert fmt.format(rec()) == "value-x|val|-"
    ids = LogFormat("%UNIQUE_ID%")
    a, b = ids.format(rec()), ids.format(rec())
    assert a != b and len(a) == 36


def test_request_and_response_headers_by_their_long_names() -> None:
    fmt = LogFormat("%REQUEST_HEADER(X-A)%|%RESPONSE_HEADER(X-B)%|%REQ(:SCHEME)%|%RESP(SERVER)%")
    r = rec(req_headers={"x-a": "1"}, resp_headers={"x-b": "2"}, server="envoy")
    assert fmt.format(r) == "1|2|http|envoy"


def test_time_operators() -> None:
    fmt = LogFormat("%START_TIME(%s)%|%START_TIME(%Y)%|%EMIT_TIME(%Y)%")
    line = fmt.format(rec())
    start, year, emit_year = line.split("|")
    assert (start, year) == ("1796338452", "2026")
    assert emit_year.isdigit()
    local = LogFormat("%START_TIME_LOCAL%").format(rec())
    assert local.startswith("2026-")
