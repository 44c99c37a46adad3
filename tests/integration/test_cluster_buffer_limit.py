"""A cluster's per_connection_buffer_limit_bytes bounds how much of a response body
proxyd reads from its hosts at once. A body that ends with the connection is re-framed
as chunked downstream, one chunk per read, so the client sees the bound: after the
first read (the one that brought the head, and whatever body came with it) no chunk is
larger than the cluster's limit, and the body arrives whole."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ProxydProcess, bootstrap, dump_yaml, http_listener, static_cluster

BODY = bytes(range(256)) * 800  # 200 KiB


@pytest.fixture
def until_close_upstream() -> Iterator[int]:
    """Answers every request with a body that ends when the connection does."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + BODY)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        server.close()


def chunk_sizes(port: int) -> tuple[list[int], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    sizes, body = [], b""
    while True:
        line, _, rest = rest.partition(b"\r\n")
        n = int(line, 16)
        if n == 0:
            return sizes, body
        sizes.append(n)
        body += rest[:n]
        rest = rest[n + 2 :]


@pytest.mark.parametrize("limit", [4096, 0])
def test_cluster_limit_bounds_each_read(
    tmp_path: Path, until_close_upstream: int, limit: int
) -> None:
    cluster = static_cluster("up", [until_close_upstream])
    if limit:
        cluster["per_connection_buffer_limit_bytes"] = limit
    route_config = {
        "name": "r",
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}],
            }
        ],
    }
    doc = bootstrap([http_listener("ingress", 0, route_config)], [cluster])
    with ProxydProcess(tmp_path, dump_yaml(doc), concurrency=1) as p:
        sizes, body = chunk_sizes(p.listener_port("ingress"))
    assert body == BODY
    if limit:
        assert max(sizes[1:]) <= limit and len(sizes) >= (len(BODY) - sizes[0]) // limit
