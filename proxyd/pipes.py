"""Unix domain socket ("pipe") addresses as Envoy writes them (``core.v3.Pipe``).

A pipe address is its path; a path that starts with ``@`` is in Linux's abstract
namespace (the ``@`` stands for the leading NUL byte, and there is no file). This is
the text Envoy prints for one in ``/listeners``, ``/clusters``, stat names and access
logs, so proxyd keeps the text and turns it into a socket address only at the system
call (:func:`sockaddr`, and :func:`text` for the way back).

In the epoch an upstream endpoint with port 0 is a pipe (proxyd refuses port 0 for TCP
endpoints); a listener says so with its ``pipe`` flag, since port 0 there means "any
free port".

Binding follows Envoy's ``SocketImpl::bind``: whatever is at the path (a stale socket
file from a previous run, or anything else) is unlinked first, then the socket is
bound and, when ``mode`` is set, ``chmod``-ed to it. The file is never removed on
close, as in Envoy: a hot restart's new master goes on serving the same socket.
"""

from __future__ import annotations

import os
import socket

import trio

# sizeof(struct sockaddr_un.sun_path): a path must be shorter, as Envoy requires.
MAX_PATH = 108
BACKLOG = 1024


def is_abstract(path: str) -> bool:
    return path.startswith("@")


def sockaddr(path: str) -> str | bytes:
    """The address to hand to bind/connect for the pipe ``path``."""
    if is_abstract(path):
        return b"\0" + path[1:].encode()
    return path


def text(name: str | bytes) -> str:
    """A Unix socket's ``getsockname()`` as Envoy writes the address."""
    if isinstance(name, bytes):
        if name.startswith(b"\0"):
            return "@" + name[1:].decode(errors="replace")
        return name.decode(errors="replace")
    return name


def check(path: str, mode: int) -> str:
    """Why Envoy refuses this pipe address, or "" when it takes it."""
    if len(path) >= MAX_PATH:
        return f'Path "{path}" exceeds maximum UNIX domain socket path size of {MAX_PATH}.'
    if mode and is_abstract(path):
        return "Cannot set mode for Abstract AF_UNIX sockets"
    return ""


def host_label(address: str, port: int) -> str:
    """An upstream host as Envoy prints it (``%UPSTREAM_HOST%``, ``/clusters``): a pipe
    (port 0) by its path, an IPv6 address in brackets."""
    if port == 0:
        return address
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def bind_listening(path: str, mode: int = 0, backlog: int = BACKLOG) -> socket.socket:
    """A non-blocking listening Unix socket at ``path``, bound as Envoy binds one."""
    if not is_abstract(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass  # nothing stale there
        except OSError:
            pass  # as Envoy: if it cannot be removed, bind() below says why
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(sockaddr(path))
        if mode and not is_abstract(path):
            os.chmod(path, mode)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_stream(address: str, port: int) -> trio.SocketStream:
    """A trio stream to an upstream: TCP to ``address:port``, or the pipe ``address``
    when ``port`` is 0 (the master's clients: xDS, health checks)."""
    if port:
        return await trio.open_tcp_stream(address, port)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.connect(sockaddr(address))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)
