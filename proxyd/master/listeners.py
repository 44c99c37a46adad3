"""The listening sockets the master owns: one SO_REUSEPORT socket per listener per
worker slot, bound once and kept open for the life of the listener.

Workers get duplicates of their slot's sockets (SCM_RIGHTS); the kernel spreads new
connections over the sockets of a port, so a worker that dies leaves its accept queue
with the master's copy, and its replacement accepts from the same queue.

Sockets can also come from outside, *offered* before the listeners are bound: the old
master's sockets on a hot restart (all slots of a listener) and systemd's on socket
activation (one socket, shared by every slot). :meth:`ListenerSockets.bind` takes an
offered socket whose name matches the listener, or else whose address and port match,
before it binds anything new.

A pipe (Unix socket) listener has one socket, shared by every slot (SO_REUSEPORT does
not spread a path over several sockets); :func:`proxyd.pipes.bind_listening` binds it
as Envoy does, replacing a stale socket file. A hot restart passes it on like a TCP
socket, and its file stays in place.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from proxyd import pipes
from proxyd.epoch import Listener


def _somaxconn() -> int:
    """net.core.somaxconn: Envoy's listen backlog when tcp_backlog_size is not set."""
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return socket.SOMAXCONN  # not Linux, or no /proc: the C library's value


BACKLOG = _somaxconn()


class BindError(Exception):
    """A listener's address could not be bound; the message names it."""


@dataclass
class _Bound:
    address: str
    port: int
    sockets: list[socket.socket]
    # One socket for every slot (systemd gave one, or a pipe); else one per slot.
    shared: bool = False
    pipe: bool = False
    # The listener's socket settings they were bound with (see settings_of).
    settings: tuple = ()


@dataclass
class Offered:
    """Sockets from outside for one listener: a hot-restart parent's or systemd's."""

    name: str
    address: str
    port: int
    sockets: list[socket.socket]
    shared: bool
    origin: str  # "hot-restart" or "systemd"

    @property
    def pipe(self) -> bool:
        """A Unix socket (a pipe listener's, from a hot-restart parent)."""
        return bool(self.sockets) and self.sockets[0].family == socket.AF_UNIX


@dataclass(frozen=True, slots=True)
class Exported:
    """One listener's sockets as a successor gets them (see :meth:`ListenerSockets.export`)."""

    name: str
    address: str
    port: int
    fds: tuple[int, ...]
    shared: bool


def bind_reuseport(address: str, port: int, listener: Listener | None = None) -> socket.socket:
    """A non-blocking listening TCP socket with SO_REUSEPORT (backlog somaxconn), with the
    listener's socket settings (``freebind``, ``tcp_backlog_size``, ``socket_options``
    in their states, as Envoy applies them) when one is given."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # Envoy's default (ipv4_compat false): "::" means IPv6 only.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if listener is not None and listener.freebind:
            level = socket.IPPROTO_IPV6 if family == socket.AF_INET6 else socket.IPPROTO_IP
            sock.setsockopt(
                level, IPV6_FREEBIND if level == socket.IPPROTO_IPV6 else IP_FREEBIND, 1
            )
        set_options(sock, listener, "STATE_PREBIND")
        sock.bind((address, port))
        set_options(sock, listener, "STATE_BOUND")
        sock.listen(backlog_of(listener))
        set_options(sock, listener, "STATE_LISTENING")
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# Linux's values (the socket module has no names for them).
IP_FREEBIND = 15
IPV6_FREEBIND = 78


def settings_of(listener: Listener) -> tuple:
    return (listener.freebind, listener.tcp_backlog_size, listener.socket_options)


def backlog_of(listener: Listener | None) -> int:
    return listener.tcp_backlog_size if listener and listener.tcp_backlog_size else BACKLOG


def set_options(sock: socket.socket, listener: Listener | None, state: str | None) -> None:
    """The listener's ``socket_options`` for ``state`` (None: all of them)."""
    if listener is None:
        return
    for opt in listener.socket_options:
        if state is None or opt.state == state:
            value = opt.buf_value if opt.is_buf else opt.int_value
            sock.setsockopt(opt.level, opt.name, value)


def refresh_settings(sock: socket.socket, listener: Listener) -> None:
    """A socket bound before (a hot-restart parent's): the listener's options and
    backlog as they are configured now (those that only matter before bind, such as
    freebind, have done their part)."""
    set_options(sock, listener, None)
    sock.listen(backlog_of(listener))


