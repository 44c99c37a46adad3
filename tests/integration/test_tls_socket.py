"""proxyd.worker.tls.TlsSocket under backpressure: a scatter write far larger than the
socket buffers (OpenSSL must be given the same bytes again after "would block"), then
plain sends, to a client that reads slowly, over a real socket pair."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import trio

from proxyd.epoch import DownstreamTls, TlsCertificate
from proxyd.worker import io
from proxyd.worker.stats import StatsStore
from proxyd.worker.tls import TlsPlan, TlsSocket, handshake


def test_scatter_and_plain_writes_arrive_whole_in_order(certs, monkeypatch) -> None:
    results: list[int] = []
    original = TlsSocket.sendmsg

    def recording(self: TlsSocket, parts: list) -> int:
        n = original(self, parts)
        results.append(n)
        return n

    monkeypatch.setattr(TlsSocket, "sendmsg", recording)
    tls = DownstreamTls(
        certificates=(
            TlsCertificate(Path(certs.server).read_bytes(), Path(certs.server_key).read_bytes()),
        )
    )
    plan = TlsPlan(tls, StatsStore(), "test", "test", 10.0)
    server, client = socket.socketpair()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    parts = [b"h" * 1000, bytes(range(256)) * 1200, b"t" * 5000]
    expected = b"".join(parts) + b"y" * 70000 + b"end"
    got = bytearray()

    def read_slowly() -> None:
        ctx = ssl.create_default_context(cafile=certs.ca)
        with ctx.wrap_socket(client, server_hostname="example.com") as s:
            while len(got) < len(expected):
                chunk = s.recv(8192)
                if not chunk:
                    break
                got.extend(chunk)
                time.sleep(0.0005)

    reader = threading.Thread(target=read_slowly)
    reader.start()

    async def serve() -> None:
        server.setblocking(False)
        conn = await handshake(server, plan)
        assert conn is not None and conn.version == "TLSv1.3"
        await io.send_parts(conn, parts)  # type: ignore[arg-type]
        await io.send_all(conn, b"y" * 70000)  # type: ignore[arg-type]
        await io.send_parts(conn, [b"e", b"nd"])  # type: ignore[arg-type]
        await trio.to_thread.run_sync(lambda: reader.join(timeout=20))
        conn.close()

    trio.run(serve)
    assert bytes(got) == expected
    assert plan.stats.value("handshake") == 1
    assert results[0] == 0  # the large scatter write would block: its bytes were kept
