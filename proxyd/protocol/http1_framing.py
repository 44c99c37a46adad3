"""HTTP/1 message framing over one receive buffer, sans-IO, for both directions.

:class:`ReceiveBuffer` is the bytes a connection received and has not consumed yet. The
I/O layer asks it for room (:meth:`ReceiveBuffer.space`), receives into that view, and
says how much arrived (:meth:`ReceiveBuffer.commit`); the framing then takes heads
(:meth:`ReceiveBuffer.next_head`) and body pieces (a :class:`BodyReader`) out of it.
Nothing here waits or touches a socket, so every piece is tested with bytes, whole and
one byte at a time (tests/unit/test_http1_framing.py).

* A head ends at its empty line (CRLF CRLF, or the bare LF form Envoy also accepts, see
  :func:`proxyd.protocol.http1.find_head_end`); the search resumes where it stopped, so
  a head that arrives a byte at a time is scanned once. A head over ``max_head`` bytes
  raises ``ProtocolError`` with the status the peer gets (431 for a request).
* The buffer grows (up to ``max_head`` plus slack, for a large head) and compacts (moves
  unconsumed bytes to the front) only when it must, and can be dropped while the
  connection is idle (:meth:`ReceiveBuffer.release`): an idle keep-alive connection
  holds no buffer.
* Body pieces are views into the buffer, valid until the next call that may move bytes
  (``space``, ``compact``, ``release``); nothing is copied. What follows a complete
  message (a pipelined request) stays in the buffer for the next head.
"""

from __future__ import annotations

from collections.abc import Callable

from proxyd.errors import ProtocolError
from proxyd.protocol.http1 import HEAD_END, ChunkedDecoder, skip_leading_crlf

_EMPTY = bytearray()
_EMPTY_VIEW = memoryview(_EMPTY)

Allocator = Callable[[], tuple[bytearray, memoryview]]


def _allocate(size: int) -> Allocator:
    def allocate() -> tuple[bytearray, memoryview]:
        buf = bytearray(size)
        return buf, memoryview(buf)

    return allocate


