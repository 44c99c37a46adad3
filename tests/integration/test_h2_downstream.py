"""Downstream HTTP/2 with real processes: flow control both ways, and GOAWAY on drain.

* A client that does not open one stream's window: proxyd reads from the upstream only
  what that window lets out (the upstream's progress stops far below the body's size,
  kernel buffers included), another stream on the same connection completes meanwhile,
  and the body arrives whole once the window opens.
* An upstream that does not read the request body: proxyd gives the client no more
  window than the upstream took (the client's sending stops far below the body's
  size), another stream completes meanwhile, and the body arrives whole once the
  upstream reads.
* idle_timeout: an HTTP/2 connection without streams gets GOAWAY and is closed; so
  does one accepted under a listener a reload changed, after the drain time.
* Broken frames: GOAWAY with an error code; the worker counts no exception.
* The preface and a request a byte per write: answered as usual.
* A drain (SIGTERM): the client gets GOAWAY with the last stream it sent, a stream
  opened after it is refused (REFUSED_STREAM), the one before still gets its response,
  and the connection then closes.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest

from tests.support import (
    ProxydProcess,
    UpstreamServer,
    bootstrap,
    dump_yaml,
    http_listener,
    static_cluster,
    wait_for,
)

ROUTES = {
    "virtual_hosts": [
        {
            "name": "all",
            "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}],
        }
    ]
}
MIB = 1024 * 1024


class CountingUpstream:
    """An HTTP/1.1 upstream on a small socket buffer that counts what it moved.

    ``GET /big/N`` is answered with N bytes, written 16 KiB at a time (``sent`` counts
    them as the kernel takes them); any request with a body waits for :meth:`release`
    before it reads the body (``read`` counts it), then answers 200 with the count."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        # Inherited by accepted sockets: small windows, so the kernel holds little.
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        self.port = self.server.getsockname()[1]
        self.sent = 0
        self.read = 0
        self.released = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.stop.set()
        self.released.set()
        self.thread.join(2)
        self.server.close()

    def _accept(self) -> None:
        self.server.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while not self.stop.is_set():
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = dict(
                    (k.strip().lower(), v.strip())
                    for k, _, v in (x.partition(":") for x in lines[1:])
                )
                if path.startswith("/big/"):
                    n = int(path.rsplit("/", 1)[1])
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % n)
                    block = b"b" * 16384
                    while n:
                        k = min(n, len(block))
                        conn.sendall(block[:k])
                        self.sent += k
                        n -= k
                    continue
                length = int(headers.get("content-length", "0"))
                self.released.wait(30)
                got = len(buf)
                buf = b""
                while got < length:
                    data = conn.recv(min(65536, length - got))
                    if not data:
                        return
                    got += len(data)
                    self.read = got
                body = str(got).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))


@pytest.fixture
def counting() -> Iterator[CountingUpstream]:
    up = CountingUpstream()
    try:
        yield up
    finally:
        up.close()


def settled(read: Any, limit_s: float = 10.0) -> int:
    """``read()`` once it has stopped moving (the same value five polls in a row)."""
    deadline = time.monotonic() + limit_s
    last, same = -1, 0
    while time.monotonic() < deadline:
        value = read()
        same = same + 1 if value == last else 0
        last = value
        if same >= 5:
            return value
        time.sleep(0.05)
    return last


