"""HTTP/2 to an upstream: real Envoy and real proxyd on the same YAML, in front of the
same h2c test upstream (tests/h2_upstream_server.py).

Listener ``ingress`` routes everything to cluster ``up`` (explicit HTTP/2). Cases, each
from an HTTP/1.1 client (http.client) and, where it matters, an HTTP/2 client (h2 on
a socket): the header block the upstream received (``:authority``, ``:scheme``, the
hop-by-hop lines and ``te``), a chunked upload, a response without a length (chunked
to HTTP/1.1, its trailers dropped; to HTTP/2 with its trailers), a stream the upstream
resets before the head (RST_STREAM INTERNAL_ERROR and REFUSED_STREAM) or after it, a
GOAWAY followed by another request, request trailers from an HTTP/2 client (with
and without a body), and a route with ``retry_on: refused-stream``
(a stream refused once, one refused every time, one reset otherwise). What each client saw, what the upstream got, and
the cluster's stats must be the same.
"""

from __future__ import annotations

import http.client
import socket
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
import yaml

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import run_pair
from tests.h2_upstream_server import H2Upstream
from tests.support import bootstrap, http_listener, static_cluster, wait_for

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

UPSTREAM_HTTP = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# What differs per run or per proxy by design.
VOLATILE = {
    "x-request-id",
    "x-envoy-expected-rq-timeout-ms",
    "date",
    "x-envoy-upstream-service-time",
}


LOG_FORMAT = "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %UPSTREAM_REQUEST_ATTEMPT_COUNT%\n"  # fmt: skip


def config(port: int, log: str) -> str:
    c = static_cluster("up", [port])
    c["typed_extension_protocol_options"] = {
        UPSTREAM_HTTP: {
            "@type": f"type.googleapis.com/{UPSTREAM_HTTP}",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    retry = {
        "retry_on": "refused-stream",
        "num_retries": 2,
        "retry_back_off": {"base_interval": "0.01s", "max_interval": "0.02s"},
    }
    routes = {
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [
                    {
                        "match": {"prefix": "/retry/"},
                        "route": {"cluster": "up", "retry_policy": retry},
                    },
                    {"match": {"prefix": "/"}, "route": {"cluster": "up"}},
                ],
            }
        ]
    }
    access_log = [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": log,
                "log_format": {"text_format_source": {"inline_string": LOG_FORMAT}},
            },
        }
    ]
    listener = http_listener("ingress", 0, routes, access_log=access_log)
    return yaml.safe_dump(bootstrap([listener], [c]))


def h1(port: int, method: str, path: str, headers: dict[str, str], body: Any = None) -> dict[str, Any]:  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        try:
            data = r.read()
        except http.client.IncompleteRead:
            return {"status": r.status, "broken": True}
        keep = {k.lower(): v for k, v in r.getheaders() if k.lower() not in VOLATILE}
        return {"status": r.status, "headers": keep, "body": data.decode()}
    except (ConnectionError, http.client.HTTPException) as exc:
        return {"error": type(exc).__name__}
    finally:
        conn.close()


def h2_get(port: int, path: str) -> dict[str, Any]:
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(5)
    c = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding="latin-1"))
    c.initiate_connection()
    c.send_headers(1, [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "app.test")], end_stream=True)  # fmt: skip
    s.sendall(c.data_to_send())
    out: dict[str, Any] = {"body": ""}
    with s:
        while True:
            data = s.recv(65536)
            if not data:
                out["closed"] = True
                return out
            for ev in c.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    out["headers"] = {k: v for k, v in ev.headers if k not in VOLATILE}
                elif isinstance(ev, h2.events.TrailersReceived):
                    out["trailers"] = dict(ev.headers)
                elif isinstance(ev, h2.events.DataReceived):
                    out["body"] += ev.data.decode()
                elif isinstance(ev, h2.events.StreamEnded):
                    return out
                elif isinstance(ev, h2.events.StreamReset):
                    out["reset"] = int(ev.error_code)
                    return out
            s.sendall(c.data_to_send())


