"""The worker's data plane with real upstreams and real clients: forwarding, bodies both
ways, keep-alive on both sides, framing corner cases."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import time

import httpx

from tests.integration import worker_harness
from tests.integration.worker_harness import (
    RawUpstream,
    make_epoch,
    raw_exchange,
    read_head,
)

start_worker = worker_harness.start_worker  # the fixture


def echo(client: httpx.Client, port: int, **kw) -> dict:
    r = client.post(f"http://127.0.0.1:{port}/echo", **kw)
    assert r.status_code == 200, r.text
    return r.json()


def test_get_is_forwarded_with_envoy_headers(start_worker, upstream) -> None:
    a = upstream("a")
    port = start_worker(make_epoch(1, 0, {"a": [a.port]})).bound_port()
    r = httpx.get(f"http://127.0.0.1:{port}/echo?x=1", headers={"x-custom": "v"})
    assert r.status_code == 200
    assert r.headers["server"] == "envoy"
    assert r.headers["x-upstream-name"] == "a"
    assert int(r.headers["x-envoy-upstream-service-time"]) >= 0
    seen = dict(r.json()["headers"])
    assert r.json()["path"] == "/echo?x=1"
    assert seen["x-custom"] == "v"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-envoy-expected-rq-timeout-ms"] == "15000"
    assert len(seen["x-request-id"]) == 36
    assert "connection" not in seen and "keep-alive" not in seen


def test_use_remote_address_appends_to_x_forwarded_for(start_worker, upstream) -> None:
    a = upstream("a")
    port = start_worker(
        make_epoch(1, 0, {"a": [a.port]}, hcm={"use_remote_address": True})
    ).bound_port()
    r = httpx.get(f"http://127.0.0.1:{port}/echo", headers={"x-forwarded-for": "1.2.3.4"})
    seen = dict(r.json()["headers"])
    first, _, added = seen["x-forwarded-for"].partition(",")
    assert first == "1.2.3.4" and added  # a loopback client adds the host's address
    assert seen["x-envoy-external-address"] == "127.0.0.1"


def test_keep_alive_reuses_upstream_connections(start_worker, upstream) -> None:
    a = upstream("a")
    port = start_worker(make_epoch(1, 0, {"a": [a.port]})).bound_port()
    with httpx.Client() as client:
        for _ in range(20):
            assert client.get(f"http://127.0.0.1:{port}/").status_code == 200
    # New downstream connections, one after another, still share the pooled one.
    for _ in range(5):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/")
        assert c.getresponse().read()
        c.close()
    assert a.requests == 25
    assert a.connections == 1


def test_max_requests_per_connection(start_worker, upstream) -> None:
    a = upstream("a")
    port = start_worker(
        make_epoch(1, 0, {"a": [a.port]}, cluster={"max_requests_per_connection": 2})
    ).bound_port()
    with httpx.Client() as client:
        for _ in range(6):
            assert client.get(f"http://127.0.0.1:{port}/").status_code == 200
    assert a.connections == 3


def test_bodies_stream_both_ways(start_worker, upstream) -> None:
    a = upstream("a")
    port = start_worker(make_epoch(1, 0, {"a": [a.port]})).bound_port()
    body = bytes(range(256)) * 4000
    with httpx.Client() as client:
        info = echo(client, port, content=body)
        assert info["body_bytes"] == len(body)
        assert info["body_sha256"] == hashlib.sha256(body).hexdigest()

        def chunks():
            for i in range(50):
                yield bytes([i]) * (1000 + i)

        info = echo(client, port, content=chunks())
        expected = b"".join(chunks())
        assert info["body_bytes"] == len(expected)
        assert info["body_sha256"] == hashlib.sha256(expected).hexdigest()
        assert ["transfer-encoding", "chunked"] in info["headers"]

        r = client.get(f"http://127.0.0.1:{port}/chunked/300000")
        assert r.headers["transfer-encoding"] == "chunked"
        assert r.content == b"y" * 300000
        r = client.get(f"http://127.0.0.1:{port}/bytes/1000000")
        assert r.headers["content-length"] == "1000000" and len(r.content) == 1000000
        assert client.get(f"http://127.0.0.1:{port}/").status_code == 200
    assert a.connections == 1


def test_head_204_and_304_have_no_body(start_worker, upstream) -> None:
    a = upstream("a")
    port = start_worker(make_epoch(1, 0, {"a": [a.port]})).bound_port()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("HEAD", "/bytes/500")
    r = c.getresponse()
    assert r.status == 200 and r.getheader("content-length") == "500" and r.read() == b""
    c.request("GET", "/bytes/3")
    assert c.getresponse().read() == b"xxx"
    c.close()

    def handler(conn: socket.socket) -> None:
        for answer in (
            b"HTTP/1.1 204 No Content\r\nETag: x\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone",
        ):
            read_head(conn)
            conn.sendall(answer)

    with RawUpstream(handler) as up:
        port = start_worker(make_epoch(1, 0, {"u": [up.port]})).bound_port()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        for code in (204, 304, 200):
            c.request("GET", "/")
            r = c.getresponse()
            assert r.status == code
            assert r.read() == (b"done" if code == 200 else b"")
        c.close()
        assert up.connections == 1


def test_response_without_length_is_rechunked(start_worker) -> None:
    def handler(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello ")
        time.sleep(0.05)  # a pacing gap: the body likely comes in two reads (either passes)
        conn.sendall(b"world")

    with RawUpstream(handler) as up:
        port = start_worker(make_epoch(1, 0, {"u": [up.port]})).bound_port()
        with httpx.Client() as client:
            for _ in range(2):
                r = client.get(f"http://127.0.0.1:{port}/")
                assert r.content == b"hello world"
                assert r.headers["transfer-encoding"] == "chunked"


def test_idle_upstream_connection_closed_by_upstream_is_not_used(start_worker) -> None:
    def handler(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        # A pacing gap: then close, as an upstream with a short keep-alive does (the
        # connection has been idle in the pool for a while when the close comes).
        time.sleep(0.1)

    with RawUpstream(handler) as up:
        port = start_worker(make_epoch(1, 0, {"u": [up.port]})).bound_port()
        with httpx.Client() as client:
            for i in range(4):
                assert client.get(f"http://127.0.0.1:{port}/").text == "ok"
                up.wait_closed(i + 1)  # the upstream closed the pooled connection
        assert up.connections == 4


def test_reused_connection_that_fails_is_retried_once(start_worker) -> None:
    # The upstream takes a second request on the connection and closes it without an
    # answer (a keep-alive race): the worker retries on a new connection.
    def handler(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        read_head(conn)

    with RawUpstream(handler) as up:
        port = start_worker(make_epoch(1, 0, {"u": [up.port]})).bound_port()
        with httpx.Client() as client:
            assert client.get(f"http://127.0.0.1:{port}/").text == "ok"
            assert client.get(f"http://127.0.0.1:{port}/").text == "ok"
        assert up.connections == 2


def test_expect_100_continue(start_worker, upstream) -> None:
    a = upstream("a")
    port = start_worker(make_epoch(1, 0, {"a": [a.port]})).bound_port()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"hello")
        data = b""
        while b"}" not in data:
            data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    info = json.loads(body)
    assert info["body_bytes"] == 5
    assert "expect" not in dict(info["headers"])


def test_pipelined_requests_are_answered_in_order(start_worker, upstream) -> None:
    a = upstream("a")
    port = start_worker(make_epoch(1, 0, {"a": [a.port]})).bound_port()
    out = raw_exchange(
        port,
        b"GET /bytes/3 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
        b"GET /status/201 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    assert out.count(b"HTTP/1.1 ") == 3
    first, second, third = out.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200") and first.endswith(b"xxx")
    assert second.startswith(b"200") and b'"body_bytes": 2' in second
    assert third.startswith(b"201") and b"connection: close" in third