class ReceiveBuffer:
    """Received, unconsumed bytes: ``buf[start:end]``."""

    __slots__ = (
        "buf",
        "view",
        "start",
        "end",
        "searched",
        "max_head",
        "too_large_status",
        "skip_crlf",
        "_allocate",
        "_free",
        "check_first_line",
        "check_line_start",
        "_line_checked",
    )

    def __init__(
        self,
        max_head: int,
        *,
        too_large_status: int = 431,
        skip_crlf: bool = True,
        size: int = 16 * 1024,
        allocate: Allocator | None = None,
        free: Callable[[bytearray, memoryview], None] | None = None,
        check_first_line: Callable[[bytes], object] | None = None,
        check_line_start: Callable[[bytes], object] | None = None,
    ) -> None:
        self.buf = _EMPTY
        self.view = _EMPTY_VIEW
        self.start = 0
        self.end = 0
        # How far the current head has been searched (a head is never scanned twice).
        self.searched = 0
        self.max_head = max_head
        self.too_large_status = too_large_status
        # A server ignores empty lines before a request line (RFC 9112 §2.2).
        self.skip_crlf = skip_crlf
        self._allocate = allocate or _allocate(size)
        self._free = free
        # Called with a head's first line (no line end) as soon as it is complete,
        # before the rest of the head: it raises ProtocolError for a line that can never
        # lead anywhere (an HTTP/0.9 request has no empty line to wait for).
        self.check_first_line = check_first_line
        # Called with the start of a first line whose end has not arrived yet.
        self.check_line_start = check_line_start
        self._line_checked = False

    # -- room for bytes ----------------------------------------------------------------

    @property
    def buffered(self) -> int:
        return self.end - self.start

    @property
    def holds_buffer(self) -> bool:
        return self.buf is not _EMPTY

    def space(self, limit: int = 0) -> memoryview:
        """A writable view where the next bytes go (at most ``limit`` when given),
        compacting or growing the buffer first if it is full."""
        if self.buf is _EMPTY:
            self.buf, self.view = self._allocate()
            self.start = self.end = self.searched = 0
        elif self.start == self.end:
            self.start = self.end = self.searched = 0
        elif self.end == len(self.buf):
            if self.start > 0:
                self.compact()
            else:
                self._grow()
        end = self.end
        if limit and len(self.buf) - end > limit:
            return self.view[end : end + limit]
        return self.view[end:]

    def commit(self, n: int) -> None:
        """``n`` bytes were written into the view :meth:`space` gave."""
        self.end += n

    def receive(self, recv_into: Callable[[memoryview], int]) -> int:
        """:meth:`space` and :meth:`commit` in one step, for the I/O layer's hot
        loops: ``recv_into`` (a non-blocking socket's) fills the room. Returns the
        count, 0 at end of stream or a reset, -1 when nothing is there yet."""
        end = self.end
        if end == self.start and end:
            # All consumed (the common case): start over at the front.
            self.start = self.end = self.searched = end = 0
            view = self.view
        elif end == len(self.buf):
            view = self.space()  # no buffer yet, or full: allocate, compact or grow
            end = self.end
        else:
            view = self.view[end:]
        try:
            n = recv_into(view)
        except BlockingIOError:
            return -1
        except (ConnectionResetError, ConnectionAbortedError):
            return 0
        self.end = end + n
        return n

    def feed(self, data: bytes) -> None:
        """Copy ``data`` in (tests and small writers; the I/O path uses space/commit)."""
        pos = 0
        while pos < len(data):
            room = self.space()
            n = min(len(room), len(data) - pos)
            room[:n] = data[pos : pos + n]
            self.commit(n)
            pos += n

    def compact(self) -> None:
        start = self.start
        if start == 0:
            return
        n = self.end - start
        self.buf[:n] = self.buf[start : self.end]
        self.searched = max(self.searched - start, 0)
        self.start = 0
        self.end = n

    def _grow(self) -> None:
        size = len(self.buf)
        limit = self.max_head + 8192
        if size >= limit:
            raise ProtocolError("headers too large", self.too_large_status)
        new = bytearray(min(size * 4, limit))
        new[:size] = self.buf
        if self._free is not None:
            self._free(self.buf, self.view)
        self.buf = new
        self.view = memoryview(new)

    def release(self) -> None:
        """Give the buffer back (only when nothing is buffered)."""
        if self.buf is not _EMPTY and self.start == self.end:
            if self._free is not None:
                self._free(self.buf, self.view)
            self.buf = _EMPTY
            self.view = _EMPTY_VIEW
            self.start = self.end = self.searched = 0

    # -- heads ------------------------------------------------------------------------

    def next_head(self) -> memoryview | None:
        """The next complete head (consumed), or None until more bytes arrive."""
        start = self.start
        end = self.end
        if start == end:
            return None
        buf = self.buf
        if self.skip_crlf and buf[start] == 13:
            start = self.start = skip_leading_crlf(buf, start, end)
            self.searched = max(self.searched, start)
            if start == end:
                return None
        # (find_head_end, inline: next_head runs for every head of both directions.)
        searched = self.searched - 3
        m = HEAD_END.search(buf, searched if searched > start else start, end)
        if m is None:
            if self.check_first_line is not None and not self._line_checked:
                nl = buf.find(b"\n", start, end)
                if nl >= 0:
                    self._line_checked = True
                    self.check_first_line(bytes(buf[start:nl]).rstrip(b"\r"))
                elif self.check_line_start is not None:
                    self.check_line_start(bytes(buf[start:end]))
            self.searched = end
            if end - start > self.max_head:
                raise ProtocolError("headers too large", self.too_large_status)
            return None
        he = m.end()
        if he - start > self.max_head:
            raise ProtocolError("headers too large", self.too_large_status)
        self.start = self.searched = he
        self._line_checked = False
        return self.view[start:he]

    @property
    def head_started(self) -> bool:
        """Bytes of a head (other than leading empty lines) have arrived."""
        start = self.start
        if start == self.end:
            return False
        if self.skip_crlf and self.buf[start] == 13:
            return skip_leading_crlf(self.buf, start, self.end) < self.end
        return True


class BodyReader:
    """One message body's framing: ``read(rb)`` takes the body pieces buffered in
    ``rb`` (views), ``done`` once the body is complete."""

    __slots__ = ("left", "decoder", "until_close", "done")

    def __init__(self, length: int = 0, chunked: bool = False, until_close: bool = False):
        self.left = length if length > 0 else 0
        self.decoder = ChunkedDecoder() if chunked else None
        self.until_close = until_close
        self.done = not chunked and not until_close and self.left == 0

    def read(self, rb: ReceiveBuffer, limit: int = 0) -> list[memoryview]:
        """Body pieces in ``rb`` (at most ``limit`` bytes of a length-framed body when
        given); raises ProtocolError on bad chunk framing (status 400)."""
        if self.done:
            return []
        start = rb.start
        end = rb.end
        if self.decoder is None:
            n = end - start
            if not self.until_close:
                n = min(n, self.left)
                self.left -= n
                if self.left == 0:
                    self.done = True
            if limit and n > limit:
                if not self.until_close:
                    self.left += n - limit
                    self.done = False
                n = limit
            if not n:
                return []
            rb.start = start + n
            return [rb.view[start : start + n]]
        dec = self.decoder
        pieces, pos = dec.feed(rb.buf, start, end)
        rb.start = pos
        if dec.done:
            self.done = True
        view = rb.view
        return [view[off : off + k] for off, k in pieces]

    def end_of_stream(self) -> None:
        """The peer closed: complete for an until-close body, else truncated."""
        if self.until_close:
            self.done = True
        elif not self.done:
            raise ProtocolError("message body truncated", 400)
