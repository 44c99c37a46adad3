"""The connection manager's timeouts, as Envoy answers them."""

from __future__ import annotations

import socket
import threading
import time

import httpx

from proxyd import epoch as ep
from tests.integration import worker_harness
from tests.integration.worker_harness import make_epoch, read_response

start_worker = worker_harness.start_worker  # the fixture


def _read_all(s: socket.socket) -> bytes:
    out = bytearray()
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return bytes(out)
        out += chunk


def test_idle_keep_alive_connection_is_closed(start_worker, upstream) -> None:
    a = upstream("a")
    port = start_worker(make_epoch(1, 0, {"a": [a.port]}, hcm={"idle_timeout_s": 0.3})).bound_port()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_response(s).startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()  # the connection is idle from about now
        assert _read_all(s) == b""  # then closed, without a word
        assert 0.1 < time.monotonic() - t0 < 2


def test_request_headers_timeout_is_408(start_worker, upstream) -> None:
    a = upstream("a")
    port = start_worker(
        make_epoch(1, 0, {"a": [a.port]}, hcm={"request_headers_timeout_s": 0.3})
    ).bound_port()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n")
        data = _read_all(s)
    assert data.startswith(b"HTTP/1.1 408")
    assert data.endswith(b"request header timeout")


def test_request_timeout_during_a_slow_body_is_408(start_worker, upstream) -> None:
    a = upstream("a")
    port = start_worker(
        make_epoch(1, 0, {"a": [a.port]}, hcm={"request_timeout_s": 0.4})
    ).bound_port()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        data = _read_all(s)
    assert data.startswith(b"HTTP/1.1 408") and b"connection: close" in data
    assert data.endswith(b"request timeout")


def test_stream_idle_timeout_without_route_timeout(start_worker, upstream) -> None:
    a = upstream("a")
    routes = [ep.Route("r", ep.RouteMatch("prefix", "/"), "a", timeout_s=0)]
    port = start_worker(
        make_epoch(1, 0, {"a": [a.port]}, routes, hcm={"stream_idle_timeout_s": 0.3})
    ).bound_port()
    t0 = time.monotonic()
    r = httpx.get(f"http://127.0.0.1:{port}/delay/6000/")
    # Envoy answers 504 when the request was complete (408 while it is not).
    assert r.status_code == 504 and r.text == "stream timeout"
    assert time.monotonic() - t0 < 4  # the idle timeout answered, not the 6 s upstream
    seen = httpx.get(f"http://127.0.0.1:{port}/echo").json()
    assert "x-envoy-expected-rq-timeout-ms" not in dict(seen["headers"])


def test_route_timeout_after_the_response_started_resets(start_worker) -> None:
    released = threading.Event()

    def handler(conn: socket.socket) -> None:
        worker_harness.read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        released.wait(30)  # the rest of the body never comes while the test runs

    with worker_harness.RawUpstream(handler) as up:
        routes = [ep.Route("r", ep.RouteMatch("prefix", "/"), "u", timeout_s=0.3)]
        w = start_worker(make_epoch(1, 0, {"u": [up.port]}, routes))
        port = w.bound_port()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                data = _read_all(s)
        finally:
            released.set()
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"abc")
        assert w.wait_stat("cluster.u.upstream_rq_timeout", 1) == 1
