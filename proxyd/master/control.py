"""The control socket: how ``proxyctl`` talks to a running master.

An AF_UNIX stream socket (mode 0600, so only the owner and root may use it). Each
connection carries ``ipc.ControlRequest`` frames, each answered with one
``ipc.ControlReply``:

* ``status`` → ``{pid, state, epoch, config, uptime_s, concurrency, workers: [...]}``;
* ``reload`` → ``{epoch}`` once every worker runs the new config; not ok with the error
  text (file, field path, reason; or the workers that refused the new epoch and why,
  :mod:`proxyd.master.epochs`) when it is not, and the running config stays;
* ``reload-dry-run`` → the checks of a reload (``args: {"config": FILE}`` for another
  file than the running one) and what it would change, changing nothing
  (:mod:`proxyd.master.dry_run`); ok when the file is valid, with the document either
  way as the result (``proxyctl reload --dry-run --json`` prints it);
* ``hot-restart`` → ``{pid, old_pid, restart_epoch, drain_time_s}`` once a new master
  (``args: {"config": FILE}`` to use another config file, ``{"timeout_s": S}`` to bound
  the handoff) took the sockets over and this one drains; not ok with the reason (an
  invalid config, a crash, a timeout) when it did not, and this master goes on serving;
* ``explain`` → ``args: {method, url, headers: ["Name: value", ...], listener,
  source_ip}``: how
  the running epoch would route that request, without sending it
  (:mod:`proxyd.master.explain`);
* ``stop`` → graceful stop (``args: {"fast": true}`` for a fast one); answered first.

After a hot restart the listening control socket belongs to the new master: the old
one stops accepting on it (it still answers the connections it has) and leaves the
socket file in place.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from functools import partial
from typing import TYPE_CHECKING

import trio

from proxyd import ipc
from proxyd.log import get_logger

if TYPE_CHECKING:
    from proxyd.master.master import Master

log = get_logger("proxyd.master.control")

REQUEST_TIMEOUT_S = 60.0
# A hot restart answers once the new master took over (or failed): allow for that.
HOT_RESTART_REQUEST_TIMEOUT_S = 300.0


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
        self._accepting = trio.CancelScope()
        # Whether close() removes the socket file: not before a new master took over
        # an adopted socket, and not after this one handed it to a successor.
        self._owns_file = False

    def adopt(self, sock: socket.socket) -> None:
        """Serve on a listening socket a hot-restart predecessor handed over; the file
        becomes this master's once it took over (:meth:`own_file`)."""
        sock.setblocking(False)
        self._sock = trio.socket.from_stdlib_socket(sock)

    def own_file(self) -> None:
        self._owns_file = True

    def fileno(self) -> int | None:
        return self._sock.fileno() if self._sock is not None else None

    def stop_accepting(self) -> None:
        """A successor serves the socket now: accept nothing more, keep the file."""
        self._owns_file = False
        self._accepting.cancel()

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
        self._owns_file = True
        sock.listen(16)
        sock.setblocking(False)
        self._sock = trio.socket.from_stdlib_socket(sock)

    async def serve(self) -> None:
        assert self._sock is not None, "bind() first"
        sock = self._sock
        # Connections already accepted are answered even after stop_accepting().
        async with trio.open_nursery() as nursery:
            with self._accepting:
                while True:
                    conn, _addr = await sock.accept()
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
                hot = msg.command == "hot-restart"
                with trio.move_on_after(
                    HOT_RESTART_REQUEST_TIMEOUT_S if hot else REQUEST_TIMEOUT_S
                ):
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
        if request.command == "reload-dry-run":
            from proxyd.master.dry_run import dry_run_reload  # not for proxyctl's import

            config = request.args.get("config") or None
            doc = await dry_run_reload(m, str(config) if config else None)
            return ipc.ControlReply(bool(doc["valid"]), str(doc.get("error", "")), doc)
        if request.command == "hot-restart":
            config = request.args.get("config") or None
            timeout = request.args.get("timeout_s")
            restart = await m.hot_restart(
                str(config) if config else None,
                float(timeout) if isinstance(timeout, int | float) and timeout > 0 else None,
            )
            info = {
                "pid": restart.new_pid,
                "old_pid": os.getpid(),
                "restart_epoch": restart.restart_epoch,
                "drain_time_s": m.options.drain_time_s,
            }
            return ipc.ControlReply(restart.ok, restart.error, info)
        if request.command == "explain":
            return await self._explain(request.args)
        if request.command == "stop":
            fast = bool(request.args.get("fast", False))
            m.request_stop(graceful=not fast)
            return ipc.ControlReply(True, result={"pid": os.getpid(), "graceful": not fast})
        return ipc.ControlReply(
            False,
            f"unknown command {request.command!r} (status, reload, reload-dry-run, hot-restart, explain, stop)",
        )

    async def _explain(self, args: dict[str, object]) -> ipc.ControlReply:
        """Match a request against the running epoch (proxyd.master.explain), then ask
        the workers which host they would pick next."""
        from proxyd.master.explain import (  # not for proxyctl's import
            ExplainError,
            add_worker_picks,
            clusters_to_peek,
            explain,
        )

        m = self.master
        epoch = m.epoch
        ports = {}
        for lst in epoch.listeners:
            if lst.name in m.sockets:
                ports[lst.name] = m.sockets.address_of(lst.name)[1]
        raw_headers = args.get("headers") or []
        question = partial(
            explain,
            epoch,
            str(args.get("method") or "GET"),
            str(args.get("url") or "/"),
            [str(h) for h in raw_headers] if isinstance(raw_headers, list) else [],
            str(args.get("listener") or ""),
            ports,
            str(args.get("source_ip") or ""),
        )
        try:
            # Compiling a large route table takes a while: not on the master's loop.
            doc = await trio.to_thread.run_sync(question)
        except ExplainError as exc:
            return ipc.ControlReply(False, str(exc))
        clusters = clusters_to_peek(doc)
        if clusters:
            add_worker_picks(doc, await m.peeks.ask(m.workers, clusters))
        return ipc.ControlReply(True, result=doc)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            if not self._owns_file:
                return  # the file belongs to the other master of a hot restart
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
