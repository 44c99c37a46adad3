"""Raw HTTP/1 on both sides of a proxy, for the bad-request corpus (test_http1_corpus_vs_envoy).

* :class:`UpstreamRecorder` listens on one loopback port per case (one selector thread
  for all of them), keeps the exact bytes every accepted connection received, and
  answers each complete request with :data:`UPSTREAM_REPLY` (``connection: close``, so
  a proxy never reuses the connection for another request).
* :func:`play` sends one case's bytes on a fresh client connection and reads what
  comes back with bounded waits: every response, then whether the proxy closed the
  connection. Nothing here can block a run: a proxy that neither answers nor closes is
  reported as a hang.
* :func:`upstream_view` turns recorded bytes into what is compared: request lines and
  headers as received (name case and order kept) without the headers a proxy adds by
  itself, and each body decoded from its framing.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

UPSTREAM_REPLY = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\nx-up: 1\r\n\r\nok"
UPSTREAM_REPLY_HEAD = UPSTREAM_REPLY[: UPSTREAM_REPLY.index(b"\r\n\r\n") + 4]

# Headers each proxy adds or rewrites on its own: not compared.
ADDED_BY_PROXY = frozenset(
    {
        "x-request-id",
        "x-forwarded-proto",
        "x-forwarded-for",
        "x-envoy-expected-rq-timeout-ms",
        "x-envoy-external-address",
        "x-envoy-internal",
    }
)


# -- request framing, for the recorder and the comparison ------------------------------


@dataclass
class Framed:
    """One request (or what arrived of it) as an upstream saw it."""

    head: bytes  # up to and including the empty line, or all that came when incomplete
    body: bytes = b""  # decoded
    framing: str = "none"  # none | length | chunked
    complete: bool = False
    end: int = 0  # offset just past it in the connection's bytes


def frame_one(data: bytes, start: int) -> Framed:
    he = data.find(b"\r\n\r\n", start)
    if he < 0:
        return Framed(data[start:], end=len(data))
    he += 4
    head = data[start:he]
    low = head.lower()
    f = Framed(head, end=he)
    if b"\r\ntransfer-encoding:" in low:
        f.framing = "chunked"
        pos = he
        body = bytearray()
        while True:
            nl = data.find(b"\r\n", pos)
            if nl < 0:
                break
            try:
                size = int(data[pos:nl].split(b";")[0], 16)
            except ValueError:
                break
            pos = nl + 2
            if size == 0:
                tr = data.find(b"\r\n\r\n", pos - 2)
                if tr >= 0:
                    f.complete = True
                    pos = tr + 4
                break
            if len(data) < pos + size + 2:
                body += data[pos:]
                pos = len(data)
                break
            body += data[pos : pos + size]
            pos += size + 2
        f.body = bytes(body)
        f.end = pos
        return f
    i = low.find(b"\r\ncontent-length:")
    if i >= 0:
        f.framing = "length"
        j = low.find(b"\r\n", i + 2)
        n = int(low[i + 17 : j].strip() or b"0")
        f.body = data[he : he + n]
        f.end = min(len(data), he + n)
        f.complete = len(data) >= he + n
        return f
    f.complete = True
    return f


def frame_all(data: bytes) -> list[Framed]:
    out = []
    pos = 0
    while pos < len(data):
        f = frame_one(data, pos)
        out.append(f)
        if not f.complete:
            break
        pos = f.end
    return out


def upstream_view(connections: list[bytes]) -> list[Any]:
    """What the upstream received, connection by connection, request by request."""
    out: list[Any] = []
    for data in connections:
        if not data:
            continue  # connected, sent nothing (a pre-connect or a reset request)
        reqs = []
        for f in frame_all(data):
            lines = f.head.decode("latin-1").split("\r\n")
            kept = [lines[0]]
            for line in lines[1:]:
                if line and line.split(":", 1)[0].strip().lower() not in ADDED_BY_PROXY:
                    kept.append(line)
            item: dict[str, Any] = {"head": kept, "framing": f.framing}
            if f.body:
                item["body"] = f.body.decode("latin-1")
            if not f.complete:
                item["incomplete"] = True
            reqs.append(item)
        out.append(reqs)
    return out


# -- the upstream recorder --------------------------------------------------------------


class _Conn:
    __slots__ = ("sock", "data", "answered", "port")

    def __init__(self, sock: socket.socket, port: int) -> None:
        self.sock = sock
        self.port = port
        self.data = bytearray()
        self.answered = 0


class UpstreamRecorder:
    """Loopback listeners on ``count`` ports that record each connection's bytes."""

    def __init__(self, count: int) -> None:
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self.ports: list[int] = []
        self._listeners: list[socket.socket] = []
        self._conns: dict[int, list[_Conn]] = {}
        for _ in range(count):
            ls = socket.socket()
            ls.bind(("127.0.0.1", 0))
            ls.listen(64)
            ls.setblocking(False)
            port = ls.getsockname()[1]
            self.ports.append(port)
            self._listeners.append(ls)
            self._conns[port] = []
            self._sel.register(ls, selectors.EVENT_READ, ("listen", port))
        self._stop_r, self._stop_w = socket.socketpair()
        self._sel.register(self._stop_r, selectors.EVENT_READ, ("stop", 0))
        self._thread = threading.Thread(target=self._run, name="upstream-recorder", daemon=True)

    def __enter__(self) -> UpstreamRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_w.send(b"x")
        self._thread.join(5)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._sel.close()
        self._stop_w.close()

    def received(self, port: int) -> list[bytes]:
        """The bytes each connection to ``port`` received so far, in accept order."""
        with self._lock:
            return [bytes(c.data) for c in self._conns[port]]

    def clear(self) -> None:
        with self._lock:
            for conns in self._conns.values():
                conns.clear()

    def _run(self) -> None:
        while True:
            for key, _ in self._sel.select():
                kind, port = key.data if isinstance(key.data, tuple) else ("conn", 0)
                if kind == "stop":
                    return
                if kind == "listen":
                    self._accept(key.fileobj, port)  # type: ignore[arg-type]
                else:
                    self._read(key.data)

    def _accept(self, ls: socket.socket, port: int) -> None:
        while True:
            try:
                sock, _ = ls.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            conn = _Conn(sock, port)
            with self._lock:
                self._conns[port].append(conn)
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._sel.unregister(conn.sock)
            conn.sock.close()
            return
        with self._lock:
            conn.data += data
        done = [f for f in frame_all(bytes(conn.data)) if f.complete]
        for f in done[conn.answered :]:
            head = f.head.startswith(b"HEAD ")
            try:
                conn.sock.sendall(UPSTREAM_REPLY_HEAD if head else UPSTREAM_REPLY)
            except OSError:
                pass  # the proxy reset it: what it sent is recorded, nothing to answer
            conn.answered += 1


