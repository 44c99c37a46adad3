"""Hot restart: a new master takes the listening sockets over from the running one.

``proxyctl hot-restart`` (or SIGUSR2) makes the running master (the *old* one) start the
installed proxyd again with the same arguments, plus ``--restart-epoch N+1`` and
``--hot-restart-socket PATH``, a Unix socket the old master listens on for that one
child only (SO_PEERCRED must name it). The conversation is
:mod:`proxyd.master.hot_restart_protocol`'s; this module moves its messages:

1. the new master says Hello; the old one checks the wire version and restart epoch;
2. the new master asks for the sockets and gets every listener's (every worker slot's,
   SCM_RIGHTS: the same sockets, so their accept queues are shared), the admin socket
   and the control socket, then the counter totals;
3. the new master loads and validates its config, binds what is new, starts its workers
   on those sockets and waits until all are Ready;
4. only then it sends DrainListeners: the old master stops accepting admin and control
   connections, sends Drain to its workers (they stop accepting and finish what is in
   flight), answers ``proxyctl`` and drains for ``--drain-time-s``; the new master serves
   admin and control and tells systemd ``MAINPID=<its pid>`` and ``READY=1``;
5. after ``--parent-shutdown-time-s`` the new master sends Terminate; the old one, when
   it exits, sends the counters its workers counted while draining.

Any failure before step 4 (an invalid config, a crash, a timeout) leaves the old master
serving as before: it kills the new one and ``proxyctl hot-restart`` says why. No
listening socket is closed on the way: the new master gets duplicates, and the old one
keeps its own until it exits.
"""

from __future__ import annotations

import os
import shlex
import socket
import struct
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from proxyd import ipc
from proxyd.log import get_logger
from proxyd.master.hot_restart_protocol import (
    Handshake,
    HotRestartError,
    check_hello,
    successor_argv,
)
from proxyd.master.listeners import Offered
from proxyd.master.sd_notify import child_environment
from proxyd.master.socket_activation import take_inherited

if TYPE_CHECKING:
    from proxyd.master.master import Master

MASTER_COMMAND_ENV = "PROXYD_MASTER_COMMAND"
# How long the whole handoff may take, from starting the new master to DrainListeners.
HANDOFF_TIMEOUT_S = 60.0
# How long the new master waits for each answer from the old one.
ANSWER_TIMEOUT_S = 10.0
# Linux takes at most 253 fds per SCM_RIGHTS message.
FDS_PER_MESSAGE = 200

log = get_logger("proxyd.master.hot_restart")


def master_command() -> list[str]:
    """How to run the installed proxyd: ``$PROXYD_MASTER_COMMAND`` (split like a shell
    would), else this interpreter with ``-m proxyd`` (the code on disk now, not the code
    this process loaded)."""
    command = os.environ.get(MASTER_COMMAND_ENV)
    return shlex.split(command) if command else [sys.executable, "-m", "proxyd"]


def socket_path(control_socket: str, restart_epoch: int) -> str:
    """The old master's hot-restart socket, beside the control socket (same 0700 dir)."""
    directory = os.path.dirname(os.path.abspath(control_socket))
    return os.path.join(directory, f"hot-restart.{restart_epoch}.sock")


@dataclass(frozen=True, slots=True)
class HotRestartResult:
    ok: bool
    error: str = ""
    new_pid: int = 0
    restart_epoch: int = 0


@dataclass
class PassedSocket:
    """A socket the new master got from the old one."""

    kind: str  # "listener", "admin" or "control"
    name: str
    address: str
    port: int
    shared: bool
    sockets: list[socket.socket] = field(default_factory=list)


def _peer_pid(sock: trio.socket.SocketType) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _uid, _gid = struct.unpack("3i", creds)
    return int(pid)


async def _receive(channel: ipc.Channel, hs: Handshake, timeout_s: float) -> tuple[Any, list[int]]:
    with trio.fail_after(timeout_s):
        msg, fds = await channel.receive()
    hs.received(msg)
    return msg, fds


async def _send(channel: ipc.Channel, hs: Handshake, msg: Any, fds: list[int] | tuple[int, ...] = ()) -> None:  # fmt: skip
    hs.sent(msg)
    await channel.send(msg, fds)


# -- the old master's side ------------------------------------------------------------


