"""A raw HTTP/2 client for abuse tests: frames built with hyperframe and hpack and sent
as bytes, whatever the protocol's rules say, and what the server sent back read as
frames (not through a state machine that would stop at the first oddity)."""

from __future__ import annotations

import fcntl
import socket
import termios
import time
from typing import Any

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def request_headers(path: str, method: str = "GET", extra: list | None = None) -> list:
    return [(":method", method), (":path", path), (":scheme", "http"),
            (":authority", "x"), *(extra or [])]  # fmt: skip


class RawH2:
    """One connection; ``frames`` holds what came back, as (type name, stream id, code
    or :status or flags)."""

    def __init__(self, port: int, window: int = 0, rcvbuf: int = 0) -> None:
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buf = b""
        self.frames: list[tuple[str, int, Any]] = []
        self.closed = False
        settings = SettingsFrame(0)
        if window:
            settings.settings[SettingsFrame.INITIAL_WINDOW_SIZE] = window
        out = PREFACE + settings.serialize()
        if window:
            out += WindowUpdateFrame(0, window_increment=window).serialize()
        self.send(out)

    # -- frames out -----------------------------------------------------------------

    def send(self, data: bytes) -> bool:
        """False when the server closed the connection under the write."""
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True
            return False
        return True

    def block(self, headers: list) -> bytes:
        return self.encoder.encode(headers)

    def headers(self, sid: int, headers: list, end_stream: bool = True) -> bytes:
        f = HeadersFrame(sid, self.block(headers))
        f.flags.add("END_HEADERS")
        if end_stream:
            f.flags.add("END_STREAM")
        return f.serialize()

    @staticmethod
    def headers_split(sid: int, block: bytes, first: int, step: int, end: bool = True) -> bytes:
        """A HEADERS frame with the first ``first`` bytes of ``block``, then
        CONTINUATION frames of ``step`` bytes (the last with END_HEADERS when ``end``)."""
        out = HeadersFrame(sid, block[:first])
        out.flags.add("END_STREAM")
        rest = block[first:]
        if not rest and end:
            out.flags.add("END_HEADERS")
        parts = [out.serialize()]
        while rest and step:
            c = ContinuationFrame(sid, rest[:step])
            rest = rest[step:]
            if not rest and end:
                c.flags.add("END_HEADERS")
            parts.append(c.serialize())
        return b"".join(parts)

    @staticmethod
    def data(sid: int, payload: bytes = b"", end_stream: bool = False) -> bytes:
        f = DataFrame(sid, payload)
        if end_stream:
            f.flags.add("END_STREAM")
        return f.serialize()

    @staticmethod
    def ping(n: int) -> bytes:
        return PingFrame(0, opaque_data=n.to_bytes(8, "big")).serialize()

    @staticmethod
    def priority(sid: int, depends_on: int = 0) -> bytes:
        return PriorityFrame(sid, depends_on=depends_on, stream_weight=16).serialize()

    @staticmethod
    def window_update(sid: int, n: int = 1) -> bytes:
        return WindowUpdateFrame(sid, window_increment=n).serialize()

    @staticmethod
    def settings() -> bytes:
        return SettingsFrame(0).serialize()

    @staticmethod
    def rst(sid: int, code: int = 8) -> bytes:
        return RstStreamFrame(sid, error_code=code).serialize()

    def wait_stalled(self, timeout: float = 10.0) -> None:
        """Wait until the bytes waiting unread in this socket stop growing (for 0.3 s):
        the server's writes to it are blocked."""
        last, since = -1, time.monotonic()
        deadline = since + timeout
        while time.monotonic() < deadline:
            waiting = int.from_bytes(
                fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, b"\0\0\0\0"), "little"
            )
            now = time.monotonic()
            if waiting != last:
                last, since = waiting, now
            elif waiting and now - since >= 0.3:
                return
            time.sleep(0.05)
        raise TimeoutError("the server kept writing")

    # -- frames in ------------------------------------------------------------------

    def _parse(self) -> None:
        while len(self.buf) >= 9:
            f, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
            if len(self.buf) < 9 + length:
                return
            f.parse_body(memoryview(self.buf[9 : 9 + length]))
            self.buf = self.buf[9 + length :]
            if isinstance(f, HeadersFrame):
                try:
                    hdrs = dict(self.decoder.decode(f.data, raw=True))
                except Exception:  # noqa: BLE001 - a block split over CONTINUATION
                    hdrs = {}
                status = hdrs.get(b":status", b"").decode()
                self.frames.append(("HEADERS", f.stream_id, status))
            elif isinstance(f, RstStreamFrame):
                self.frames.append(("RST_STREAM", f.stream_id, f.error_code))
            elif isinstance(f, GoAwayFrame):
                self.frames.append(("GOAWAY", f.last_stream_id, f.error_code))
            elif isinstance(f, DataFrame):
                if "END_STREAM" in f.flags:
                    self.frames.append(("DATA", f.stream_id, "END_STREAM"))
            elif isinstance(f, PingFrame) and "ACK" in f.flags:
                self.frames.append(("PING_ACK", 0, ""))

    def read_until_closed(self, wait_s: float = 5.0) -> bool:
        """Read until the server closes (True) or ``wait_s`` pass with the connection
        still open (False)."""
        deadline = time.monotonic() + wait_s
        self.sock.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if not data:
                self.closed = True
                return True
            self.buf += data
            self._parse()
        return False

    def outcome(self, wait_s: float = 5.0) -> dict[str, Any]:
        """How the connection ended: closed or not, the GOAWAY codes, the streams reset
        and their codes, the statuses answered (PINGs acked are left out: how many got
        out before the end is timing)."""
        closed = self.read_until_closed(wait_s)
        self.close()
        return {
            "closed": closed,
            "goaway": [code for t, _, code in self.frames if t == "GOAWAY"],
            "reset": sorted({(sid, code) for t, sid, code in self.frames if t == "RST_STREAM"}),
            "statuses": sorted({(sid, s) for t, sid, s in self.frames if t == "HEADERS" and s}),
        }

    def close(self) -> None:
        self.sock.close()
