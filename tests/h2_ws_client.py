"""A WebSocket client over HTTP/2 with extended CONNECT (RFC 8441), for the tests: the
``h2`` library carries the stream, ``wsproto``'s frame layer the WebSocket frames in its
DATA frames (wsproto has no RFC 8441 handshake of its own)."""

from __future__ import annotations

import base64
import os
import socket
import time
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame
from wsproto.connection import Connection, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    TextMessage,
)


class FrameLog:
    """The frames that end or answer streams (HEADERS with their :status, RST_STREAM and
    GOAWAY with their codes), read beside h2, which stops at a GOAWAY."""

    def __init__(self, c: h2.connection.H2Connection) -> None:
        self.buf = b""
        self.log: list[str] = []
        self.c = c
        self.status: int | None = None
        self.closed_by_goaway = False
        self.decoder = hpack.Decoder()

    def feed(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 9:
            f, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
            if len(self.buf) < 9 + length:
                return
            f.parse_body(memoryview(self.buf[9 : 9 + length]))
            self.buf = self.buf[9 + length :]
            if isinstance(f, HeadersFrame):
                hdrs = dict(self.decoder.decode(f.data, raw=True))
                status = hdrs.get(b":status")
                end = " END_STREAM" if "END_STREAM" in f.flags else ""
                self.log.append(f"HEADERS {f.stream_id} {status and status.decode()}{end}")
                if status is not None:
                    self.status = int(status)
            elif isinstance(f, RstStreamFrame):
                self.log.append(f"RST_STREAM {f.stream_id} {f.error_code}")
            elif isinstance(f, GoAwayFrame):
                self.log.append(f"GOAWAY {f.last_stream_id} {f.error_code}")
                self.closed_by_goaway = True
            elif isinstance(f, DataFrame) and "END_STREAM" in f.flags:
                self.log.append(f"DATA {f.stream_id} END_STREAM")


def _client(sock: socket.socket) -> h2.connection.H2Connection:
    c = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    c.initiate_connection()
    # Room for a large message the other way without waiting for WINDOW_UPDATEs.
    c.increment_flow_control_window(8 << 20)
    c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 8 << 20})
    sock.sendall(c.data_to_send())
    return c