class Successor:
    """The old master's side: start the new master, hand it everything, step aside."""

    def __init__(self, master: Master) -> None:
        self.master = master
        self.hs = Handshake("old")
        self.channel: ipc.Channel | None = None
        self.proc: trio.Process | None = None
        self._sent_counters: dict[str, int] = {}

    async def run(self, config: str, timeout_s: float = HANDOFF_TIMEOUT_S) -> HotRestartResult:
        m = self.master
        epoch = m.options.restart_epoch + 1
        path = socket_path(m.options.control_socket, epoch)
        listener = _listen_unix(path)
        argv = successor_argv(m.options.argv, config, epoch, path, master_command())
        log.info("hot_restart_starting", restart_epoch=epoch, command=argv)
        failure = ""
        try:
            self.proc = await trio.lowlevel.open_process(
                argv, env=child_environment(os.environ, keep_notify=True)
            )
        except OSError as exc:
            listener.close()
            _unlink(path)
            return HotRestartResult(False, f"cannot start the new master: {exc}", 0, epoch)
        proc = self.proc
        async with trio.open_nursery() as nursery:

            async def watch_exit() -> None:
                nonlocal failure
                await proc.wait()
                if not self.hs.handed_off:
                    failure = _exit_reason(proc)
                    nursery.cancel_scope.cancel()

            nursery.start_soon(watch_exit)
            try:
                with trio.move_on_after(timeout_s) as timer:
                    await self._converse(listener, path, proc)
                if timer.cancelled_caught:
                    failure = f"the new master did not take over within {timeout_s:g} s"
            except (HotRestartError, OSError, EOFError, ipc.IpcError, trio.TooSlowError) as exc:
                if not failure:
                    failure = await self._why(exc, proc)
            finally:
                listener.close()
                _unlink(path)
            nursery.cancel_scope.cancel()
        if self.hs.handed_off:
            return HotRestartResult(True, "", proc.pid, epoch)
        await self._abandon(proc)
        return HotRestartResult(False, failure or "the handoff did not finish", proc.pid, epoch)

    async def _why(self, exc: BaseException, proc: trio.Process) -> str:
        if isinstance(exc, EOFError | OSError | trio.TooSlowError):
            with trio.move_on_after(2.0):
                await proc.wait()
            if proc.returncode is not None:
                return _exit_reason(proc)
            return f"lost the new master (pid {proc.pid}) during the handoff: {exc or type(exc).__name__}"  # fmt: skip
        return str(exc)

    async def _abandon(self, proc: trio.Process) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if proc.returncode is None:
            proc.kill()  # its workers see the channel close and exit too
            with trio.move_on_after(5.0):
                await proc.wait()

    async def _converse(self, listener: trio.socket.SocketType, path: str, proc: trio.Process) -> None:  # fmt: skip
        m = self.master
        while True:
            conn, _ = await listener.accept()
            if _peer_pid(conn) == proc.pid:
                break
            log.warning("hot_restart_stranger", pid=_peer_pid(conn))  # not our child: refuse
            conn.close()
        listener.close()
        _unlink(path)
        channel = self.channel = ipc.Channel(conn)
        hello, _ = await _receive(channel, self.hs, ANSWER_TIMEOUT_S)
        error = check_hello(hello, m.options.restart_epoch)
        welcome = ipc.HotRestartWelcome(
            not error, error, ipc.WIRE_VERSION, m.options.restart_epoch, m.generation,
            os.getpid(), m.first_started_wall,
        )  # fmt: skip
        await _send(channel, self.hs, welcome)
        if error:
            raise HotRestartError(error)
        msg, _ = await _receive(channel, self.hs, ANSWER_TIMEOUT_S)
        if isinstance(msg, ipc.HotRestartFailed):
            raise HotRestartError(f"the new master failed: {msg.error}")
        for passed, fds in self._exported():
            await _send(channel, self.hs, passed, fds)
        self._sent_counters = m.stats.counter_totals()
        await _send(channel, self.hs, ipc.StatsTransfer(self._sent_counters, m.xds.export()))
        # The new master loads its config and starts its workers: no answer timeout here
        # (the caller's handoff timeout covers it).
        msg, _ = await _receive(channel, self.hs, float("inf"))
        if isinstance(msg, ipc.HotRestartFailed):
            raise HotRestartError(f"the new master failed: {msg.error}")
        # DrainListeners: the new master's workers accept on every socket now.
        m.step_aside(proc.pid)
        await _send(channel, self.hs, ipc.DrainListenersReply(m.options.drain_time_s))
        log.info("hot_restart_handed_over", new_pid=proc.pid, drain_time_s=m.options.drain_time_s)

    def _exported(self) -> list[tuple[ipc.PassListenSockets, tuple[int, ...]]]:
        m = self.master
        items: list[tuple[str, str, str, int, bool, tuple[int, ...]]] = []
        for e in m.sockets.export():
            for i in range(0, len(e.fds), FDS_PER_MESSAGE):
                items.append(("listener", e.name, e.address, e.port, e.shared, e.fds[i : i + FDS_PER_MESSAGE]))  # fmt: skip
        for address, port, fd in m.admin_sockets():
            items.append(("admin", "admin", address, port, False, (fd,)))
        control_fd = m.control_fd()
        if control_fd is not None:
            items.append(("control", "control", m.options.control_socket, 0, False, (control_fd,)))
        out = []
        for i, (kind, name, address, port, shared, fds) in enumerate(items):
            last = i == len(items) - 1
            out.append((ipc.PassListenSockets(kind, name, address, port, shared, len(fds), last), fds))  # fmt: skip
        return out

    async def serve(self) -> None:
        """After the handoff: obey Terminate until this master exits."""
        channel = self.channel
        if channel is None:
            return
        while True:
            try:
                msg, fds = await channel.receive()
            except trio.ClosedResourceError:
                return  # finish() closed it: this master is exiting
            except (EOFError, OSError, ipc.IpcError):
                return  # the new master is gone; this one drains and exits all the same
            for fd in fds:
                os.close(fd)
            if isinstance(msg, ipc.Terminate):
                log.info("hot_restart_terminate", reason="parent shutdown time reached")
                self.master.request_stop(graceful=False)

    async def finish(self) -> None:
        """As this master exits: the counters its workers counted since the handoff."""
        channel, self.channel = self.channel, None
        if channel is None:
            return
        totals = self.master.stats.counter_totals()
        deltas = {k: v - self._sent_counters.get(k, 0) for k, v in totals.items()}
        deltas = {k: v for k, v in deltas.items() if v}
        with trio.move_on_after(2.0):
            try:
                await channel.send(ipc.StatsTransfer(deltas))
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the new master is gone: nobody is left to count them
        channel.close()


