"""The listening sockets the master owns: one SO_REUSEPORT socket per listener per
worker slot, bound once and kept open for the life of the listener.

Workers get duplicates of their slot's sockets (SCM_RIGHTS); the kernel spreads new
connections over the sockets of a port, so a worker that dies leaves its accept queue
with the master's copy, and its replacement accepts from the same queue.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from proxyd.epoch import Listener

BACKLOG = 1024


class BindError(Exception):
    """A listener's address could not be bound; the message names it."""


@dataclass
class _Bound:
    address: str
    port: int
    sockets: list[socket.socket]


def bind_reuseport(address: str, port: int) -> socket.socket:
    """A non-blocking listening TCP socket with SO_REUSEPORT (backlog 1024)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # Envoy's default (ipv4_compat false): "::" means IPv6 only.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class ListenerSockets:
    """Listener name → one bound socket per worker slot."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self._bound: dict[str, _Bound] = {}

    def names(self) -> tuple[str, ...]:
        return tuple(self._bound)

    def __contains__(self, name: str) -> bool:
        return name in self._bound

    def address_of(self, name: str) -> tuple[str, int]:
        b = self._bound[name]
        return b.address, b.port

    def bind(self, listener: Listener) -> None:
        """Bind ``concurrency`` sockets for ``listener``; all or none."""
        socks: list[socket.socket] = []
        port = listener.port
        try:
            for _ in range(self.concurrency):
                s = bind_reuseport(listener.address, port)
                socks.append(s)
                port = s.getsockname()[1]  # port 0: every slot shares the first's port
        except OSError as exc:
            for s in socks:
                s.close()
            raise BindError(
                f"cannot bind listener '{listener.name}' to "
                f"{listener.address}:{listener.port}: {exc.strerror or exc}"
            ) from exc
        self._bound[listener.name] = _Bound(listener.address, port, socks)

    def bind_all(self, listeners: tuple[Listener, ...] | list[Listener]) -> list[str]:
        """Bind every listener not bound yet; all or none. Returns the names bound."""
        added: list[str] = []
        try:
            for listener in listeners:
                if listener.name not in self._bound:
                    self.bind(listener)
                    added.append(listener.name)
        except BindError:
            for name in added:
                self.close(name)
            raise
        return added

    def fds_for(self, slot: int, names: tuple[str, ...] | list[str]) -> list[int]:
        return [self._bound[name].sockets[slot].fileno() for name in names]

    def close(self, name: str) -> None:
        bound = self._bound.pop(name, None)
        if bound is not None:
            for s in bound.sockets:
                s.close()

    def close_all(self) -> None:
        for name in list(self._bound):
            self.close(name)
