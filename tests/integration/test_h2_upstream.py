"""HTTP/2 to upstreams with real processes: a real proxyd, an h2c upstream on the
``h2`` library (tests/h2_upstream_server.py), HTTP/1.1 clients (httpx) and HTTP/2
clients (h2 over a socket).

* h1 → h2: the header block the upstream gets (``:authority`` from Host, ``:scheme``,
  connection-specific lines gone, ``te: trailers`` kept), bodies both ways (a large
  chunked upload), a response without content-length going out chunked.
* h2 → h2: response trailers reach the HTTP/2 client.
* Multiplexing: streams share a connection up to the peer's
  SETTINGS_MAX_CONCURRENT_STREAMS, then a new one is opened.
* A stream reset before the response head: 503 with Envoy's reset reason (remote reset,
  refused stream); after the head: the client's connection ends.
* GOAWAY from the upstream: the next request goes on a new connection.
* max_requests circuit breaker: 503 UO; route timeout: 504 and RST_STREAM upstream;
  idle_timeout: the connection is closed.
* max_connections 1: a request beyond the peer's stream limit waits (pending) for a
  slot on the one connection; max_pending_requests: one more is refused.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx
import pytest

from tests.h2_upstream_server import H2Upstream
from tests.support import (
    ProxydProcess,
    bootstrap,
    dump_yaml,
    free_port,
    http_listener,
    static_cluster,
    wait_for,
)

UPSTREAM_HTTP = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def h2_cluster(port: int, **common: Any) -> dict[str, Any]:
    c = static_cluster("up", [port])
    options: dict[str, Any] = {
        "@type": f"type.googleapis.com/{UPSTREAM_HTTP}",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
    if common:
        options["common_http_protocol_options"] = common
    c["typed_extension_protocol_options"] = {UPSTREAM_HTTP: options}
    return c


def config(port: int, cluster: dict[str, Any]) -> str:
    routes = {
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [
                    {
                        "match": {"prefix": "/timeout"},
                        "route": {"cluster": "up", "timeout": "0.3s"},
                    },
                    {"match": {"prefix": "/"}, "route": {"cluster": "up"}},
                ],
            }
        ]
    }
    return dump_yaml(bootstrap([http_listener("ingress", port, routes)], [cluster]))


def h2_get(port: int, path: str) -> tuple[dict[str, str], bytes, dict[str, str]]:
    """(response headers, body, trailers) of one HTTP/2 GET over a new connection."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(5)
    c = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding="latin-1"))
    c.initiate_connection()
    c.send_headers(1, [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "h2.test")], end_stream=True)  # fmt: skip
    s.sendall(c.data_to_send())
    headers: dict[str, str] = {}
    trailers: dict[str, str] = {}
    body = bytearray()
    try:
        while True:
            data = s.recv(65536)
            if not data:
                break
            done = False
            for ev in c.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    headers = dict(ev.headers)
                elif isinstance(ev, h2.events.TrailersReceived):
                    trailers = dict(ev.headers)
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    c.acknowledge_received_data(ev.flow_controlled_length, 1)
                elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                    done = True
            s.sendall(c.data_to_send())
            if done:
                break
    finally:
        s.close()
    return headers, bytes(body), trailers


@pytest.fixture
def upstream() -> Any:
    with H2Upstream(max_concurrent_streams=2) as u:
        yield u


