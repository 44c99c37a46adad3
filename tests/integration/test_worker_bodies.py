"""Large bodies stream through the worker without growing its memory."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time

from tests.integration import worker_harness
from tests.integration.worker_harness import (
    make_epoch,
    rss_of,
)

start_worker = worker_harness.start_worker  # the fixture

MB = 1024 * 1024


class RssWatch:
    """Samples a process's RSS in a thread; ``peak`` is the largest value seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_of(self.pid))
            time.sleep(0.02)  # the sampling interval

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _read_response(s: socket.socket) -> bytes:
    data = bytearray()
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return bytes(data)
        data += chunk


def _upload(port: int, size: int, chunked: bool) -> dict:
    block = bytes(range(256)) * 256  # 64 KiB
    digest = hashlib.sha256()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % size
        s.sendall(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n" + framing + b"\r\n\r\n"
        )
        left = size
        while left:
            piece = block[: min(left, len(block))]
            digest.update(piece)
            s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            left -= len(piece)
        if chunked:
            s.sendall(b"0\r\n\r\n")
        data = _read_response(s)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    info = json.loads(body)
    assert info["body_sha256"] == digest.hexdigest()
    return info


def test_large_upload_does_not_grow_memory(start_worker, upstream) -> None:
    a = upstream("a")
    w = start_worker(make_epoch(1, 0, {"a": [a.port]}))
    port = w.bound_port()
    _upload(port, MB, chunked=False)  # warm up: buffers, pools, imports
    before = rss_of(w.pid)
    with RssWatch(w.pid) as watch:
        assert _upload(port, 200 * MB, chunked=False)["body_bytes"] == 200 * MB
        assert _upload(port, 50 * MB, chunked=True)["body_bytes"] == 50 * MB
    assert watch.peak - before < 8 * MB, (before, watch.peak)


def test_slow_client_gets_a_large_download_with_backpressure(start_worker, upstream) -> None:
    a = upstream("a")
    w = start_worker(make_epoch(1, 0, {"a": [a.port]}))
    port = w.bound_port()
    before = rss_of(w.pid)
    size = 100 * MB
    with RssWatch(w.pid) as watch, socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % size)
        a.wait_requests(1)  # the upstream has the request: it sends from now on
        # A pacing gap, counted from there: the client does not read for a while, and the
        # worker must not buffer for it meanwhile.
        time.sleep(0.5)
        received = len(_read_response(s))
    assert received > size
    assert watch.peak - before < 8 * MB, (before, watch.peak)
