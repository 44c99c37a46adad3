"""The worker's record of a stream (proxyd.worker.accesslog_plan.stream_record) sets
every field a format may read, for the outcomes it distinguishes."""

from __future__ import annotations

import time
from types import SimpleNamespace as NS

import pytest

from proxyd.protocol.access_log import DEFAULT_FORMAT, LogFormat, LogRecord
from proxyd.worker.accesslog_plan import stream_record
from proxyd.worker.stream import ResponseFlag, Stream

ACCESS = NS(
    server_name="edge",
    response_headers=frozenset({"content-type"}),
    wants_hostname=True,
    server_mode="OVERWRITE",
)
PLAN = NS(name="main", access=ACCESS, scheme="http", tracer=None)
CONN = NS(
    remote="10.0.0.2:5555",
    remote_ip="10.0.0.2",
    local_address=lambda: "10.0.0.1:80",
    tls=None,
    protocol="HTTP/1.1",
)
ROUTE = NS(
    cluster=NS(cluster=NS(endpoints=(NS(address="10.0.0.9", port=80, hostname="svc.local"),))),
    cluster_name="svc",
)


def make(head: bool = True, **kw: object) -> Stream:
    h = NS(method="GET", path="/p?q=1", host="a.example", headers={}, request_id=b"rid-1",
           has_body=False) if head else None  # fmt: skip
    s = Stream(h, None)  # type: ignore[arg-type]
    s.t_wall, s.t0 = time.time(), time.monotonic()
    for k, v in kw.items():
        setattr(s, k, v)
    return s


@pytest.mark.parametrize(
    "stream",
    [
        make(status=200, upstream_host="10.0.0.9:80", service_ms=3, route_plan=ROUTE,
             route_name="r", request_id="rid-2", resp_headers={"content-type": "a/b"}),
        make(status=404, flags=ResponseFlag.NO_ROUTE),
        make(status=503, flags=ResponseFlag.UPSTREAM_CONNECTION_FAILURE, bytes_sent=9,
             upstream_host="10.0.0.9:80", route_plan=ROUTE),
        make(status=503, flags=ResponseFlag.UPSTREAM_OVERFLOW, route_plan=ROUTE),
        make(head=False, status=400, flags=ResponseFlag.DOWNSTREAM_PROTOCOL_ERROR),
        make(status=0, flags=ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION),
    ],
    ids=["200", "NR", "UF", "UO", "codec", "DC"],
)  # fmt: skip
def test_every_field_is_set(stream: Stream) -> None:
    rec = stream_record(stream, PLAN, CONN, "DownstreamEnd")  # type: ignore[arg-type]
    for name in LogRecord.__slots__:
        getattr(rec, name)  # AttributeError if the builder missed one
    LogFormat(DEFAULT_FORMAT).format(rec)


def test_outcomes_as_envoy_logs_them() -> None:
    ok = stream_record(make(status=200, upstream_host="10.0.0.9:80", service_ms=3,
                            route_plan=ROUTE), PLAN, CONN, "DownstreamEnd")  # type: ignore[arg-type]  # fmt: skip
    assert (ok.details, ok.attempt_count, ok.upstream_remote_address) == (
        "via_upstream",
        1,
        "10.0.0.9:80",
    )
    assert (ok.upstream_hostname, ok.server, ok.request_id) == ("svc.local", "edge", "rid-1")
    uf = stream_record(make(status=503, flags=ResponseFlag.UPSTREAM_CONNECTION_FAILURE,
                            bytes_sent=9, upstream_host="10.0.0.9:80", route_plan=ROUTE),
                       PLAN, CONN, "DownstreamEnd")  # type: ignore[arg-type]  # fmt: skip
    assert uf.upstream_remote_address is None and uf.upstream_protocol is None
    assert uf.details == "upstream_reset_before_response_started{remote_connection_failure}"
    assert uf.resp_headers == {"content-type": "text/plain"}  # a local reply with a body
    nr = stream_record(make(status=404, flags=ResponseFlag.NO_ROUTE), PLAN, CONN, "DownstreamEnd")  # type: ignore[arg-type]  # fmt: skip
    assert (nr.details, nr.attempt_count, nr.upstream_cluster) == ("route_not_found", 0, None)
    codec = stream_record(make(head=False, status=400), PLAN, CONN, "DownstreamEnd")  # type: ignore[arg-type]  # fmt: skip
    assert (codec.protocol, codec.details, codec.request_id) == (None, None, None)
