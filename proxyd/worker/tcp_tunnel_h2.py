"""TcpProxy ``tunneling_config`` to a cluster that speaks HTTP/2: the connection's bytes
as one stream of a multiplexed HTTP/2 connection to the host (the cluster's
:class:`proxyd.worker.h2_pool.H2Pool`), as Envoy tunnels over HTTP/2.

The stream opens with ``CONNECT`` (``:authority`` the hostname) or, with ``use_post``,
``POST`` (``:scheme http``, ``:path`` the post_path), plus the ``headers_to_add``; a 2xx
response opens the tunnel, anything else (``tunnel_response:<status>``) or a reset fails
the attempt as for HTTP/1.1 (:mod:`proxyd.worker.tcp_tunnel`). Then the client's bytes go
up as DATA within the stream's flow control (its end of stream as END_STREAM) and the
upstream's DATA come down, acknowledged once the client took them; the upstream's end
of stream half-closes the client, a reset resets it.
"""

from __future__ import annotations

import socket
from typing import Any

import h2.exceptions
import trio

from proxyd.worker import io
from proxyd.worker.h2_pool import H2Conn, H2Pool, StreamGone, UpStream
from proxyd.worker.tcp_tunnel import TunnelFailed, TunnelPlan


class H2Tunnel:
    """One TCP proxy connection's HTTP/2 stream."""

    __slots__ = ("conn", "up")

    def __init__(self, conn: H2Conn, up: UpStream) -> None:
        self.conn = conn
        self.up = up

    async def close(self) -> None:
        """Done: the stream is reset unless it ended both ways, its slot freed."""
        self.conn.finish(self.up, reset=True)
        if not self.conn.closed:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                try:
                    await self.conn.flush()
                except StreamGone:
                    pass  # the connection broke: its reader ends it


async def open_h2_tunnel(pool: H2Pool, host: Any, tunnel: TunnelPlan, rec: Any) -> H2Tunnel:
    """The tunnel's stream on a connection to ``host``; raises TunnelFailed (the
    transport failure reason) or the pool's ConnectFailure / Overflow."""
    conn = await pool.acquire_stream(host)
    try:
        up = conn.open_stream(tunnel.h2_headers(rec), False)
    except StreamGone:
        pool.stream_done(conn)
        raise TunnelFailed(None) from None
    t = H2Tunnel(conn, up)
    try:
        await conn.flush()
        while up.headers is None:
            if up.gone:
                raise TunnelFailed(None)
            await up.wait()
    except (StreamGone, TunnelFailed):
        await t.close()
        raise TunnelFailed(None) from None
    status = next((v for n, v in up.headers if n == b":status"), b"0")
    if not status.startswith(b"2"):
        await t.close()
        raise TunnelFailed(f"tunnel_response:{status.decode('latin-1')}")
    return t


async def client_to_stream(t: H2Tunnel, sock: Any, chunk: int, count: Any) -> None:
    """The client's bytes as DATA; its end of stream as END_STREAM. ``count(n)`` is
    told what was read. Raises ConnectionError when either side broke."""
    conn, up = t.conn, t.up
    c = conn.h2
    while True:
        try:
            data = sock.recv(chunk)
        except BlockingIOError:
            await io.wait_readable(sock)
            continue
        except OSError:
            raise ConnectionResetError("downstream") from None
        try:
            if not data:
                c.end_stream(up.sid)
                up.closed_out = True
                await conn.flush()
                return
            count(len(data))
            view = memoryview(data)
            while view:
                n = await conn.window(up, len(view))
                c.send_data(up.sid, bytes(view[:n]))
                view = view[n:]
                await conn.flush()
        except (StreamGone, h2.exceptions.ProtocolError):
            raise ConnectionAbortedError("upstream") from None


async def stream_to_client(t: H2Tunnel, sock: Any, count: Any) -> None:
    """The upstream's DATA to the client (acknowledged once sent); its END_STREAM
    half-closes the client. Raises ConnectionAbortedError on an upstream reset,
    ConnectionResetError when the client broke."""
    conn, up = t.conn, t.up
    while True:
        if up.data:
            pieces, n = up.data, up.data_len
            up.data, up.data_len = [], 0
            data = b"".join(pieces)
            if data:
                try:
                    await io.send_all(sock, data)
                except OSError:
                    raise ConnectionResetError("downstream") from None
                count(len(data))
            conn.ack(up, n)
            try:
                await conn.flush()
            except StreamGone:
                raise ConnectionAbortedError("upstream") from None
            continue
        if up.ended:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                raise ConnectionResetError("downstream") from None
            return
        if up.gone:
            raise ConnectionAbortedError("upstream")
        await up.wait()
