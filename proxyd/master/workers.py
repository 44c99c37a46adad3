"""Worker processes: start one per slot, talk to it, restart it when it dies.

A worker is ``python -m proxyd.worker --ipc-fd FD --worker-id I`` with one end of a
socketpair. The master sends ``Hello`` (with the slot's listening sockets) and the
current ``EpochMsg``; the worker answers ``Ready`` for each epoch it applies and sends a
``StatsReport`` about once a second, which is also its heartbeat.

:class:`WorkerSupervisor` runs one slot for the life of the master: a worker that exits
is started again with the same sockets and the current epoch, at once after a single
crash and with growing delays (:class:`Backoff`) when it keeps dying. It gives up — and
asks the master to stop with an error — when a worker exits with
:data:`EXIT_CANNOT_START` or the first worker of a slot is not ready in time.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psutil
import trio

from proxyd import ipc
from proxyd.log import get_logger
from proxyd.master.sd_notify import child_environment

if TYPE_CHECKING:
    from proxyd.master.master import Master

WORKER_COMMAND_ENV = "PROXYD_WORKER_COMMAND"
# A worker that exits with this code cannot run with what it was given (a broken
# install, an epoch it cannot compile): restarting it would only loop.
EXIT_CANNOT_START = 3
# The first worker of a slot must be Ready this soon.
FIRST_READY_TIMEOUT_S = 10.0
# A worker silent this long (no StatsReport, no Ready) is killed and replaced
# (the default of --worker-heartbeat-timeout-s).
HEARTBEAT_TIMEOUT_S = 10.0
# A worker that closed its channel but did not exit gets this long before SIGKILL.
EXIT_AFTER_EOF_S = 2.0
# A worker that lived at least this long resets the backoff.
STABLE_AFTER_S = 10.0

log = get_logger("proxyd.master.workers")


class Backoff:
    """Restart delays: none after a single crash, then 0.25 s doubling up to 30 s."""

    def __init__(self, first: float = 0.25, cap: float = 30.0) -> None:
        self.first = first
        self.cap = cap
        self.quick_failures = 0

    def next_delay(self, lived_s: float) -> float:
        if lived_s >= STABLE_AFTER_S:
            self.quick_failures = 0
        self.quick_failures += 1
        if self.quick_failures <= 1:
            return 0.0
        return min(self.cap, self.first * 2 ** (self.quick_failures - 2))


@dataclass
class WorkerSlot:
    """What the master knows about the worker in slot ``id``."""

    id: int
    pid: int = 0
    process: trio.Process | None = None
    channel: ipc.Channel | None = None
    # Last epoch the worker said it applied, and last epoch sent to it.
    epoch: int = 0
    sent_epoch: int = 0
    started_at: float = 0.0  # wall clock (time.time())
    started_mono: float = 0.0
    restarts: int = 0
    last_heard: float = 0.0  # trio.current_time()
    # Listener names whose sockets this worker holds.
    listeners: tuple[str, ...] = ()
    # Serialises everything sent to the worker, so Hello/AddSockets/Epoch stay in order.
    lock: trio.Lock = field(default_factory=trio.Lock)
    ps: psutil.Process | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def info(self) -> dict[str, object]:
        """For ``proxyctl status``: pid, memory, CPU."""
        rss = 0
        cpu = 0.0
        if self.ps is not None and self.alive:
            try:
                with self.ps.oneshot():
                    rss = self.ps.memory_info().rss
                    cpu = self.ps.cpu_percent(interval=None)
            except psutil.Error:
                pass  # it exited between the check and the read; report zeros
        return {
            "id": self.id,
            "pid": self.pid if self.alive else 0,
            "rss": rss,
            "cpu_percent": cpu,
            "epoch": self.epoch,
            "started_at": self.started_at,
            "restarts": self.restarts,
        }


def worker_argv(ipc_fd: int, worker_id: int) -> list[str]:
    """``<python> -m proxyd.worker --ipc-fd FD --worker-id I``.

    ``$PROXYD_WORKER_COMMAND`` (split like a shell would) replaces the part before
    ``--ipc-fd``: a wrapper such as ``taskset -c 2 python3 -m proxyd.worker``, or a
    profiler.
    """
    command = os.environ.get(WORKER_COMMAND_ENV)
    base = shlex.split(command) if command else [sys.executable, "-m", "proxyd.worker"]
    return [*base, "--ipc-fd", str(ipc_fd), "--worker-id", str(worker_id)]


class WorkerSupervisor:
    """Runs slot ``slot`` for as long as the master runs."""

    def __init__(self, master: Master, slot: WorkerSlot, on_change: Callable[[], None]) -> None:
        self.master = master
        self.slot = slot
        self._on_change = on_change
        self._backoff = Backoff()
        self._ever_ready = False

    async def run(self) -> None:
        slot = self.slot
        while not self.master.stopping:
            code, ready = await self._run_once()
            if self.master.stopping:
                return
            lived = time.monotonic() - slot.started_mono
            if code == EXIT_CANNOT_START:
                self.master.fatal(
                    f"worker {slot.id} cannot start (exit code {code}); see its log above"
                )
                return
            if not self._ever_ready and not ready:
                self.master.fatal(
                    f"worker {slot.id} did not become ready within {FIRST_READY_TIMEOUT_S:g} s "
                    f"(exit code {code})"
                )
                return
            self._ever_ready = self._ever_ready or ready
            delay = self._backoff.next_delay(lived)
            slot.restarts += 1
            log.warning(
                "worker_restart", worker_id=slot.id, delay_s=delay, restarts=slot.restarts,
                epoch=self.master.epoch.number,
            )  # fmt: skip
            await trio.sleep(delay)

    async def _run_once(self) -> tuple[int, bool]:
        """Start a worker, serve it until it exits; (exit code, became ready)."""
        slot = self.slot
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = await trio.lowlevel.open_process(
                worker_argv(child.fileno(), slot.id),
                pass_fds=(child.fileno(),),
                env=child_environment(os.environ, keep_notify=False),
            )
        except OSError as exc:
            parent.close()
            self.master.fatal(f"cannot start worker {slot.id}: {exc}")
            return 1, False
        finally:
            child.close()
        channel = ipc.Channel(trio.socket.from_stdlib_socket(parent))
        slot.process, slot.channel, slot.pid = proc, channel, proc.pid
        slot.epoch = slot.sent_epoch = 0
        slot.started_at, slot.started_mono = time.time(), time.monotonic()
        slot.last_heard = trio.current_time()
        try:
            slot.ps = psutil.Process(proc.pid)
            slot.ps.cpu_percent(interval=None)  # primes the CPU counter
        except psutil.Error:
            slot.ps = None
        log.info("worker_started", worker_id=slot.id, pid=proc.pid, epoch=self.master.epoch.number)
        self._on_change()
        ready = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_loop, channel, proc, ready)
                nursery.start_soon(self._watchdog, proc, ready)
                await self.master.send_hello(slot)
                await proc.wait()
                nursery.cancel_scope.cancel()
        finally:
            channel.close()
            slot.channel = None
            self.master.stats.drop_worker(slot.id)
        code = proc.returncode
        log.log(
            20 if self.master.stopping and code == 0 else 30,
            "worker_exited", worker_id=slot.id, pid=proc.pid, exit_code=code,
            epoch=self.master.epoch.number,
        )  # fmt: skip
        self._on_change()
        return code, ready.is_set()

    async def _read_loop(self, channel: ipc.Channel, proc: trio.Process, ready: trio.Event) -> None:
        slot = self.slot
        while True:
            try:
                msg, fds = await channel.receive()
            except (EOFError, ConnectionResetError):
                break  # the worker exited (or is exiting): the usual end
            except (OSError, ipc.IpcError) as exc:
                log.error("worker_channel_error", worker_id=slot.id, error=str(exc))
                break
            for fd in fds:  # a worker never sends fds; do not leak any it did
                os.close(fd)
            slot.last_heard = trio.current_time()
            if isinstance(msg, ipc.StatsReport):
                self.master.stats.add_report(slot.id, msg.counters, msg.gauges)
            elif isinstance(msg, ipc.Ready):
                slot.epoch = msg.epoch
                if not ready.is_set():
                    ready.set()
                    log.info("worker_ready", worker_id=slot.id, pid=msg.pid, epoch=msg.epoch)
                self._on_change()
            else:
                log.warning("worker_unexpected_message", worker_id=slot.id, type=type(msg).__name__)
        # The channel is closed: the worker is exiting (or broken). Give it a moment.
        with trio.move_on_after(EXIT_AFTER_EOF_S):
            await proc.wait()
        if proc.returncode is None:
            log.error(
                "worker_unresponsive", worker_id=slot.id, pid=proc.pid, reason="channel closed"
            )
            proc.kill()

    async def _watchdog(self, proc: trio.Process, ready: trio.Event) -> None:
        """Kill a worker that is not ready in time or stops sending heartbeats."""
        slot = self.slot
        with trio.move_on_after(FIRST_READY_TIMEOUT_S):
            await ready.wait()
        if not ready.is_set():
            log.error(
                "worker_not_ready", worker_id=slot.id, pid=proc.pid, timeout_s=FIRST_READY_TIMEOUT_S
            )
            proc.kill()
            return
        timeout = self.master.options.worker_heartbeat_timeout_s
        while True:
            silent_for = trio.current_time() - slot.last_heard
            if silent_for >= timeout and not self.master.draining:
                log.error(
                    "worker_unresponsive", worker_id=slot.id, pid=proc.pid,
                    reason=f"no heartbeat for {silent_for:.1f} s",
                )  # fmt: skip
                proc.kill()
                return
            await trio.sleep(max(0.5, timeout - silent_for))
