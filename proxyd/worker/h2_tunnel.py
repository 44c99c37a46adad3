"""A tunnel on one downstream HTTP/2 stream: WebSocket over extended CONNECT (RFC 8441)
and plain CONNECT (RFC 9113 §8.5).

The router (:meth:`proxyd.worker.router.Exchange._tunnel_bytes`) hands an HTTP/2
stream's tunnel here once the upstream took it: the upstream's 101 (or a forwarded
CONNECT's 2xx) goes out by :func:`send_upgrade_response`, a terminated CONNECT's 200 by
:func:`send_connect_established`, then :func:`run` moves the bytes between the stream's
DATA frames and the upstream socket, each way with the stream's flow control: what the
client sent is acknowledged (WINDOW_UPDATE) once written upstream, and nothing more is
read from the upstream before its last piece went out within the client's windows.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from proxyd.protocol.h2_translate import response_headers
from proxyd.protocol.http1_headers import http_date, response_head
from proxyd.worker import io
from proxyd.worker.stream import DownstreamReset

if TYPE_CHECKING:
    from proxyd.protocol.http1 import ResponseHead
    from proxyd.worker.h2_stream import H2Stream

CONNECT_ERROR = 0xA  # RFC 9113 §7
READ_SIZE = 16384


async def send_upgrade_response(s: H2Stream, r: ResponseHead) -> None:
    """The upstream's 101 to the upgrade an extended CONNECT stood for, or its 2xx to a
    forwarded CONNECT: a 101 becomes a 200 (Envoy's transformUpgradeResponseFromH1toH2),
    without the connection and upgrade lines, and with no upstream service time."""
    stream = s.stream
    rp = stream.route_plan
    if rp is not None and rp.mutations is not None:
        r, _ = rp.mutations.on_response(r, stream, s, -2)
    stream.response_started = True
    head = response_head(r, s.plan.server, -2, False, False, stream.response_added)
    headers = response_headers(head)
    if r.status == 101:
        headers[0] = (b":status", b"200")
    await s._send_head(headers, False)


async def send_connect_established(s: H2Stream) -> None:
    """The 200 of a CONNECT the route terminates (connect_config)."""
    s.stream.response_started = True
    server = s.plan.server  # "server: name\r\n"
    name = server[server.find(b":") + 1 :].strip()
    await s._send_head([(b":status", b"200"), (b"server", name), (b"date", http_date())], False)


async def run(s: H2Stream, sock: Any, first: bytes, touch: Callable[[], None]) -> None:
    """Bytes both ways between ``s``'s DATA frames and the upstream socket ``sock``
    (``first``: what the upstream sent after its answer), until either side ends it,
    as Envoy ends it: the upstream's close resets the stream with CONNECT_ERROR, but
    ends it (END_STREAM) for a CONNECT terminated here (a TCP half-close); the client's
    END_STREAM half-closes the upstream for a CONNECT and ends nothing for an upgrade
    (websocket); the client's reset closes the upstream. ``touch`` is called as bytes
    move (the stream idle timeout starts over)."""
    async with trio.open_nursery() as nursery:
        cancel = nursery.cancel_scope
        nursery.start_soon(_from_upstream, s, sock, first, cancel, touch)
        nursery.start_soon(_to_upstream, s, sock, cancel, touch)


async def _from_upstream(
    s: H2Stream, sock: Any, first: bytes, cancel: trio.CancelScope, touch: Callable[[], None]
) -> None:
    buf = memoryview(bytearray(READ_SIZE))
    try:
        if first:
            await s.send_data([first], False)
        while True:
            n = await io.recv_into(sock, buf)
            if n == 0:
                if s.ended_out or s.session.broken:
                    break
                rp = s.stream.route_plan
                if rp is not None and rp.connect_terminate:
                    await s.send_data([], True)  # a half-close: END_STREAM
                    if not s.body_ended:
                        return  # the client's direction may go on
                else:
                    s._reset(CONNECT_ERROR)
                    await s.session.flush()
                break
            # (send_data copies what it frames: the buffer is free again after it)
            await s.send_data([buf[:n]], False)
            touch()
    except (OSError, DownstreamReset):
        pass  # either side is gone: the tunnel ends
    cancel.cancel()


async def _to_upstream(
    s: H2Stream, sock: Any, cancel: trio.CancelScope, touch: Callable[[], None]
) -> None:
    session = s.session
    stream = s.stream
    try:
        while True:
            if s.unacked:  # what went upstream: the client may send more
                session._ack(s.sid, s.unacked)
                s.unacked = 0
                await session.flush()
            while not s.body and not s.body_ended and not s.peer_reset:
                s.body_wake = wake = trio.Event()
                await wake.wait()
            if s.peer_reset:
                break
            if not s.body:
                # END_STREAM: a CONNECT's upstream is half-closed; an upgrade's is not
                # (as Envoy). The other direction carries on.
                h = stream.head
                if h is not None and h.upgrade == "connect":
                    sock.shutdown(socket.SHUT_WR)
                return
            pieces, n = s.body, s.body_len
            s.body = []
            s.body_len = 0
            s.unacked += n
            stream.bytes_received += n
            for p in pieces:
                await io.send_all(sock, p)
            touch()
    except (OSError, DownstreamReset):
        pass
    cancel.cancel()
