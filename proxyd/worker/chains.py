"""Choosing a filter chain for a new connection on a listener with several chains or
match criteria (the listener's TLS inspector, then Envoy's filter chain match).

The client's first bytes are peeked, not read, so the chosen chain's TLS handshake (or
HTTP codec) sees them all. While a ClientHello is incomplete the socket's
``SO_RCVLOWAT`` is raised to the byte count still needed, so the wait for readability
ends when they are there (a peek leaves the bytes in the socket: without it the wait
would end at once, again and again). The wait is bounded by the listener's
``listener_filters_timeout``; then the connection is closed
(``downstream_pre_cx_timeout``), or with ``continue_on_listener_filters_timeout`` the
chain is chosen without the SNI, as Envoy does.

A listener whose single chain matches every connection has no chooser: its
connections never come here.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import trio

from proxyd.protocol.chain_match import (
    MAX_CLIENT_HELLO,
    NOT_TLS,
    ChainSelector,
    ClientHelloTooLarge,
    Connection,
    Inspected,
    inspect_client_hello,
)
from proxyd.worker import io

if TYPE_CHECKING:
    from proxyd.worker.plan import ListenerPlan
    from proxyd.worker.stats import NamedStats
    from proxyd.worker.tcp_proxy import TcpListenerPlan


def chain_key(listener_name: str, index: int) -> str:
    """The worker's plan key for a listener's chain (beside the listener's own name)."""
    return f"{listener_name}\x00{index}"


class ChainChooser:
    def __init__(
        self,
        selector: ChainSelector,
        plans: list[ListenerPlan | TcpListenerPlan],
        timeout: float,
        continue_on_timeout: bool,
        listener_stats: NamedStats,
        inspector_stats: NamedStats,
        inspect: bool = True,
    ) -> None:
        self.selector = selector
        # The listener has a TLS inspector (configured, or added for a chain that
        # matches on the ClientHello): else the first bytes are not looked at.
        self.inspect = inspect
        self.plans = plans
        self.timeout = timeout
        self.continue_on_timeout = continue_on_timeout
        self.stats = listener_stats
        self.inspector = inspector_stats
        listener_stats.inc("no_filter_chain_match", 0)
        listener_stats.inc("downstream_pre_cx_timeout", 0)

    async def choose(self, sock: socket.socket) -> ListenerPlan | TcpListenerPlan | None:
        """The chain's plan for the connection on ``sock``, or None to close it."""
        found = NOT_TLS
        if self.inspect:
            seen: Inspected | None = None
            with trio.move_on_after(self.timeout):
                seen = await self._inspect(sock)
                if seen is None:
                    return None  # closed (or too large a ClientHello)
            if seen is not None:
                found = seen
            elif not self.continue_on_timeout:  # the listener filter timeout
                self.stats.inc("downstream_pre_cx_timeout")
                return None
        try:
            local = sock.getsockname()
            peer = sock.getpeername()
        except OSError:
            return None  # the client is gone
        if not isinstance(local, tuple):  # a pipe listener: no addresses to match
            local, peer = ("", 0), ("", 0)
        index = self.selector.select(Connection(local[0], local[1], peer[0], peer[1], found))
        if index is None:
            self.stats.inc("no_filter_chain_match")
            return None
        return self.plans[index]

    async def _inspect(self, sock: socket.socket) -> Inspected | None:
        stats = self.inspector
        lowat = 1
        seen = -1
        try:
            while True:
                try:
                    data = sock.recv(MAX_CLIENT_HELLO, socket.MSG_PEEK)
                except BlockingIOError:
                    data = None
                except OSError:
                    return None
                if data is not None:
                    if not data or len(data) == seen:
                        return None  # the peer closed (before, or within, a ClientHello)
                    seen = len(data)
                    try:
                        result = inspect_client_hello(data)
                    except ClientHelloTooLarge:
                        stats.inc("client_hello_too_large")
                        return None
                    if isinstance(result, Inspected):
                        self._count(result)
                        return result
                    if result != lowat:
                        lowat = result
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
                await io.wait_readable(sock)
        finally:
            if lowat != 1 and sock.fileno() >= 0:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)

    def _count(self, found: Inspected) -> None:
        stats = self.inspector
        if not found.tls:
            stats.inc("tls_not_found")
            return
        stats.inc("tls_found")
        stats.inc("sni_found" if found.sni else "sni_not_found")
        stats.inc("alpn_found" if found.alpn else "alpn_not_found")
