"""A small HTTP/2 (prior knowledge, h2c) upstream for tests, on the ``h2`` library.

One thread per connection. Every request is recorded (its header block, body, and the
connection it came on) and answered by its path's end:

* a path with ``/hold`` in it: the response waits until :meth:`H2Upstream.release` (to keep streams
  open); then as ``/`` below;
* ``/reset``: RST_STREAM (INTERNAL_ERROR) before any response head;
* ``/refuse``: RST_STREAM (REFUSED_STREAM) before any response head;
* ``/big``: an 8 MiB body, sent as proxyd's windows allow (``big_sent`` counts it);
* ``/flaky``: REFUSED_STREAM the 1st, 3rd, ... time, then as below;
* ``/goaway``: the response, then GOAWAY (last stream id = this one);
* ``/trailers``: 200, a body without content-length, and trailers ``x-t: done``;
* ``/reset-after``: a response head and some body, then RST_STREAM;
* an HTTP/1.1 request (not the h2 preface): 200 ``h1``, recorded with ``:protocol`` h1;
* anything else: 200, ``content-type: text/plain``, the body ``<path> <n>`` where n is
  the request body's length, with ``content-length``.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


@dataclass
class Seen:
    headers: dict[str, str]
    body: bytearray = field(default_factory=bytearray)
    conn: int = 0
    ended: bool = False
    reset: int | None = None  # the RST_STREAM code proxyd sent
    big_left: int = 0  # /big: body bytes still to send (as the windows allow)
    trailers: dict[str, str] | None = None  # the request's trailers


BIG = 8 * 1024 * 1024


class H2Upstream:
    def __init__(self, max_concurrent_streams: int = 100) -> None:
        self.max_streams = max_concurrent_streams
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.requests: list[Seen] = []
        self.connections = 0
        self.closed_connections = 0
        self.lock = threading.Lock()
        self.released = threading.Event()
        self.flaky: dict[str, int] = {}
        self.big_sent = 0  # /big body bytes sent, all streams
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> H2Upstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self.released.set()
        self.sock.close()

    def release(self) -> None:
        self.released.set()

    def _accept(self) -> None:
        while not self._stop:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                n = self.connections
            threading.Thread(target=self._serve, args=(s, n), daemon=True).start()

    def _serve(self, s: socket.socket, n: int) -> None:
        first = s.recv(65536)
        if first and not first.startswith(b"PRI * HTTP/2.0"):
            self._serve_http1(s, first, n)
            return
        c = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="latin-1")
        )
        c.local_settings = h2.settings.Settings(
            client=False,
            initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams},
        )
        c.initiate_connection()
        s.sendall(c.data_to_send())
        s.settimeout(0.02)
        streams: dict[int, Seen] = {}
        held: list[int] = []
        try:
            for ev in c.receive_data(first):
                self._event(c, ev, streams, held, n)
            while not self._stop:
                try:
                    data = s.recv(65536)
                except TimeoutError:
                    data = None
                if data == b"":
                    return
                if data:
                    for ev in c.receive_data(data):
                        self._event(c, ev, streams, held, n)
                if held and self.released.is_set():
                    for sid in held:
                        self._answer(c, sid, streams[sid])
                    held.clear()
                for sid, seen in streams.items():
                    if seen.big_left and seen.reset is None:
                        self._send_big(c, sid, seen)
                out = c.data_to_send()
                if out:
                    s.sendall(out)
        except (OSError, h2.exceptions.ProtocolError):
            return  # proxyd closed it, or sent frames after a GOAWAY this side sent
        finally:
            with self.lock:
                self.closed_connections += 1
            s.close()

    def _serve_http1(self, s: socket.socket, data: bytes, n: int) -> None:
        """An HTTP/1.1 request (one per connection): recorded with ``:protocol`` h1."""
        with s:
            while b"\r\n\r\n" not in data:
                more = s.recv(65536)
                if not more:
                    return
                data += more
            line = data.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            with self.lock:
                self.requests.append(Seen({":path": line[1], ":protocol": "h1"}, conn=n))
            s.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nh1")

    def _event(self, c: h2.connection.H2Connection, ev: object, streams: dict[int, Seen], held: list[int], n: int) -> None:  # fmt: skip
        if isinstance(ev, h2.events.RequestReceived):
            seen = Seen(dict(ev.headers), conn=n)
            streams[ev.stream_id] = seen
            with self.lock:
                self.requests.append(seen)
        elif isinstance(ev, h2.events.DataReceived):
            streams[ev.stream_id].body += ev.data
            c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            streams[ev.stream_id].trailers = dict(ev.headers)
        elif isinstance(ev, h2.events.StreamReset):
            if ev.stream_id in streams:
                streams[ev.stream_id].reset = ev.error_code
                if ev.stream_id in held:
                    held.remove(ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            seen = streams[ev.stream_id]
            seen.ended = True
            if "/hold" in seen.headers[":path"] and not self.released.is_set():
                held.append(ev.stream_id)
            else:
                self._answer(c, ev.stream_id, seen)

    def _send_big(self, c: h2.connection.H2Connection, sid: int, seen: Seen) -> None:
        """As much of /big's body as proxyd's windows allow."""
        while seen.big_left:
            n = min(seen.big_left, c.local_flow_control_window(sid), c.max_outbound_frame_size)
            if n <= 0:
                return
            seen.big_left -= n
            c.send_data(sid, b"x" * n, end_stream=not seen.big_left)
            with self.lock:
                self.big_sent += n

    def _answer(self, c: h2.connection.H2Connection, sid: int, seen: Seen) -> None:
        path = seen.headers[":path"]
        if path.endswith("/big"):
            c.send_headers(sid, [(":status", "200"), ("content-length", str(BIG))])
            seen.big_left = BIG
            self._send_big(c, sid, seen)
            return
        if path.endswith("/flaky"):
            with self.lock:
                self.flaky[path] = self.flaky.get(path, 0) + 1
                refuse = self.flaky[path] % 2 == 1
            if refuse:
                c.reset_stream(sid, 7)
                return
        if path.endswith("/reset"):
            c.reset_stream(sid, 2)
            return
        if path.endswith("/refuse"):
            c.reset_stream(sid, 7)
            return
        if path.endswith("/trailers"):
            c.send_headers(sid, [(":status", "200"), ("content-type", "text/plain")])
            c.send_data(sid, b"with trailers")
            c.send_headers(sid, [("x-t", "done")], end_stream=True)
            return
        if path.endswith("/reset-after"):
            c.send_headers(sid, [(":status", "200")])
            c.send_data(sid, b"partial")
            c.reset_stream(sid, 2)
            return
        body = f"{path} {len(seen.body)}".encode()
        c.send_headers(
            sid,
            [
                (":status", "200"),
                ("content-type", "text/plain"),
                ("content-length", str(len(body))),
            ],
        )
        c.send_data(sid, body, end_stream=True)
        if path.endswith("/goaway"):
            c.close_connection(last_stream_id=sid)