def _listen_unix(path: str) -> trio.socket.SocketType:
    _unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    sock.listen(1)
    sock.setblocking(False)
    return trio.socket.from_stdlib_socket(sock)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # already gone: nothing to clean


def _exit_reason(proc: trio.Process) -> str:
    code = proc.returncode
    how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"  # fmt: skip
    return f"the new master (pid {proc.pid}) {how} before taking over; see its log"


# -- the new master's side ------------------------------------------------------------


async def take_sockets(master: Master) -> list[PassedSocket]:
    """Sockets from outside: the old master's (hot restart) or systemd's.

    Listener sockets are offered to ``master.sockets``; the admin and control sockets
    of the old master are returned."""
    if not master.options.hot_restart_socket:
        for s in take_inherited():
            master.sockets.offer(Offered(s.name, s.address, s.port, [s.sock], True, "systemd"))
        return []
    pred = master.predecessor = await Predecessor.connect(
        master.options.hot_restart_socket, master.options.restart_epoch
    )
    master.generation = pred.welcome.generation + 1
    master.first_started_wall = pred.welcome.first_started_at
    passed, counters = await pred.receive_sockets()
    master.stats.add_counters(counters)
    master.xds_seed = pred.xds_state
    log.info("hot_restart_sockets_received", parent_pid=pred.pid, sockets=[(p.kind, p.name, len(p.sockets)) for p in passed])  # fmt: skip
    rest = []
    for p in passed:
        if p.kind != "listener":
            rest.append(p)
            continue
        if not p.shared and len(p.sockets) > master.options.concurrency:
            for q in passed:
                for sock in q.sockets:
                    sock.close()
            raise HotRestartError(
                f"the old master has {len(p.sockets)} workers per listener and this one "
                f"--concurrency {master.options.concurrency}: a hot restart cannot lower the "
                "concurrency (every old socket's queue must be served); restart instead"
            )
        master.sockets.offer(Offered(p.name, p.address, p.port, p.sockets, p.shared, "hot-restart"))  # fmt: skip
    return rest


def take_passed(passed: list[PassedSocket], kind: str, address: str, port: int) -> list[Any]:
    """The sockets of the old master's ``kind`` socket at ``address`` (and ``port``, or
    any when 0), removed from ``passed``; [] when there is none."""
    for p in passed:
        if p.kind == kind and p.address == address and port in (0, p.port):
            passed.remove(p)
            return p.sockets
    return []