class Client:
    """A raw h2 client on one connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.c = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.c.initiate_connection()
        self.send()
        self.body: dict[int, int] = {}
        self.status: dict[int, int] = {}
        self.ended: set[int] = set()
        self.held: set[int] = set()  # streams whose window the client keeps shut
        self.goaway: tuple[int, int] | None = None  # (error code, last stream id)
        self.pending = b""
        self.resets: dict[int, int] = {}
        self.closed = False

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self) -> None:
        data = self.c.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, method: str, path: str, end: bool = True, length: int = -1) -> int:
        sid = self.c.get_next_available_stream_id()
        headers = [
            (b":method", method.encode()),
            (b":path", path.encode()),
            (b":scheme", b"http"),
            (b":authority", b"example.com"),
        ]
        if length >= 0:
            headers.append((b"content-length", str(length).encode()))
        self.c.send_headers(sid, headers, end_stream=end)
        self.send()
        self.body[sid] = 0
        return sid

    def pump(self, timeout: float | None = 10.0) -> bool:
        """Read once and handle what came; False on a timeout."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        if not data:
            self.closed = True
            return True
        for ev in self.c.receive_data(self._without_goaway(data)):
            if isinstance(ev, h2.events.ResponseReceived):
                self.status[ev.stream_id] = int(dict(ev.headers)[b":status"])
            elif isinstance(ev, h2.events.DataReceived):
                self.body[ev.stream_id] += len(ev.data)
                if ev.stream_id in self.held:
                    # The connection's window is given back, the stream's is not.
                    self.c.increment_flow_control_window(ev.flow_controlled_length)
                else:
                    self.c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self.ended.add(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                self.resets[ev.stream_id] = ev.error_code
        self.send()
        return True

    def _without_goaway(self, data: bytes) -> bytes:
        """The frames in ``data`` but GOAWAY, which is recorded (h2's client state
        machine takes no more HEADERS after a GOAWAY; a draining server sends them)."""
        self.pending += data
        out = b""
        while len(self.pending) >= 9:
            length = int.from_bytes(self.pending[:3], "big")
            if len(self.pending) < 9 + length:
                break
            frame, self.pending = self.pending[: 9 + length], self.pending[9 + length :]
            if frame[3] == 0x7:  # GOAWAY
                payload = frame[9:]
                self.goaway = (
                    int.from_bytes(payload[4:8], "big"),
                    int.from_bytes(payload[:4], "big") & 0x7FFFFFFF,
                )
            else:
                out += frame
        return out

    def until(self, done: Any) -> None:
        while not done():
            assert not self.closed, "the connection closed"
            assert self.pump(), "nothing came"


def proxyd_config(up_port: int, **hcm: Any) -> str:
    lst = http_listener("ingress", 0, ROUTES, **hcm)
    lst["per_connection_buffer_limit_bytes"] = 65536
    return dump_yaml(bootstrap([lst], [static_cluster("up", [up_port])]))


def test_a_slow_reader_of_one_stream_holds_back_only_that_stream(tmp_path: Path, counting):
    body = 16 * MIB
    with ProxydProcess(tmp_path, proxyd_config(counting.port), concurrency=1) as p:
        with Client(p.listener_port()) as client:
            big = client.request("GET", f"/big/{body}")
            client.held.add(big)
            # The stream's window (65535, the client's default) is all it gets.
            client.until(lambda: client.body[big] >= 65535)
            moved = settled(lambda: counting.sent)
            assert client.body[big] == 65535
            # proxyd read one buffer's worth (64 KiB) at a time from the upstream: the rest
            # waits in the upstream, not in proxyd (kernel buffers on the way included).
            assert moved < 4 * MIB, moved
            # Another stream on the same connection is not held up.
            small = client.request("GET", "/big/100000")
            client.until(lambda: small in client.ended)
            assert (client.status[small], client.body[small]) == (200, 100000)
            assert big not in client.ended
            # The window opens: the rest comes.
            client.held.discard(big)
            client.c.acknowledge_received_data(client.body[big], big)
            client.send()
            client.until(lambda: big in client.ended)
            assert (client.status[big], client.body[big]) == (200, body)


def test_a_slow_upstream_holds_back_the_clients_request_body(tmp_path: Path, counting):
    body = 16 * MIB
    config = proxyd_config(
        counting.port,
        http2_protocol_options={
            "initial_stream_window_size": 65535,
            "initial_connection_window_size": 1048576,
        },
    )
    with ProxydProcess(tmp_path, config, concurrency=1) as p:
        with Client(p.listener_port()) as client:
            client.until(lambda: client.c.remote_settings.initial_window_size == 65535)
            post = client.request("POST", "/upload", end=False, length=body)
            sent = 0
            block = b"u" * 16384
            while sent < body:
                window = min(
                    client.c.local_flow_control_window(post),
                    client.c.max_outbound_frame_size,
                    body - sent,
                )
                if window <= 0:
                    # No window: wait for proxyd to give some back (it does only as the
                    # upstream takes the body, and this upstream does not).
                    if not client.pump(timeout=1.0):
                        break
                    continue
                client.c.send_data(post, block[:window])
                sent += window
                client.send()
            # The client could send its window plus what the kernel buffers on the way to
            # the upstream hold; far from the whole body.
            assert sent < 8 * MIB, sent
            # Another stream on the connection goes through meanwhile.
            small = client.request("GET", "/big/1000")
            client.until(lambda: small in client.ended)
            assert (client.status[small], client.body[small]) == (200, 1000)
            # The upstream reads: the body goes on to its end.
            counting.release()
            while sent < body:
                window = min(
                    client.c.local_flow_control_window(post),
                    client.c.max_outbound_frame_size,
                    body - sent,
                )
                if window <= 0:
                    assert client.pump(), "no window came back"
                    continue
                client.c.send_data(post, block[:window])
                sent += window
                client.send()
            client.c.end_stream(post)
            client.send()
            client.until(lambda: post in client.ended)
            assert client.status[post] == 200
            assert counting.read == body


def test_drain_sends_goaway_and_lets_the_stream_finish(tmp_path: Path):
    with UpstreamServer("up") as up:
        config = dump_yaml(
            bootstrap([http_listener("ingress", 0, ROUTES)], [static_cluster("up", [up.port])])
        )
        p = ProxydProcess(tmp_path, config, concurrency=1).start()
        try:
            with Client(p.listener_port()) as client:
                held = client.request("GET", "/hold/bytes/7")
                up.wait_requests(1)
                os.kill(p.pid, signal.SIGTERM)  # the master drains its workers
                client.until(lambda: client.goaway is not None)
                assert client.goaway == (0, held)
                # A stream opened after it is refused; the one before goes on.
                late = client.request("GET", "/bytes/1")
                client.until(lambda: late in client.resets)
                assert client.resets[late] == 0x7  # REFUSED_STREAM
                up.release()
                client.until(lambda: held in client.ended)
                assert (client.status[held], client.body[held]) == (200, 7)
                # With no stream left, proxyd closes the connection.
                while not client.closed:
                    assert client.pump(), "the connection stayed open"
        finally:
            p.stop()


def test_an_idle_connection_gets_goaway_and_closes(tmp_path: Path):
    with UpstreamServer("up") as up:
        lst = http_listener(
            "ingress", 0, ROUTES, common_http_protocol_options={"idle_timeout": "0.3s"}
        )
        config = dump_yaml(bootstrap([lst], [static_cluster("up", [up.port])]))
        with ProxydProcess(tmp_path, config, concurrency=1) as p:
            with Client(p.listener_port()) as client:
                sid = client.request("GET", "/bytes/3")
                client.until(lambda: sid in client.ended)
                while not client.closed:
                    assert client.pump(), "the idle connection stayed open"
                assert client.goaway == (0, sid)


def test_broken_http2_gets_goaway_and_the_worker_goes_on(tmp_path: Path):
    """Frames that break HTTP/2 end their connection with GOAWAY (or, without the
    client preface, a close); the worker counts no exception and serves the next one."""
    with UpstreamServer("up") as up:
        config = dump_yaml(
            bootstrap(
                [http_listener("ingress", 0, ROUTES, codec_type="HTTP2")],
                [static_cluster("up", [up.port])],
            )
        )
        with ProxydProcess(tmp_path, config, concurrency=1) as p:
            port = p.listener_port()
            preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")
            cases = {
                # DATA on stream 0, a PING of 3 bytes, a HEADERS block that is not HPACK,
                # a WINDOW_UPDATE that overflows the window.
                "data on stream 0": bytes.fromhex("000003000100000000") + b"abc",
                "short ping": bytes.fromhex("000003060000000000") + b"abc",
                "bad hpack": bytes.fromhex("000004010500000001") + b"\xff\xff\xff\xff",
                "window overflow": bytes.fromhex("0000040800000000007fffffff"),
            }
            for name, frames in cases.items():
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall(preface + frames)
                    data = b""
                    while chunk := s.recv(65536):
                        data += chunk
                    # The server's frames end with a GOAWAY carrying an error code.
                    assert b"\x07\x00\x00\x00\x00\x00" in data, name
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                assert s.recv(65536) == b"", "not HTTP/2: closed without a word"
            with Client(port) as client:
                sid = client.request("GET", "/bytes/4")
                client.until(lambda: sid in client.ended)
                assert (client.status[sid], client.body[sid]) == (200, 4)
            wait_for(lambda: p.stats().get("http.ingress.downstream_cx_protocol_error") == 5)
            assert p.stats().get("server.proxyd.worker_exceptions", 0) == 0


def test_a_reload_that_changes_the_listener_sends_goaway(tmp_path: Path):
    with UpstreamServer("up") as up:

        def config(prefix: str) -> str:
            routes = {
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": prefix}, "route": {"cluster": "up"}}],
                    }
                ]
            }
            lst = http_listener("ingress", 0, routes)
            return dump_yaml(bootstrap([lst], [static_cluster("up", [up.port])]))

        extra = ("--drain-time-s", "0.3")
        with ProxydProcess(tmp_path, config("/"), concurrency=1, extra_args=extra) as p:
            with Client(p.listener_port()) as client:
                sid = client.request("GET", "/bytes/2")
                client.until(lambda: sid in client.ended)
                p.config_path.write_text(config("/bytes/"))
                assert p.ctl("reload").returncode == 0
                # Accepted under the old listener: GOAWAY after the drain time, then
                # the close (no stream is left).
                while not client.closed:
                    assert client.pump(), "the connection stayed open"
                assert client.goaway == (0, sid)


