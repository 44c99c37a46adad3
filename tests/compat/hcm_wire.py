"""Both sides of a proxy for the connection-manager transform compat tests.

* :class:`EchoUpstream` listens on one loopback port, keeps the head of every request
  it receives by its ``x-case`` header, and answers ``200 ok`` with ``connection:
  close`` plus the response headers the request asked for in ``x-up-reply``
  (``name=value;name=value``), so a case can make the upstream send a ``server``,
  ``via`` or ``x-request-id`` header; a request with ``x-up-chunked`` gets its body
  chunked (a length the proxy does not know).
* :func:`send` plays raw request bytes on a new connection and returns the response,
  reading exactly one response (by its content-length) with bounded waits.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field


@dataclass
class Answer:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    # "answered", "closed" (closed without an answer) or "timeout"
    end: str = "answered"

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name]
        return ",".join(values) if values else None


def _read_head(sock: socket.socket, timeout: float) -> tuple[bytes, bytes] | None:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, OSError):
            return None
        if not chunk:
            return None
        data += chunk
    i = data.index(b"\r\n\r\n") + 4
    return data[:i], data[i:]


def _headers(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    out = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            out.append((name, value.strip()))
    return lines[0], out


class EchoUpstream:
    """A loopback HTTP/1.1 upstream that records request heads by ``x-case``."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.heads: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> EchoUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def clear(self) -> None:
        with self._lock:
            self.heads.clear()

    def head_of(self, case: str) -> bytes | None:
        with self._lock:
            return self.heads.get(case)

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            got = _read_head(conn, 5.0)
            if got is None:
                return
            head, _ = got
            _, headers = _headers(head)
            case = next((v for k, v in headers if k.lower() == "x-case"), "")
            with self._lock:
                self.heads[case] = head
            extra = b""
            reply = next((v for k, v in headers if k.lower() == "x-up-reply"), "")
            for item in reply.split(";"):
                if "=" in item:
                    name, value = item.split("=", 1)
                    extra += f"{name}: {value}\r\n".encode("latin-1")
            chunked = any(k.lower() == "x-up-chunked" for k, _ in headers)
            try:
                if chunked:  # a body of unknown length
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n"
                        + extra
                        + b"\r\n2\r\nok\r\n0\r\n\r\n"
                    )
                    return
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n"
                    + extra
                    + b"\r\nok"
                )
            except OSError:
                pass  # the proxy went away: what it sent is recorded


def send(port: int, request: bytes, timeout: float = 5.0) -> Answer:
    """``request`` on a new connection; the one response that comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(request)
        except OSError:
            pass
        got = _read_head(sock, timeout)
        if got is None:
            return Answer(end="closed")
        head, rest = got
        status_line, headers = _headers(head)
        parts = status_line.split(" ", 2)
        answer = Answer(int(parts[1]), [(k.lower(), v) for k, v in headers])
        length = int(answer.header("content-length") or 0)
        if request.startswith(b"HEAD ") or answer.status in (204, 304):
            length = 0
        while len(rest) < length:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, OSError):
                answer.end = "timeout"
                break
            if not chunk:
                break
            rest += chunk
        answer.body = rest[:length]
        return answer
