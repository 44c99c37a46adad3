"""A real WebSocket echo server (wsproto, one thread per connection) for the upgrade
tests, and a wsproto client session.

The server records each handshake's request head (lower-case header names) before
wsproto takes the bytes; it answers a handshake to a path ending in ``/reject`` with
``403`` and a body, else accepts it, then echoes each message prefixed with ``echo:``,
answers pings and closes when asked.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return b"", b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def head_headers(head: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            name, _, value = line.partition(b":")
            key = name.strip().lower().decode("latin-1")
            v = value.strip().decode("latin-1")
            out[key] = v if key not in out else out[key] + "," + v
    return out


class WsEchoServer:
    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.heads: list[dict[str, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> WsEchoServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop = True
        self.sock.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            head, rest = _read_head(conn)
            if not head:
                return
            self.heads.append({"path": head.split(b" ")[1].decode(), **head_headers(head)})
            ws = WSConnection(ConnectionType.SERVER)
            ws.receive_data(head + rest)
            pending = ""
            pending_bytes = b""
            while True:
                for event in ws.events():
                    if isinstance(event, Request):
                        if event.target.endswith("/reject"):
                            body = b"not here"
                            conn.sendall(
                                ws.send(
                                    RejectConnection(
                                        status_code=403,
                                        headers=[(b"content-length", str(len(body)).encode())],
                                        has_body=True,
                                    )
                                )
                                + ws.send(RejectData(data=body))
                            )
                            return
                        conn.sendall(ws.send(AcceptConnection()))
                    elif isinstance(event, TextMessage):
                        pending += event.data
                        if event.message_finished:
                            conn.sendall(ws.send(TextMessage(data="echo:" + pending)))
                            pending = ""
                    elif isinstance(event, BytesMessage):
                        pending_bytes += bytes(event.data)
                        if event.message_finished:
                            conn.sendall(ws.send(BytesMessage(data=b"echo:" + pending_bytes)))
                            pending_bytes = b""
                    elif isinstance(event, Ping):
                        conn.sendall(ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        conn.sendall(ws.send(event.response()))
                        return
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                ws.receive_data(data)


def ws_session(
    port: int,
    path: str,
    messages: list[str],
    headers: dict[str, str] | None = None,
    pause_s: float = 0.0,
    big: int = 0,
    wrap: Callable[[socket.socket], socket.socket] | None = None,
) -> dict[str, Any]:
    """Open a WebSocket through ``port``, send ``messages`` (text, ``pause_s`` apart), a
    ping, and with ``big`` a binary message of that many bytes; then close. What came
    back: the handshake status, the replies in order, whether the pong came, the
    close code, or where it ended early. ``wrap`` makes the TCP connection something
    else (a TLS client socket)."""
    out: dict[str, Any] = {"status": None, "replies": [], "pong": False, "close": None}
    ws = WSConnection(ConnectionType.CLIENT)
    extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with wrap(raw) if wrap is not None else raw as sock:
        sock.sendall(ws.send(Request(host="ws.test", target=path, extra_headers=extra)))

        def events() -> list[Any]:
            while True:
                got = list(ws.events())
                if got:
                    return got
                data = sock.recv(65536)
                if not data:
                    ws.receive_data(None)
                    return list(ws.events()) or [None]
                ws.receive_data(data)

        accepted = False
        while not accepted:
            for event in events():
                if isinstance(event, AcceptConnection):
                    out["status"] = 101
                    accepted = True
                elif isinstance(event, RejectConnection):
                    out["status"] = event.status_code
                    if not event.has_body:
                        return out
                elif isinstance(event, RejectData):
                    out.setdefault("body", b"")
                    out["body"] += event.data
                    if event.body_finished:
                        out["body"] = out["body"].decode()
                        return out
                elif event is None:
                    out["ended"] = "before the handshake"
                    return out
        expected = len(messages) + (1 if big else 0)
        for i, m in enumerate(messages):
            if i and pause_s:
                time.sleep(pause_s)
            sock.sendall(ws.send(TextMessage(data=m)))
        if big:
            sock.sendall(ws.send(BytesMessage(data=b"b" * big)))
        sock.sendall(ws.send(Ping(payload=b"p")))
        partial: dict[type, Any] = {TextMessage: "", BytesMessage: b""}
        while len(out["replies"]) < expected or not out["pong"]:
            for event in events():
                if event is None:
                    out["ended"] = "before the replies"
                    return out
                if isinstance(event, Message):
                    partial[type(event)] += event.data
                    if event.message_finished:
                        data = partial[type(event)]
                        partial[type(event)] = type(data)()
                        out["replies"].append(
                            data if isinstance(data, str) else f"{len(data)} bytes"
                        )
                elif isinstance(event, Pong):
                    out["pong"] = True
        sock.sendall(ws.send(CloseConnection(code=1000)))
        while out["close"] is None:
            for event in events():
                if isinstance(event, CloseConnection):
                    out["close"] = event.code
                elif event is None:
                    out["close"] = "eof"
    return out
