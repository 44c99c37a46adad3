"""Chunked transfer coding (RFC 9112 §7.1), sans-IO, for both directions.

:class:`ChunkedDecoder` frames a chunked body strictly and hands back where the data
is in the caller's buffer, so a body streams through a reused buffer without being
copied or kept; :func:`chunk_header` and :data:`LAST_CHUNK` write one.
"""

from __future__ import annotations

import re

from proxyd.errors import ProtocolError


class ChunkedDecoder:
    """A strict chunked-body framer over a receive buffer.

    ``feed(buf, start, end)`` consumes what it can from ``buf[start:end]`` and returns
    ``(pieces, new_start)``: ``pieces`` is a list of ``(offset, length)`` of chunk data
    inside ``buf``. ``done`` becomes True after the last chunk and its trailers;
    ``new_start`` then points at the first byte after the body (a pipelined request).
    Chunk extensions are ignored (one with a CR in it is refused); trailers are
    checked as field lines, then dropped.

    Stricter than Envoy in two ways that keep unchecked bytes out (RFC 9112 §7.1):
    chunk data longer than its size (Envoy skips ahead to the next line) and a bare LF
    after chunk data (Envoy accepts it) are refused with 400. A size of 16 hex digits or
    more is refused too (Envoy waits for that many bytes).
    """

    __slots__ = ("state", "remaining", "done", "line_limit")

    # states
    SIZE = 0
    DATA = 1
    DATA_CRLF = 2
    TRAILER = 3

    def __init__(self, line_limit: int = 4096) -> None:
        self.state = self.SIZE
        self.remaining = 0
        self.done = False
        self.line_limit = line_limit

    def feed(
        self, buf: bytes | bytearray, start: int, end: int
    ) -> tuple[list[tuple[int, int]], int]:
        pieces: list[tuple[int, int]] = []
        pos = start
        while pos < end and not self.done:
            state = self.state
            if state == self.DATA:
                n = min(self.remaining, end - pos)
                pieces.append((pos, n))
                pos += n
                self.remaining -= n
                if self.remaining == 0:
                    self.state = self.DATA_CRLF
            elif state == self.SIZE:
                nl = buf.find(b"\n", pos, end)
                if nl < 0:
                    if end - pos > self.line_limit:
                        raise ProtocolError("chunk size line too long", 400)
                    break
                if nl == pos or buf[nl - 1] != 13:
                    raise ProtocolError("bare LF after a chunk size", 400)
                line = bytes(buf[pos : nl - 1])
                pos = nl + 1
                size_part, _, ext = line.partition(b";")
                size_part = size_part.rstrip(b" \t")
                if (
                    not size_part
                    or len(size_part) > 15
                    or size_part.strip(b"0123456789abcdefABCDEF")
                    or b"\r" in ext
                ):
                    raise ProtocolError("invalid chunk size", 400)
                size = int(size_part, 16)
                if size == 0:
                    self.state = self.TRAILER
                else:
                    self.remaining = size
                    self.state = self.DATA
            elif state == self.DATA_CRLF:
                if end - pos < 2:
                    if buf[pos] != 13:
                        raise ProtocolError("missing CRLF after chunk data", 400)
                    break
                if buf[pos] != 13 or buf[pos + 1] != 10:
                    raise ProtocolError("missing CRLF after chunk data", 400)
                pos += 2
                self.state = self.SIZE
            else:  # TRAILER: field lines until an empty one; bare LF ends a line too
                nl = buf.find(b"\n", pos, end)
                if nl < 0:
                    if end - pos > self.line_limit:
                        raise ProtocolError("trailer line too long", 400)
                    break
                stop = nl - 1 if nl > pos and buf[nl - 1] == 13 else nl
                if stop == pos:
                    self.done = True
                elif _TRAILER_LINE.match(bytes(buf[pos:stop])) is None:
                    raise ProtocolError("invalid trailer line", 400)
                pos = nl + 1
        return pieces, pos


# A trailer field line: a token, a colon, a value without control characters but HTAB.
_TRAILER_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*\Z")


def chunk_header(n: int) -> bytes:
    return b"%x\r\n" % n


LAST_CHUNK = b"0\r\n\r\n"