def h2_post_with_trailers(port: int, path: str, body: bytes) -> int:
    """An HTTP/2 POST with a body and request trailers; its response status."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(5)
    c = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding="latin-1"))
    c.initiate_connection()
    c.send_headers(1, [(":method", "POST"), (":path", path), (":scheme", "http"), (":authority", "app.test"), ("te", "trailers")])  # fmt: skip
    if body:
        c.send_data(1, body)
    c.send_headers(1, [("x-req-trailer", "t1"), ("x-other", "t2")], end_stream=True)
    s.sendall(c.data_to_send())
    status = 0
    with s:
        while True:
            data = s.recv(65536)
            if not data:
                return status
            for ev in c.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = int(dict(ev.headers)[":status"])
                elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                    return status  # (the whole response: no DC in the logs)
            s.sendall(c.data_to_send())


def seen(up: H2Upstream) -> dict[str, str]:
    return {k: v for k, v in up.requests[-1].headers.items() if k not in VOLATILE}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Any:
    log = tmp_path_factory.mktemp("h2up-log") / "access.log"
    log.touch()
    with H2Upstream() as up:

        def play(port_of: Any) -> dict[str, Any]:
            port = port_of("ingress")
            logged = len(log.read_text().splitlines())
            out: dict[str, Any] = {}
            out["plain"] = h1(port, "GET", "/plain?q=1", {"Host": "app.test", "TE": "trailers", "Connection": "te, x-hop", "X-Hop": "1", "X-Keep": "k", "Keep-Alive": "5"})  # fmt: skip
            out["plain_seen"] = seen(up)
            out["upload"] = h1(port, "POST", "/upload", {"Host": "app.test"}, iter([b"a" * 70000, b"b" * 5]))  # fmt: skip
            out["upload_seen"] = seen(up)
            out["trailers_h1"] = h1(port, "GET", "/trailers", {"Host": "app.test"})
            out["trailers_h2"] = h2_get(port, "/trailers")
            out["trailers_h2_seen"] = seen(up)
            out["reset_h1"] = h1(port, "GET", "/reset", {"Host": "app.test"})
            out["refuse_h1"] = h1(port, "GET", "/refuse", {"Host": "app.test"})
            out["reset_h2"] = h2_get(port, "/reset")
            out["reset_after_h1"] = h1(port, "GET", "/reset-after", {"Host": "app.test"})
            out["reset_after_h2"] = h2_get(port, "/reset-after")
            out["goaway"] = h1(port, "GET", "/goaway", {"Host": "app.test"})
            out["after_goaway"] = h1(port, "GET", "/after", {"Host": "app.test"})
            out["new_connection"] = up.requests[-1].conn != up.requests[-2].conn
            # Request trailers from an HTTP/2 client reach the HTTP/2 upstream.
            out["req_trailers"] = h2_post_with_trailers(port, "/with-trailers", b"body")
            out["req_trailers_seen"] = (up.requests[-1].trailers, bytes(up.requests[-1].body))
            out["req_trailers_no_body"] = h2_post_with_trailers(port, "/trailers-only", b"")
            out["req_trailers_no_body_seen"] = up.requests[-1].trailers
            # retry_on refused-stream: retried, until the retries run out.
            out["retry_flaky"] = h1(port, "GET", "/retry/flaky", {"Host": "app.test"})
            out["retry_flaky_h2"] = h2_get(port, "/retry/x/flaky")
            out["retry_refused"] = h1(port, "GET", "/retry/refuse", {"Host": "app.test"})
            out["retry_not_on_reset"] = h1(port, "GET", "/retry/reset", {"Host": "app.test"})
            # Every request's access log line (path, status, flags, details, attempts),
            # once both proxies flushed them.
            wait_for(lambda: len(log.read_text().splitlines()) - logged >= 17)
            out["access_log"] = sorted(log.read_text().splitlines()[logged:])
            return out

        def pick(stats: dict[str, int]) -> dict[str, int]:
            names = ("upstream_rq_200", "upstream_rq_503", "upstream_rq_total", "upstream_cx_http2_total", "upstream_cx_close_notify", "http2.rx_reset", "upstream_rq_retry", "upstream_rq_retry_success", "upstream_rq_retry_limit_exceeded")  # fmt: skip
            return {n: stats.get(f"cluster.up.{n}", -1) for n in names}

        yield run_pair(config(up.port, str(log)), tmp_path_factory.mktemp("h2up"), play, pick)


CASES = (
    "plain", "plain_seen", "upload", "upload_seen", "trailers_h1", "trailers_h2",
    "trailers_h2_seen", "reset_h1", "refuse_h1", "reset_h2", "reset_after_h1",
    "reset_after_h2", "goaway", "after_goaway", "new_connection",
    "retry_flaky", "retry_flaky_h2", "retry_refused", "retry_not_on_reset", "access_log",
    "req_trailers", "req_trailers_seen", "req_trailers_no_body", "req_trailers_no_body_seen",
)  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_h2_upstream_case(pair: Any, case: str) -> None:
    assert pair.proxyd.replies[case] == pair.envoy.replies[case]


def test_h2_upstream_stats(pair: Any) -> None:
    assert pair.proxyd.stats == pair.envoy.stats


def test_request_trailers_arrive(pair: Any) -> None:
    """(Envoy forwards them: the comparison above is not between two absences.)"""
    trailers = {"x-req-trailer": "t1", "x-other": "t2"}
    assert pair.proxyd.replies["req_trailers_seen"] == (trailers, b"body")
    assert pair.proxyd.replies["req_trailers_no_body_seen"] == trailers