class Predecessor:
    """The new master's side: the old master that started it."""

    def __init__(self, channel: ipc.Channel, welcome: ipc.HotRestartWelcome, hs: Handshake) -> None:  # fmt: skip
        self.channel: ipc.Channel | None = channel
        self.welcome = welcome
        self.hs = hs
        self.pid = welcome.pid
        self.xds_state: tuple[Any, ...] = ()  # what xDS delivered to it (XdsClient.export)

    @classmethod
    async def connect(cls, path: str, restart_epoch: int) -> Predecessor:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with trio.fail_after(ANSWER_TIMEOUT_S):
                await sock.connect(path)
        except (OSError, trio.TooSlowError) as exc:
            sock.close()
            raise HotRestartError(f"cannot reach the old master on {path}: {exc}") from exc
        channel = ipc.Channel(sock)
        hs = Handshake("new")
        try:
            await _send(channel, hs, ipc.HotRestartHello(ipc.WIRE_VERSION, restart_epoch, os.getpid()))  # fmt: skip
            welcome, _ = await _receive(channel, hs, ANSWER_TIMEOUT_S)
        except (OSError, EOFError, ipc.IpcError, trio.TooSlowError) as exc:
            channel.close()
            raise HotRestartError(f"no answer from the old master: {exc!r}") from exc
        if not welcome.ok:
            channel.close()
            raise HotRestartError(f"the old master refused: {welcome.error}")
        log.info("hot_restart_connected", parent_pid=welcome.pid, parent_epoch=welcome.restart_epoch)  # fmt: skip
        return cls(channel, welcome, hs)

    async def receive_sockets(self) -> tuple[list[PassedSocket], dict[str, int]]:
        """Every socket of the old master, and its counter totals."""
        assert self.channel is not None
        out: list[PassedSocket] = []
        try:
            await _send(self.channel, self.hs, ipc.PassListenSocketsRequest())
            while True:
                msg, fds = await _receive(self.channel, self.hs, ANSWER_TIMEOUT_S)
                if isinstance(msg, ipc.StatsTransfer):
                    self.xds_state = msg.xds
                    return out, dict(msg.counters)
                socks = [_adopt(fd) for fd in fds]
                prev = out[-1] if out else None
                if prev is not None and (prev.kind, prev.name) == (msg.kind, msg.name):
                    prev.sockets.extend(socks)  # the next chunk of a listener's slots
                else:
                    out.append(PassedSocket(msg.kind, msg.name, msg.address, msg.port, msg.shared, socks))  # fmt: skip
        except (OSError, EOFError, ipc.IpcError, trio.TooSlowError) as exc:
            for p in out:
                for s in p.sockets:
                    s.close()
            raise HotRestartError(f"lost the old master while receiving sockets: {exc!r}") from exc  # fmt: skip

    async def fail(self, error: str) -> None:
        """Tell the old master why this one gives up (it keeps serving)."""
        channel, self.channel = self.channel, None
        if channel is None:
            return
        with trio.move_on_after(2.0):
            try:
                await _send(channel, self.hs, ipc.HotRestartFailed(error))
            except (OSError, trio.BrokenResourceError, HotRestartError):
                pass  # the old master is gone or past caring; it sees the exit anyway
        channel.close()

    async def take_over(self) -> bool:
        """DrainListeners: the old master stops accepting. False when it is gone."""
        if self.channel is None:
            return False
        try:
            await _send(self.channel, self.hs, ipc.DrainListeners())
            reply, _ = await _receive(self.channel, self.hs, ANSWER_TIMEOUT_S)
        except (OSError, EOFError, ipc.IpcError, trio.TooSlowError, HotRestartError) as exc:
            log.warning("hot_restart_parent_lost", error=repr(exc))
            return False
        log.info("hot_restart_took_over", parent_pid=self.pid, parent_drain_time_s=reply.drain_time_s)  # fmt: skip
        return True

    async def serve(self, master: Master, parent_shutdown_time_s: float) -> None:
        """Until the old master exits: add its last counters; Terminate it in time."""
        channel = self.channel
        if channel is None:
            return
        async with trio.open_nursery() as nursery:

            async def terminate_later() -> None:
                await trio.sleep(parent_shutdown_time_s)
                try:
                    await _send(channel, self.hs, ipc.Terminate())
                except (OSError, trio.BrokenResourceError, HotRestartError):
                    return  # it is gone already
                log.info("hot_restart_terminate_sent", parent_pid=self.pid)

            nursery.start_soon(terminate_later)
            while True:
                try:
                    msg, fds = await channel.receive()
                except (EOFError, OSError, ipc.IpcError):
                    break
                for fd in fds:
                    os.close(fd)
                if isinstance(msg, ipc.StatsTransfer):
                    master.stats.add_counters(msg.counters)
            log.info("hot_restart_parent_exited", parent_pid=self.pid)
            nursery.cancel_scope.cancel()
        channel.close()
        self.channel = None


def _adopt(fd: int) -> socket.socket:
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    sock.setblocking(False)
    return sock
