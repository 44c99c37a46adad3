"""Listening sockets handed to the master by systemd (socket activation).

systemd passes ``LISTEN_FDS`` sockets starting at fd 3, for the process whose pid is
``LISTEN_PID``, named by ``LISTEN_FDNAMES`` (colon-separated, ``FileDescriptorName=`` in
the .socket unit). The master takes them once at start (and removes the variables from
its environment, as ``sd_listen_fds(1)`` does); :class:`~proxyd.master.listeners.ListenerSockets`
then gives a listener the inherited socket whose name equals the listener's name, or
else whose address equals the listener's address and port.

An inherited socket is one socket, not one per worker slot: every worker accepts from
that single socket (the kernel hands each connection to one of them). A socket that
matches no listener is kept (a later reload may add its listener) and logged.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

from proxyd.log import get_logger

SD_LISTEN_FDS_START = 3

log = get_logger("proxyd.master.socket_activation")


@dataclass(frozen=True, slots=True)
class PassedFd:
    fd: int
    name: str  # LISTEN_FDNAMES entry; "" when systemd gave none


def parse_listen_env(environ: Mapping[str, str], pid: int) -> list[PassedFd]:
    """The fds systemd passed to ``pid``, with their names; [] when none were.

    ``LISTEN_PID`` must equal ``pid`` (the variables may have leaked from a parent).
    """
    if environ.get("LISTEN_PID", "") != str(pid):
        return []
    count = environ.get("LISTEN_FDS", "")
    if not count.isdigit() or int(count) == 0:
        return []
    n = int(count)
    names = environ.get("LISTEN_FDNAMES", "").split(":") if environ.get("LISTEN_FDNAMES") else []
    names += [""] * (n - len(names))
    return [PassedFd(SD_LISTEN_FDS_START + i, names[i]) for i in range(n)]


@dataclass
class InheritedSocket:
    sock: socket.socket
    name: str
    address: str
    port: int


def take_inherited(environ: MutableMapping[str, str] | None = None) -> list[InheritedSocket]:
    """The listening TCP sockets systemd passed; removes the LISTEN_* variables.

    Sockets that are not listening TCP sockets are logged and closed.
    """
    env = os.environ if environ is None else environ
    passed = parse_listen_env(env, os.getpid())
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(key, None)
    out: list[InheritedSocket] = []
    for p in passed:
        try:
            sock = socket.socket(fileno=p.fd)
        except OSError as exc:
            log.warning("inherited_fd_unusable", fd=p.fd, name=p.name, error=str(exc))
            continue
        try:
            usable = (
                sock.family in (socket.AF_INET, socket.AF_INET6)
                and sock.type == socket.SOCK_STREAM
                and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
            )
            address, port = sock.getsockname()[:2] if usable else ("", 0)
        except OSError:
            usable = False
        if not usable:
            log.warning("inherited_fd_not_a_tcp_listener", fd=p.fd, name=p.name)
            sock.close()
            continue
        sock.set_inheritable(False)
        sock.setblocking(False)
        out.append(InheritedSocket(sock, p.name, address, port))
        log.info("inherited_socket", fd=p.fd, name=p.name, address=address, port=port)
    return out