def h2_ws_session(
    port: int,
    path: str,
    messages: list[str],
    big: int = 0,
    key: bool = True,
    protocol: bytes = b"websocket",
    close_how: str = "close",
    pause_s: float = 0.0,
) -> dict[str, Any]:
    """Open a WebSocket on one HTTP/2 stream through ``port``; send ``messages``, a binary
    message of ``big`` bytes when asked, a ping; then end as ``close_how`` says:
    ``close`` (a WebSocket close), ``end_stream`` (END_STREAM at once),
    ``reset`` (RST_STREAM CANCEL). What came back: the server's ENABLE_CONNECT_PROTOCOL,
    the response status and the headers it had, the replies, whether the pong came, the
    close code, and how the stream ended."""
    out: dict[str, Any] = {"status": None, "replies": [], "pong": False, "close": None}
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    c = _client(sock)
    ws = Connection(ConnectionType.CLIENT)
    sid = 1
    state: dict[str, Any] = {"ended": None, "h2_broken": False}
    frames = FrameLog(c)
    head_wanted = True

    def read_once() -> None:
        """One read of the socket, through the frame log and h2 (WebSocket bytes stay
        in wsproto's buffer until :func:`pump` takes its events)."""
        try:
            data = sock.recv(65536)
        except TimeoutError:
            raise
        except OSError:
            data = b""
        if not data:
            if out["status"] is None and frames.status is not None:
                out["status"] = frames.status
            gone = "closed after goaway" if frames.closed_by_goaway else "connection closed"
            state["ended"] = state["ended"] or gone
            return
        frames.feed(data)
        if state["h2_broken"]:
            return  # read to the end, the frame log reads what comes
        try:
            events = c.receive_data(data)
        except h2.exceptions.ProtocolError:
            # Frames after a GOAWAY (h2 takes none once it has one): the frame log
            # still reads them.
            state["h2_broken"] = True
            events = []
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                hdrs = dict(ev.headers)
                out["status"] = int(hdrs[b":status"])
                out["headers"] = sorted(k.decode() for k in hdrs if k not in (b"date", b"server"))
                if ev.stream_ended is not None:
                    state["ended"] = "end_stream"
            elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                c.acknowledge_received_data(ev.flow_controlled_length, sid)
                if out["status"] == 200:
                    ws.receive_data(ev.data)
                else:
                    out["body"] = out.get("body", b"") + ev.data
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                state["ended"] = "end_stream"
            elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                state["ended"] = f"reset {int(ev.error_code)}"
            elif isinstance(ev, h2.events.ConnectionTerminated):
                # h2 takes nothing more: the frame log reads on to the end.
                state["h2_broken"] = True
        pending = c.data_to_send()
        if pending:
            sock.sendall(pending)

    def pump() -> list[Any]:
        """Read until something for the test happens: WebSocket events, the response
        head (``["head"]`` while it is awaited) or the end (``[None]``)."""
        while True:
            got = list(ws.events())
            if got:
                return got
            if state["ended"] is not None:
                return [None]
            if out["status"] is not None and head_wanted:
                return ["head"]
            read_once()

    def send(data: bytes, end: bool = False) -> None:
        """DATA frames within the server's windows (reading while they are shut)."""
        view = memoryview(data)
        while True:
            room = min(c.local_flow_control_window(sid), c.max_outbound_frame_size)
            if room <= 0 and view:
                read_once()
                if state["ended"] is not None:
                    return
                continue
            n = min(room, len(view))
            last = n == len(view)
            c.send_data(sid, bytes(view[:n]), end_stream=end and last)
            sock.sendall(c.data_to_send())
            view = view[n:]
            if last:
                return

    try:
        headers = [(b":method", b"CONNECT"), (b":protocol", protocol), (b":scheme", b"http"),
                   (b":path", path.encode()), (b":authority", b"ws.test"),
                   (b"sec-websocket-version", b"13")]  # fmt: skip
        if key:
            headers.append((b"sec-websocket-key", base64.b64encode(os.urandom(16))))
        c.send_headers(sid, headers)
        sock.sendall(c.data_to_send())
        while out["status"] is None:
            if pump() == [None]:
                break
        head_wanted = False
        if out["status"] != 200:
            while pump() != [None]:
                pass
            if state["ended"] == "end_stream":
                # The RST_STREAM a server sends after a response it ended early may
                # come in a later read.
                sock.settimeout(0.3)
                try:
                    while state["ended"] == "end_stream":
                        read_once()
                except TimeoutError:
                    pass
            if isinstance(out.get("body"), bytes):
                out["body"] = out["body"].decode()
            out["ended"] = state["ended"]
            return out
        expected = len(messages) + (1 if big else 0)
        for i, m in enumerate(messages):
            if i and pause_s:
                time.sleep(pause_s)
            send(ws.send(TextMessage(data=m)))
        if big:
            send(ws.send(BytesMessage(data=b"b" * big)))
        send(ws.send(Ping(payload=b"p")))
        partial: dict[type, Any] = {TextMessage: "", BytesMessage: b""}
        while len(out["replies"]) < expected or not out["pong"]:
            for event in pump():
                if event is None:
                    out["ended"] = state["ended"]
                    return out
                if isinstance(event, Message):
                    partial[type(event)] += event.data
                    if event.message_finished:
                        data = partial[type(event)]
                        partial[type(event)] = type(data)()
                        out["replies"].append(
                            data
                            if isinstance(data, str) and len(data) < 100
                            else f"{len(data)} {'chars' if isinstance(data, str) else 'bytes'}"
                        )
                elif isinstance(event, Pong):
                    out["pong"] = True
        if close_how == "reset":
            c.reset_stream(sid, 0x8)
            sock.sendall(c.data_to_send())
            out["ended"] = "reset sent"
            return out
        if close_how == "end_stream":
            # The client's END_STREAM alone ends nothing (Envoy does not half-close
            # an upgraded HTTP/1.1 upstream): the stream stays open.
            send(b"", end=True)
            sock.settimeout(0.5)
            try:
                pump()
            except TimeoutError:
                state["ended"] = "still open"
            sock.settimeout(10)
        else:
            send(ws.send(CloseConnection(code=1000)))
        while state["ended"] is None:
            for event in pump():
                if isinstance(event, CloseConnection):
                    # (the server closes its connection after its close frame: the
                    # stream ends from there)
                    out["close"] = event.code
        out["ended"] = state["ended"]
        return out
    finally:
        out["frames"] = frames.log
        sock.close()


def server_connect_protocol(port: int) -> int | None:
    """The ENABLE_CONNECT_PROTOCOL value of the server's first SETTINGS (None: absent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        c = _client(sock)
        while True:
            data = sock.recv(65536)
            if not data:
                return None
            events = c.receive_data(data)
            for ev in events:
                if isinstance(ev, h2.events.RemoteSettingsChanged):
                    s = ev.changed_settings.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL)
                    return None if s is None else s.new_value
    finally:
        sock.close()
