"""LogFormat: Envoy's text access-log format.

The expected lines were produced by Envoy 1.40 for the same requests (see
tests/compat for how Envoy is run).
"""

from __future__ import annotations

import pytest

from proxyd.protocol.access_log import DEFAULT_FORMAT, LogFormat, LogRecord

# Envoy 1.40, default format, GET /p?q=1 with Host Example.com:99, routed to an upstream
# that answered 200 with a 2-byte body; x-envoy-original-path: /orig was sent.
ENVOY_200 = (
    '[2026-11-29T17:22:07.864Z] "GET /orig HTTP/1.1" 200 - 0 2 1 0 "-" "curl/8.0" '
    '"2299da9a-f860-4570-9b8c-11810be0d42a" "Example.com:99" "127.0.0.1:35975"\n'
)
# Envoy 1.40, default format, GET /zzz with no matching route.
ENVOY_404 = (
    '[2026-11-29T17:22:17.908Z] "GET /zzz HTTP/1.1" 404 NR 0 0 0 - "-" "curl/8.0" '
    '"7676a00a-5fc3-4767-bfee-988dbf94f298" "Example.com:99" "-"\n'
)


def record(**kw: object) -> LogRecord:
    base: dict[str, object] = {
        "start_time": 1795972927.864592,
        "method": "GET",
        "path": "/p?q=1",
        "authority": "Example.com:99",
        "user_agent": "curl/8.0",
        "request_id": "2299da9a-f860-4570-9b8c-11810be0d42a",
        "downstream_remote_address": "127.0.0.1:50000",
        "downstream_local_address": "127.0.0.1:10000",
    }
    base.update(kw)
    return LogRecord(**base)


def test_default_format_string() -> None:
    assert DEFAULT_FORMAT == (
        '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
        "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
        '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
        '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
    )
    fmt = LogFormat("")
    assert fmt.request_headers == frozenset({"x-envoy-original-path"})
    assert fmt.response_headers == frozenset()


def test_default_format_matches_envoy_for_a_proxied_request() -> None:
    rec = record(
        response_code=200,
        bytes_sent=2,
        duration_ms=1,
        upstream_service_time_ms=0,
        upstream_host="127.0.0.1:35975",
        upstream_cluster="u1",
        req_headers={"x-envoy-original-path": "/orig"},
    )
    assert LogFormat("").format(rec) == ENVOY_200


def test_default_format_matches_envoy_for_no_route() -> None:
    rec = record(
        start_time=1795972937.90888,
        path="/zzz",
        response_code=404,
        response_flags="NR",
        request_id="7676a00a-5fc3-4767-bfee-988dbf94f298",
    )
    assert LogFormat("").format(rec) == ENVOY_404


def test_operators() -> None:
    fmt = LogFormat(
        "%PROTOCOL%|%RESPONSE_CODE%|%RESPONSE_FLAGS%|%BYTES_RECEIVED%|%BYTES_SENT%|"
        "%DURATION%|%UPSTREAM_HOST%|%UPSTREAM_CLUSTER%|%DOWNSTREAM_REMOTE_ADDRESS%|"
        "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%|%DOWNSTREAM_LOCAL_ADDRESS%|%ROUTE_NAME%|"
        "%REQ(:METHOD)%|%REQ(:PATH)%|%REQ(HOST)%|%REQ(X-FORWARDED-FOR)%|%RESP(:STATUS)%|"
        "%PROTOCOL()%"
    )
    rec = record(
        response_code=503,
        response_flags="UF",
        bytes_received=10,
        bytes_sent=91,
        duration_ms=7,
        upstream_host="10.0.0.1:80",
        upstream_cluster="svc",
        route_name="r1",
        x_forwarded_for="1.2.3.4",
    )
    assert fmt.format(rec) == (
        "HTTP/1.1|503|UF|10|91|7|10.0.0.1:80|svc|127.0.0.1:50000|127.0.0.1|127.0.0.1:10000|"
        "r1|GET|/p?q=1|Example.com:99|1.2.3.4|503|HTTP/1.1"
    )


def test_missing_values_render_as_dash() -> None:
    fmt = LogFormat(
        "%UPSTREAM_HOST%|%UPSTREAM_CLUSTER%|%ROUTE_NAME%|%RESP(:STATUS)%|%REQ(X-NONE)%|"
        "%RESP(X-NONE)%|%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%|%RESPONSE_CODE%|%RESPONSE_FLAGS%|"
        "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"
    )
    assert fmt.format(LogRecord()) == "-|-|-|-|-|-|-|0|-|-"


