"""The request half of an :class:`proxyd.worker.router.Exchange`: the request head and
body going upstream.

:func:`send_request` writes the head and the body bytes already received in one write;
:func:`pump` streams the rest (content-length, or chunked and re-framed) in a task of
its own while the router waits for the response, so an upstream that answers early is
heard. Nothing is read from the client before what was read has been written upstream,
and never more than the listener's buffer limit at a time.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import trio

from proxyd.errors import ProtocolError
from proxyd.protocol.http1 import LAST_CHUNK, ChunkedDecoder, chunk_header
from proxyd.worker import io
from proxyd.worker.deadlines import INF, REQUEST

if TYPE_CHECKING:
    from proxyd.worker.downstream import DownstreamConnection
    from proxyd.worker.router import Exchange
    from proxyd.worker.upstream import UpstreamConnection

CRLF = b"\r\n"


class DownstreamGone(Exception):
    """The client closed or reset its connection while the request was in flight."""


def framed(buf: memoryview, pieces: list[tuple[int, int]], out: list) -> None:
    for off, n in pieces:
        out.append(chunk_header(n))
        out.append(buf[off : off + n])
        out.append(CRLF)


async def send_request(ex: Exchange, conn: UpstreamConnection) -> None:
    """The head and the body bytes already received, in one write."""
    h = ex.h
    if not h.has_body:
        await io.send_all(conn.sock, ex.head)
        return
    dc = ex.dc
    start = dc.start
    end = dc.end
    if h.content_length > 0:
        take = min(end - start, h.content_length)
        dc.start = start + take
        dc.bytes_received += take
        ex.body_left = h.content_length - take
        ex.body_done = ex.body_left == 0
        if ex.body_done:
            ex.arm_route()
        ex.body_sent = take > 0
        if take:
            await io.send_parts(conn.sock, [ex.head, dc.view[start : start + take]])
        else:
            await io.send_all(conn.sock, ex.head)
        return
    dec = ex.decoder = ChunkedDecoder()
    pieces, pos = dec.feed(dc.buf, start, end)
    parts: list = [ex.head]
    framed(dc.view, pieces, parts)
    for _, n in pieces:
        dc.bytes_received += n
    if dec.done:
        parts.append(LAST_CHUNK)
        ex.body_done = True
        ex.arm_route()
    dc.start = pos
    ex.body_sent = bool(pieces)
    await io.send_parts(conn.sock, parts)


async def pump(ex: Exchange, conn: UpstreamConnection, cancel: trio.CancelScope) -> None:
    try:
        if ex.decoder is None:
            await _pump_length(ex, conn)
        else:
            await _pump_chunked(ex, conn, ex.decoder)
    except DownstreamGone:
        ex.pump_error = "DC"
        cancel.cancel()
    except ProtocolError:
        ex.pump_error = "DPE"
        cancel.cancel()
    except trio.ClosedResourceError:
        ex.pump_error = "TIMEOUT"
        cancel.cancel()
    except OSError:
        # The upstream stopped reading; its response (or its close) tells the rest.
        ex.pump_error = "UP"
        return
    ex.body_done = True
    ex.arm_route()


async def _recv_downstream(ex: Exchange, dc: DownstreamConnection, at: int) -> int:
    # Never more in flight than the listener's per_connection_buffer_limit_bytes.
    n = await io.recv_into(dc.sock, dc.view[at : at + ex.plan.buffer_limit])
    if n == 0:
        raise DownstreamGone()
    stream_idle = ex.plan.stream_idle
    if stream_idle != INF and dc.deadline_kind == REQUEST:
        # Activity: the stream idle timer starts over (request_timeout does not).
        dc.deadline = min(ex.request_deadline, time.monotonic() + stream_idle)
    return n


async def _pump_length(ex: Exchange, conn: UpstreamConnection) -> None:
    dc = ex.dc
    left = ex.body_left
    usock = conn.sock
    while left:
        n = await _recv_downstream(ex, dc, 0)
        take = n if n < left else left
        dc.bytes_received += take
        await io.send_all(usock, dc.view[:take])
        left -= take
        ex.body_left = left
        dc.start = take
        dc.end = n


async def _pump_chunked(ex: Exchange, conn: UpstreamConnection, dec: ChunkedDecoder) -> None:
    dc = ex.dc
    usock = conn.sock
    while not dec.done:
        # Keep an unfinished chunk-size line, move it to the front.
        start, end = dc.start, dc.end
        if start < end:
            dc.buf[: end - start] = dc.buf[start:end]
        end -= start
        if end >= len(dc.buf):
            raise ProtocolError("chunk line too long", 400)
        n = await _recv_downstream(ex, dc, end)
        end += n
        pieces, pos = dec.feed(dc.buf, 0, end)
        parts: list = []
        framed(dc.view, pieces, parts)
        for _, k in pieces:
            dc.bytes_received += k
        if dec.done:
            parts.append(LAST_CHUNK)
        dc.start = pos
        dc.end = end
        if parts:
            await io.send_parts(usock, parts)