def test_a_request_sent_one_byte_at_a_time(tmp_path: Path):
    """AUTO on plaintext: the preface and the request come a byte per write (the
    codec choice waits for enough of them), and the response comes as usual."""
    with UpstreamServer("up") as up:
        config = dump_yaml(
            bootstrap([http_listener("ingress", 0, ROUTES)], [static_cluster("up", [up.port])])
        )
        with ProxydProcess(tmp_path, config, concurrency=1) as p:
            c = h2.connection.H2Connection(
                h2.config.H2Configuration(client_side=True, header_encoding=None)
            )
            c.initiate_connection()
            c.send_headers(
                1,
                [
                    (b":method", b"GET"),
                    (b":path", b"/bytes/6"),
                    (b":scheme", b"http"),
                    (b":authority", b"example.com"),
                ],
                end_stream=True,
            )
            data = c.data_to_send()
            with socket.create_connection(("127.0.0.1", p.listener_port()), timeout=10) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for i in range(len(data)):
                    s.sendall(data[i : i + 1])
                status, body, ended = 0, b"", False
                while not ended:
                    chunk = s.recv(65536)
                    assert chunk, "closed before the response ended"
                    for ev in c.receive_data(chunk):
                        if isinstance(ev, h2.events.ResponseReceived):
                            status = int(dict(ev.headers)[b":status"])
                        elif isinstance(ev, h2.events.DataReceived):
                            body += ev.data
                        elif isinstance(ev, h2.events.StreamEnded):
                            ended = True
                    s.sendall(c.data_to_send())
                assert (status, body) == (200, b"x" * 6)
