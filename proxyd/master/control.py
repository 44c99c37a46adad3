"""The control socket: how ``proxyctl`` talks to a running master.

An AF_UNIX stream socket (mode 0600, so only the owner and root may use it). Each
connection carries ``ipc.ControlRequest`` frames, each answered with one
``ipc.ControlReply``:

* ``status`` → ``{pid, state, epoch, config, uptime_s, concurrency, workers: [...]}``;
* ``reload`` → ``{epoch}`` when the new config is running; not ok with the error text
  (file, field path, reason) when it is not, and the running epoch is untouched;
* ``stop`` → graceful stop (``args: {"fast": true}`` for a fast one); answered first.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import TYPE_CHECKING

import trio

from proxyd import ipc
from proxyd.log import get_logger

if TYPE_CHECKING:
    from proxyd.master.master import Master

log = get_logger("proxyd.master.control")

REQUEST_TIMEOUT_S = 60.0


class ControlSocketError(OSError):
    """The control socket path cannot be used (in use by another master, bad dir)."""


def default_control_socket() -> str:
    """``$PROXYD_CONTROL_SOCKET``; else /run/proxyd/control.sock when /run/proxyd is
    writable; else /tmp/proxyd-<uid>/control.sock."""
    env = os.environ.get("PROXYD_CONTROL_SOCKET")
    if env:
        return env
    run_dir = "/run/proxyd"
    if os.path.isdir(run_dir) and os.access(run_dir, os.W_OK | os.X_OK):
        return os.path.join(run_dir, "control.sock")
    return os.path.join(f"/tmp/proxyd-{os.getuid()}", "control.sock")


class ControlServer:
    def __init__(self, master: Master, path: str) -> None:
        self.master = master
        self.path = path
        self._sock: trio.socket.SocketType | None = None

    def bind(self) -> None:
        """Create the socket file (0600); refuse when another master answers on it."""
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if os.path.exists(self.path):
            if not stat.S_ISSOCK(os.stat(self.path).st_mode):
                raise ControlSocketError(f"control socket {self.path} exists and is not a socket")
            if _answers(self.path):
                raise ControlSocketError(
                    f"control socket {self.path} is in use by another proxyd "
                    "(use --control-socket to run a second one)"
                )
            os.unlink(self.path)  # left behind by a master that died
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(self.path)
        except OSError as exc:
            sock.close()
            raise ControlSocketError(
                f"cannot bind control socket {self.path}: {exc.strerror}"
            ) from exc
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        sock.setblocking(False)
        self._sock = trio.socket.from_stdlib_socket(sock)

    async def serve(self) -> None:
        assert self._sock is not None, "bind() first"
        async with trio.open_nursery() as nursery:
            while True:
                conn, _addr = await self._sock.accept()
                nursery.start_soon(self._serve_connection, conn)

    async def _serve_connection(self, conn: trio.socket.SocketType) -> None:
        channel = ipc.Channel(conn)
        try:
            while True:
                try:
                    msg, fds = await channel.receive()
                except EOFError:
                    return
                for fd in fds:
                    os.close(fd)
                if not isinstance(msg, ipc.ControlRequest):
                    await channel.send(ipc.ControlReply(False, f"expected a ControlRequest, got {type(msg).__name__}"))  # fmt: skip
                    return
                with trio.move_on_after(REQUEST_TIMEOUT_S):
                    try:
                        reply = await self.handle(msg)
                    except Exception as exc:  # a bug here must not take the master down
                        log.exception("control_request_failed", command=msg.command)
                        reply = ipc.ControlReply(False, f"internal error: {exc!r}")
                    await channel.send(reply)
        except (OSError, ipc.IpcError, trio.BrokenResourceError) as exc:
            log.warning("control_connection_error", error=str(exc))
        finally:
            channel.close()

    async def handle(self, request: ipc.ControlRequest) -> ipc.ControlReply:
        m = self.master
        log.info("control_request", command=request.command, epoch=m.epoch.number)
        if request.command == "status":
            return ipc.ControlReply(True, result=m.status())
        if request.command == "reload":
            result = await m.reload()
            info = {
                "epoch": result.epoch,
                "added": list(result.added),
                "removed": list(result.removed),
            }
            return ipc.ControlReply(result.ok, result.error, info)
        if request.command == "stop":
            fast = bool(request.args.get("fast", False))
            m.request_stop(graceful=not fast)
            return ipc.ControlReply(True, result={"pid": os.getpid(), "graceful": not fast})
        return ipc.ControlReply(
            False, f"unknown command {request.command!r} (status, reload, stop)"
        )

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass  # already removed (by an operator, or a successor)


def _answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise
    finally:
        probe.close()
    return True