class ListenerSockets:
    """Listener name → one bound socket per worker slot."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self._bound: dict[str, _Bound] = {}
        self._offered: list[Offered] = []

    def names(self) -> tuple[str, ...]:
        return tuple(self._bound)

    def __contains__(self, name: str) -> bool:
        return name in self._bound

    def inherited(self, name: str) -> bool:
        """The listener serves a socket systemd passed (its address is the unit's)."""
        b = self._bound[name]
        return b.shared and not b.pipe

    def address_of(self, name: str) -> tuple[str, int]:
        b = self._bound[name]
        return b.address, b.port

    def offer(self, offered: Offered) -> None:
        """Sockets a listener should take instead of binding new ones."""
        self._offered.append(offered)

    def _take_offered(self, listener: Listener) -> Offered | None:
        def same_address(o: Offered) -> bool:
            return (
                o.pipe == listener.pipe
                and o.address == listener.address
                and listener.port in (0, o.port)
            )

        # By name: systemd's sockets (shared) whatever their address, which the .socket
        # unit decides ("[::]:80" for a listener written "0.0.0.0:80"), also when a hot
        # restart passes them on; a hot-restart parent's own only at the same address.
        match = next(
            (
                o for o in self._offered
                if o.name == listener.name and ((o.shared and not o.pipe) or same_address(o))
            ),
            None,
        )  # fmt: skip
        if match is None:
            match = next((o for o in self._offered if same_address(o)), None)
        if match is not None:
            self._offered.remove(match)
        return match

    def close_offered(self, origin: str) -> list[str]:
        """Close the offered sockets from ``origin`` no listener took; their names."""
        left = [o for o in self._offered if o.origin == origin]
        self._offered = [o for o in self._offered if o.origin != origin]
        for o in left:
            for s in o.sockets:
                s.close()
        return [o.name for o in left]

    def offered(self) -> list[Offered]:
        return list(self._offered)

    def bind(self, listener: Listener) -> None:
        """Bind ``concurrency`` sockets for ``listener`` (or take offered ones); all or none."""
        taken = self._take_offered(listener)
        if listener.pipe:
            self._bind_pipe(listener, taken)
            return
        socks: list[socket.socket] = []
        if taken is not None:
            if taken.shared:
                self._bound[listener.name] = _Bound(taken.address, taken.port, taken.sockets, True)
                return
            # A hot restart with more workers than before: the new slots get new sockets
            # in the same SO_REUSEPORT group. With fewer, the extra sockets stay open
            # (their queues must still be served), so fewer is refused earlier.
            socks = list(taken.sockets)
        port = socks[0].getsockname()[1] if socks else listener.port
        try:
            for s in socks:
                refresh_settings(s, listener)
            for _ in range(self.concurrency - len(socks)):
                s = bind_reuseport(listener.address, port, listener)
                socks.append(s)
                port = s.getsockname()[1]  # port 0: every slot shares the first's port
        except OSError as exc:
            for s in socks:
                s.close()
            raise BindError(
                f"cannot bind listener '{listener.name}' to "
                f"{listener.address}:{listener.port}: {exc.strerror or exc}"
            ) from exc
        self._bound[listener.name] = _Bound(
            listener.address, port, socks, False, settings=settings_of(listener)
        )

    def _bind_pipe(self, listener: Listener, taken: Offered | None) -> None:
        if taken is not None:
            socks = taken.sockets
        else:
            try:
                socks = [pipes.bind_listening(listener.address, listener.pipe_mode, BACKLOG)]
            except OSError as exc:
                raise BindError(
                    f"cannot bind listener '{listener.name}' to {listener.address}: "
                    f"{exc.strerror or exc}"
                ) from exc
        self._bound[listener.name] = _Bound(listener.address, 0, socks, True, pipe=True)

    def bind_all(self, listeners: tuple[Listener, ...] | list[Listener]) -> list[str]:
        """Bind every listener not bound yet; all or none. Returns the names bound."""
        added: list[str] = []
        try:
            for listener in listeners:
                bound = self._bound.get(listener.name)
                if bound is None:
                    self.bind(listener)
                    added.append(listener.name)
                elif not bound.shared and bound.settings != settings_of(listener):
                    raise BindError(
                        f"listener '{listener.name}': freebind, tcp_backlog_size or "
                        "socket_options changed; proxyd sets them when it binds a listener's "
                        "sockets (a listener under a new name gets new sockets)"
                    )
        except BindError:
            for name in added:
                self.close(name)
            raise
        return added

    def fds_for(self, slot: int, names: tuple[str, ...] | list[str]) -> list[int]:
        out = []
        for name in names:
            b = self._bound[name]
            out.append(b.sockets[0 if b.shared else slot].fileno())
        return out

    def export(self) -> list[Exported]:
        """Every listener's sockets (every slot's), for a hot-restart successor."""
        return [
            Exported(name, b.address, b.port, tuple(s.fileno() for s in b.sockets), b.shared)
            for name, b in self._bound.items()
        ]

    def close(self, name: str) -> None:
        bound = self._bound.pop(name, None)
        if bound is not None:
            for s in bound.sockets:
                s.close()

    def close_all(self) -> None:
        for name in list(self._bound):
            self.close(name)
        for o in self._offered:
            for s in o.sockets:
                s.close()
        self._offered = []
