"""Errors as Envoy gives them, and inputs that must not hurt the worker."""

from __future__ import annotations

import socket
import struct
import time

import httpx
import pytest

from proxyd import epoch as ep
from tests.integration import worker_harness
from tests.integration.worker_harness import (
    RawUpstream,
    make_epoch,
    raw_exchange,
    read_head,
)
from tests.support import free_port

start_worker = worker_harness.start_worker  # the fixture

RESET = "upstream connect error or disconnect/reset before headers. reset reason: "


def split(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def routes(*pairs: tuple[str, str, float]) -> list[ep.Route]:
    return [ep.Route(p, ep.RouteMatch("prefix", p), c, timeout_s=t) for p, c, t in pairs]


@pytest.fixture
def worker(start_worker, upstream):
    a = upstream("a")
    refused = free_port()
    epoch = make_epoch(
        1,
        0,
        {"a": [a.port], "refused": [refused], "sick": [a.port]},
        routes(
            ("/delay", "a", 0.3),
            ("/refused", "refused", 15),
            ("/sick", "sick", 15),
            ("/a", "a", 15),
        ),
        hcm={"max_request_headers_kb": 2},
        unhealthy=frozenset(),
    )
    # "sick" has only an unhealthy endpoint, and panic mode off (with Envoy's default
    # 50% threshold the cluster would panic and route to that host anyway).
    sick = ep.Cluster(
        "sick",
        "STATIC",
        1.0,
        "ROUND_ROBIN",
        (ep.Endpoint("127.0.0.1", a.port, healthy=False),),
        healthy_panic_threshold=0,
    )
    epoch = ep.Epoch(
        1, epoch.listeners, tuple(c if c.name != "sick" else sick for c in epoch.clusters)
    )
    w = start_worker(epoch)
    port = w.bound_port()
    w.port = port
    w.upstream = a
    return w


def test_no_route_is_404_and_keeps_the_connection(worker) -> None:
    with httpx.Client() as client:
        r = client.get(f"http://127.0.0.1:{worker.port}/nowhere")
        assert r.status_code == 404 and r.content == b""
        assert r.headers["content-length"] == "0" and r.headers["server"] == "envoy"
        assert client.get(f"http://127.0.0.1:{worker.port}/a").status_code == 200
    assert worker.wait_stat("http.ingress_http.downstream_rq_4xx", 1) == 1


def test_no_healthy_upstream_is_503(worker) -> None:
    r = httpx.get(f"http://127.0.0.1:{worker.port}/sick")
    assert r.status_code == 503 and r.text == "no healthy upstream"
    assert r.headers["content-type"] == "text/plain" and r.headers["content-length"] == "19"


def test_refused_connection_is_503(worker) -> None:
    r = httpx.get(f"http://127.0.0.1:{worker.port}/refused")
    assert r.status_code == 503
    assert r.text == RESET + "remote connection failure"
    assert worker.wait_stat("cluster.refused.upstream_cx_connect_fail", 1) == 1


def test_route_timeout_is_504(worker) -> None:
    t0 = time.monotonic()
    r = httpx.get(f"http://127.0.0.1:{worker.port}/delay/6000/")
    assert r.status_code == 504 and r.text == "upstream request timeout"
    assert time.monotonic() - t0 < 4  # the timeout answered, not the 6 s upstream
    assert worker.wait_stat("cluster.a.upstream_rq_timeout", 1) == 1
    # Envoy keeps the downstream connection after a 504: so does the worker.
    with httpx.Client() as client:
        assert client.get(f"http://127.0.0.1:{worker.port}/delay/2000/").status_code == 504
        assert client.get(f"http://127.0.0.1:{worker.port}/delay/10/").status_code == 200
    assert worker.wait_stat("http.ingress_http.downstream_cx_total", 2) == 2


def test_malformed_request_is_400_and_close(worker) -> None:
    status, headers, body = split(raw_exchange(worker.port, b"GET / HTTP/1.1\r\nHost a\r\n\r\n"))
    assert (status, body) == (400, b"Bad Request")
    assert headers["connection"] == "close" and headers["content-type"] == "text/plain"
    status, headers, body = split(raw_exchange(worker.port, b"GET /a HTTP/1.0\r\nHost: a\r\n\r\n"))
    assert (status, body) == (426, b"Upgrade Required")
    status, headers, body = split(raw_exchange(worker.port, b"GET /a HTTP/1.1\r\n\r\n"))
    assert (status, body, headers["content-length"]) == (400, b"", "0")


def test_oversized_headers_are_431_and_close(worker) -> None:
    data = b"GET /a HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n"
    status, headers, body = split(raw_exchange(worker.port, data))
    assert (status, body) == (431, b"Request Header Fields Too Large")
    assert headers["connection"] == "close"
    # A head that never ends is cut off at the limit too.
    with socket.create_connection(("127.0.0.1", worker.port), timeout=5) as s:
        s.sendall(b"GET /a HTTP/1.1\r\nHost: a\r\nX: " + b"b" * 5000)
        assert s.recv(100).startswith(b"HTTP/1.1 431")


def test_broken_clients_do_not_hurt_the_worker(worker) -> None:
    port = worker.port
    up = worker.upstream
    linger = struct.pack("ii", 1, 0)

    def unseen(s: socket.socket) -> None:
        # The worker waits for the rest of the head; nothing tells that it read the bytes:
        # a pacing gap, so it most likely has before the reset (in either order it is a
        # broken client that the worker must survive).
        time.sleep(0.05)

    heads = 0  # request heads the upstream got in this test

    def forwarded(s: socket.socket) -> None:
        nonlocal heads
        heads += 1
        up.wait_requests(heads)  # the head is at the upstream: reset mid-request

    for wait, data in (
        # the head cut off, then reset
        (unseen, b"GET /a HTTP/1.1\r\nHost: a\r\nX-Partial"),
        # the body cut off
        (forwarded, b"POST /a/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\nabc"),
        (
            forwarded,
            b"POST /a/echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        ),
        (unseen, b"\x00\xff" * 1000),
        # gone before the answer
        (forwarded, b"GET /delay/200/ HTTP/1.1\r\nHost: a\r\n\r\n"),
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(data)
            wait(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    # The worker is done with all five (stats come once a second).
    assert worker.wait_stat("http.ingress_http.downstream_cx_destroy", 5) == 5
    # Half a chunked body, then garbage where the next chunk size belongs.
    out = raw_exchange(
        port,
        b"POST /a/echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n",
    )
    assert out.startswith(b"HTTP/1.1 400")
    r = httpx.get(f"http://127.0.0.1:{port}/a")
    assert r.status_code == 200
    assert worker.proc.poll() is None
    assert "Traceback" not in worker.log()


def test_broken_upstreams_do_not_hurt_the_worker(start_worker) -> None:
    def handler(conn: socket.socket) -> None:
        head = read_head(conn)
        if b"/garbage" in head:
            conn.sendall(b"HTTP/1.1 abc\r\n\r\n")
        elif b"/midbody" in head:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        elif b"/close" in head:
            pass  # closes without a word
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    with RawUpstream(handler) as up:
        w = start_worker(make_epoch(1, 0, {"u": [up.port]}))
        port = w.bound_port()
        r = httpx.get(f"http://127.0.0.1:{port}/garbage")
        assert r.status_code == 502 and r.text == RESET + "protocol error"
        r = httpx.get(f"http://127.0.0.1:{port}/close")
        assert r.status_code == 503 and r.text == RESET + "connection termination"
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(f"http://127.0.0.1:{port}/midbody")
        assert httpx.get(f"http://127.0.0.1:{port}/fine").text == "ok"
        assert w.proc.poll() is None
        assert "Traceback" not in w.log()