def test_request_headers_alternatives_truncation_and_empty_values() -> None:
    fmt = LogFormat(
        "%REQ(X-A)%|%REQ(X-NONE?X-B):3%|%REQ(X-EMPTY)%|%REQ(:AUTHORITY):3%|%RESP(X-R)%|"
        "%RESP(x-none?X-R):2%|%REQ(X-A?)%|%REQ(?X-B)%"
    )
    assert fmt.request_headers == frozenset({"x-a", "x-b", "x-none", "x-empty"})
    assert fmt.response_headers == frozenset({"x-r", "x-none"})
    rec = record(
        req_headers={"x-a": "alpha", "x-b": "bravo", "x-empty": ""},
        resp_headers={"x-r": "romeo"},
    )
    # Envoy renders a header sent empty as "", one not sent as "-".
    assert fmt.format(rec) == "alpha|bra||Exa|romeo|ro|alpha|bravo"


def test_upstream_service_time_and_status_come_from_the_record() -> None:
    fmt = LogFormat("%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% %RESP(:STATUS)%")
    assert fmt.response_headers == frozenset()
    assert fmt.format(record(upstream_service_time_ms=12, response_code=200)) == "12 200"


def test_ipv6_remote_address_without_port() -> None:
    fmt = LogFormat("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%")
    assert fmt.format(record(downstream_remote_address="[::1]:5555")) == "::1"


def test_start_time_formats_as_envoy_does() -> None:
    # Envoy printed these for a request that started at 1795972927.864592.
    fmt = LogFormat("%START_TIME(%s.%3f|%f|%6f|%Y|%1f|%E3S|%E*S)%|%START_TIME()%|%START_TIME%")
    assert fmt.format(record()) == (
        "1795972927.864|864592000|864592|2026|8|07.864|07.864592|"
        "2026-11-29T17:22:07.864Z|2026-11-29T17:22:07.864Z"
    )


def test_start_time_strftime_and_second_cache() -> None:
    fmt = LogFormat("%START_TIME(%Y/%m/%d %H:%M:%S %%|%E*S)%")
    assert fmt.format(record(start_time=0.5)) == "1970/01/01 00:00:00 %|00.5"
    assert fmt.format(record(start_time=1.0)) == "1970/01/01 00:00:01 %|01"
    default = LogFormat("%START_TIME%")
    assert default.format(record(start_time=59.9999)) == "1970-01-01T00:00:59.999Z"
    assert default.format(record(start_time=60.0)) == "1970-01-01T00:01:00.000Z"


def test_literal_percent_and_plain_text() -> None:
    assert LogFormat("100%% done\n").format(LogRecord()) == "100% done\n"
    assert LogFormat("%%%RESPONSE_CODE%%%").format(record(response_code=204)) == "%204%"


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ("%REQUEST_DURATION%", "REQUEST_DURATION"),
        ("%FOO%", "FOO"),
        ("x %CLUSTER_METADATA(a:b)% y", "CLUSTER_METADATA"),
        ("%DYNAMIC_METADATA%", "DYNAMIC_METADATA requires parameters"),
        ("%PROTOCOL:4%", "PROTOCOL"),
        ("%START_TIME:3%", "START_TIME"),
        ("%DURATION(X)%", "DURATION"),
        ("%REQ()%", "REQ"),
        ("%REQ%", "REQ"),
        ("%REQ(A?B?C)%", "More than 1"),
        ("%req(x)%", "position 0"),
        ("100%", "position 3"),
        ("%REQ(X", "position 0"),
    ],
)
def test_bad_formats_are_rejected_by_name(fmt: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        LogFormat(fmt)


def test_log_record_defaults() -> None:
    rec = LogRecord()
    assert rec.protocol == "HTTP/1.1"
    assert rec.response_code == 0
    assert rec.response_flags == "-"
    assert rec.upstream_service_time_ms is None
    assert rec.req_headers == {} and rec.resp_headers == {}
    assert rec.start_time > 1.6e9
    with pytest.raises(AttributeError):
        rec.not_a_field = 1  # type: ignore[attr-defined]
