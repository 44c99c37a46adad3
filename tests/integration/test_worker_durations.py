"""max_connection_duration, drain_timeout and max_stream_duration in a real worker, on
real sockets (the logic is tested on trio's virtual clock in
``tests/unit/test_durations.py``, and against real Envoy in
``tests/compat/test_durations_compat.py``). The windows are wide: nothing here measures
speed."""

from __future__ import annotations

import socket
import time

from proxyd import epoch as ep
from tests.integration import worker_harness
from tests.integration.worker_harness import make_epoch, read_response

start_worker = worker_harness.start_worker  # the fixture

PREFIX = "http.ingress_http."


def _closed_after(s: socket.socket) -> tuple[bytes, float]:
    """Everything until the peer closes, and how long that took."""
    t0 = time.monotonic()
    out = bytearray()
    while chunk := s.recv(65536):
        out += chunk
    return bytes(out), time.monotonic() - t0


def test_connection_drains_after_max_connection_duration(start_worker, upstream) -> None:
    a = upstream("a")
    hcm = {"max_connection_duration_s": 0.4, "drain_timeout_s": 0.6}
    w = start_worker(make_epoch(1, 0, {"a": [a.port]}, hcm=hcm))
    port = w.bound_port()
    # Never a byte: closed when the duration passes.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as quiet:
        data, took = _closed_after(quiet)
    assert data == b"" and 0.2 < took < 0.9
    # A request, then idle: closed once the drain is over too.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        first = read_response(s)
        assert b"connection: close" not in first
        data, took = _closed_after(s)
        assert data == b"" and 0.6 < took < 2.0
    # A request after the duration: its response says connection: close, then closes.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        read_response(s)
        time.sleep(0.5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        data, _ = _closed_after(s)
        assert data.startswith(b"HTTP/1.1 200") and b"connection: close\r\n" in data
    assert w.wait_stat(PREFIX + "downstream_cx_max_duration_reached", 3) == 3


def test_max_stream_duration_answers_504_and_keeps_the_connection(start_worker, upstream):
    a = upstream("a")
    w = start_worker(make_epoch(1, 0, {"a": [a.port]}, hcm={"max_stream_duration_s": 0.3}))
    with socket.create_connection(("127.0.0.1", w.bound_port()), timeout=5) as s:
        s.sendall(b"GET /delay/2000/ HTTP/1.1\r\nHost: a\r\n\r\n")
        reply = read_response(s)
        assert reply.startswith(b"HTTP/1.1 504") and reply.endswith(b"downstream duration timeout")
        assert b"connection: close" not in reply
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")  # the same connection goes on
        assert read_response(s).startswith(b"HTTP/1.1 200")
    assert w.wait_stat(PREFIX + "downstream_rq_max_duration_reached", 1) == 1


def test_route_max_stream_duration_replaces_the_route_timeout(start_worker, upstream) -> None:
    a = upstream("a")
    routes = [
        ep.Route(
            "limited",
            ep.RouteMatch("prefix", "/"),
            "a",
            timeout_s=0.1,
            stream_duration_set=True,
            max_stream_duration_s=1.5,
        )
    ]
    w = start_worker(make_epoch(1, 0, {"a": [a.port]}, routes))
    with socket.create_connection(("127.0.0.1", w.bound_port()), timeout=5) as s:
        s.sendall(b"GET /delay/400/ HTTP/1.1\r\nHost: a\r\n\r\n")  # past the 0.1 s timeout
        assert read_response(s).startswith(b"HTTP/1.1 200")
        s.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab")
        data, _ = _closed_after(s)
    assert data.startswith(b"HTTP/1.1 408") and b"connection: close\r\n" in data
    assert data.endswith(b"downstream duration timeout")