def test_h2_upstream(tmp_path: Path, upstream: H2Upstream) -> None:
    port = free_port()
    cluster = h2_cluster(upstream.port, idle_timeout="1s")
    cluster["circuit_breakers"] = {"thresholds": [{"max_requests": 5}]}
    with ProxydProcess(tmp_path, config(port, cluster), concurrency=1) as p:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=5) as client:
            # h1 -> h2: the header block, the body back.
            r = client.get(
                "/plain?q=1",
                headers={
                    "host": "app.test",
                    "te": "trailers",
                    "connection": "te, x-hop",
                    "x-hop": "1",
                    "x-keep": "k",
                },  # fmt: skip
            )
            assert r.status_code == 200, r.text
            assert r.text == "/plain?q=1 0"
            assert r.headers["x-envoy-upstream-service-time"].isdigit()
            seen = upstream.requests[-1]
            assert seen.headers[":authority"] == "app.test"
            assert seen.headers[":scheme"] == "http"
            assert seen.headers[":method"] == "GET"
            assert seen.headers["te"] == "trailers"
            assert seen.headers["x-keep"] == "k"
            assert "x-hop" not in seen.headers and "connection" not in seen.headers
            assert "host" not in seen.headers
            assert seen.headers["x-forwarded-proto"] == "http"

            # A large chunked upload, streamed within the upstream's windows.
            big = b"x" * (3 * 1024 * 1024 + 7)
            r = client.post("/upload", content=iter([big[:1000], big[1000:]]))
            assert r.text == f"/upload {len(big)}"
            assert upstream.requests[-1].headers.get("content-length") is None

            # A response without content-length: chunked to HTTP/1.1, trailers dropped.
            r = client.get("/trailers")
            assert r.status_code == 200
            assert r.text == "with trailers"
            assert r.headers["transfer-encoding"] == "chunked"

            # Reset before the response head: Envoy's 503 and its reason.
            r = client.get("/reset")
            assert r.status_code == 503
            assert r.text.endswith("reset reason: remote reset")
            r = client.get("/refuse")
            assert r.status_code == 503
            assert r.text.endswith("reset reason: remote refused stream reset")

        # Reset after the head: the HTTP/1.1 client's connection ends mid-body.
        with pytest.raises(httpx.RemoteProtocolError), httpx.Client(base_url=base, timeout=5) as c2:
            c2.get("/reset-after")

        # h2 -> h2 with trailers.
        headers, body, trailers = h2_get(port, "/trailers")
        assert headers[":status"] == "200"
        assert body == b"with trailers"
        assert trailers == {"x-t": "done"}
        assert upstream.requests[-1].headers[":authority"] == "h2.test"

        # GOAWAY: the next request goes to a new connection.
        before = upstream.connections
        with httpx.Client(base_url=base, timeout=5) as client:
            assert client.get("/goaway").status_code == 200
            assert client.get("/after-goaway").status_code == 200
        assert upstream.requests[-1].conn > upstream.requests[-2].conn
        assert upstream.connections == before + 1

        # Multiplexing: 2 streams per connection (the peer's limit), then another one;
        # max_requests 5: the sixth stream at once is refused (503 UO).
        upstream.released.clear()
        before = upstream.connections
        results: list[int] = []

        def held(i: int) -> None:
            with httpx.Client(base_url=base, timeout=10) as c:
                results.append(c.get(f"/hold{i}").status_code)

        threads = [threading.Thread(target=held, args=(i,)) for i in range(5)]
        for t in threads:
            t.start()
        wait_for(
            lambda: sum(1 for r in upstream.requests if r.headers[":path"].startswith("/hold")) == 5
        )
        with httpx.Client(base_url=base, timeout=5) as client:
            r = client.get("/one-too-many")
            assert r.status_code == 503
            assert r.headers["x-envoy-overloaded"] == "true"
        upstream.release()
        for t in threads:
            t.join()
        assert results == [200] * 5
        assert upstream.connections == before + 2  # (the one after the GOAWAY is reused)
        holds = [r for r in upstream.requests if r.headers[":path"].startswith("/hold")]
        by_conn: dict[int, int] = {}
        for r in holds:
            by_conn[r.conn] = by_conn.get(r.conn, 0) + 1
        assert sorted(by_conn.values()) == [1, 2, 2]

        # Route timeout: 504, and the upstream stream is cancelled.
        upstream.released.clear()
        with httpx.Client(base_url=base, timeout=5) as client:
            r = client.get("/timeout/hold")
            assert r.status_code == 504
        seen = upstream.requests[-1]
        wait_for(lambda: seen.reset == 8)  # CANCEL
        upstream.release()

        # (the workers report their stats in batches)
        stats = wait_for(lambda: (st := p.stats()).get("cluster.up.upstream_rq_timeout") and st)
        assert stats["cluster.up.upstream_cx_http2_total"] == upstream.connections
        assert stats["cluster.up.upstream_rq_200"] >= 10
        assert stats["cluster.up.upstream_rq_503"] == 3
        assert stats["cluster.up.upstream_rq_504"] == 1
        assert stats["cluster.up.upstream_rq_timeout"] == 1
        assert stats["cluster.up.upstream_rq_active_overflow"] == 1

        # idle_timeout 1s: every connection without streams is closed by proxyd.
        wait_for(lambda: upstream.closed_connections == upstream.connections, timeout=5)
        wait_for(lambda: p.stats()["cluster.up.upstream_cx_active"] == 0, timeout=5)


def test_max_connections_and_pending(tmp_path: Path) -> None:
    """max_connections 1 with a peer limit of 2 streams: a third request waits (pending)
    for a stream slot on the one connection; max_pending_requests 1: a fourth at once
    is refused (503 UO). When the held streams end, the waiting one goes out on the same
    connection."""
    port = free_port()
    with H2Upstream(max_concurrent_streams=2) as upstream:
        cluster = h2_cluster(upstream.port)
        cluster["circuit_breakers"] = {
            "thresholds": [{"max_connections": 1, "max_pending_requests": 1}]
        }
        with ProxydProcess(tmp_path, config(port, cluster), concurrency=1) as p:
            base = f"http://127.0.0.1:{port}"
            upstream.released.clear()
            results: dict[str, int] = {}

            def get(path: str) -> None:
                with httpx.Client(base_url=base, timeout=10) as c:
                    results[path] = c.get(path).status_code

            # (one at a time: a request is pending while the connection opens)
            threads = []
            for i in range(2):
                threads.append(threading.Thread(target=get, args=(f"/hold{i}",)))
                threads[-1].start()
                wait_for(lambda i=i: len(upstream.requests) == i + 1)
            waiting = threading.Thread(target=get, args=("/waits",))
            waiting.start()
            wait_for(lambda: p.stats().get("cluster.up.upstream_rq_pending_active") == 1)
            with httpx.Client(base_url=base, timeout=5) as c:
                r = c.get("/refused")
            assert r.status_code == 503
            assert r.headers["x-envoy-overloaded"] == "true"
            upstream.release()
            for t in [*threads, waiting]:
                t.join()
            assert results == {"/hold0": 200, "/hold1": 200, "/waits": 200}
            assert upstream.connections == 1
            assert [r.conn for r in upstream.requests] == [1, 1, 1]
            stats = wait_for(
                lambda: (st := p.stats()).get("cluster.up.upstream_rq_pending_overflow") and st
            )
            assert stats["cluster.up.upstream_rq_pending_overflow"] == 1
            assert stats["cluster.up.upstream_cx_overflow"] >= 1
            assert stats["cluster.up.upstream_rq_pending_total"] >= 2