# -- the client side --------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Outcome:
    responses: list[Response] = field(default_factory=list)
    # "closed" (the proxy closed or reset after its answers), "open" (it kept the
    # connection), "hang" (no answer and no close within the wait)
    end: str = "open"
    rest: bytes = b""  # bytes after the last complete response


def _parse_responses(data: bytes, head_request: bool) -> tuple[list[Response], bytes]:
    out = []
    pos = 0
    while True:
        he = data.find(b"\r\n\r\n", pos)
        if he < 0:
            break
        lines = data[pos:he].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        cl = next((int(v) for k, v in headers if k == "content-length"), 0)
        if head_request or status in (204, 304) or 100 <= status < 200:
            cl = 0
        if len(data) < he + 4 + cl:
            break
        out.append(Response(status, headers, data[he + 4 : he + 4 + cl]))
        pos = he + 4 + cl
    return out, data[pos:]


def play(
    port: int,
    request: bytes,
    half_close: bool = False,
    answer_wait: float = 3.0,
    quiet: float = 1.0,
    close_wait: float = 3.0,
) -> Outcome:
    """Send ``request`` on a new connection; read answers until the proxy closes, or
    until it has answered and then stayed quiet for ``quiet`` seconds (``close_wait``
    after an answer that says ``connection: close``: Envoy closes only after its
    delayed_close_timeout, 1 s), or (no answer at all) ``answer_wait`` seconds passed:
    then it is a hang."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=answer_wait)
    data = b""
    end = "open"
    try:
        try:
            sock.sendall(request)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the proxy may close before it read everything: what it answered counts
        deadline = time.monotonic() + answer_wait
        while True:
            answered = b"\r\n\r\n" in data
            if not answered:
                wait = deadline - time.monotonic()
            elif b"\r\nconnection: close\r\n" in data.lower():
                wait = close_wait
            else:
                wait = quiet
            if wait <= 0:
                end = "hang"
                break
            sock.settimeout(wait)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                end = "open" if answered else "hang"
                break
            except ConnectionResetError:
                # A close with unread bytes on its side is a reset: still a close.
                end = "closed"
                break
            if not chunk:
                end = "closed"
                break
            data += chunk
    finally:
        sock.close()
    responses, rest = _parse_responses(data, request.startswith(b"HEAD "))
    return Outcome(responses, end, rest)


def described(outcome: Outcome) -> dict[str, Any]:
    """What is compared about the client's side.

    Interim 1xx answers are left out: Envoy answers ``Expect: 100-continue`` with a 100
    even when the body came with the head (or there is none), proxyd only when it
    waits for one; RFC 9110 §10.1.1 allows both (test_errors_vs_envoy does the same).
    """
    return {
        "responses": [
            {
                "status": r.status,
                "body": r.body.decode("latin-1"),
                "connection": next((v for k, v in r.headers if k == "connection"), None),
                "from_upstream": any(k == "x-up" for k, _ in r.headers),
            }
            for r in outcome.responses
            if not 100 <= r.status < 200
        ],
        "end": outcome.end,
        "rest": outcome.rest.decode("latin-1"),
    }
