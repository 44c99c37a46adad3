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

Worker health: a worker silent for ``--worker-heartbeat-timeout-s`` is killed (and so
restarted). A worker whose resident memory is above ``--worker-rss-limit-mb`` is
*replaced* (:meth:`WorkerSupervisor.replace`): a second worker starts in the same slot on
the same sockets, and once it is Ready the old one is sent ``Drain`` and exits when its
requests are done. :class:`RssLimit` decides when, at most once per slot per drain
period, so a limit below what a fresh worker needs cannot cause a replacement storm.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psutil
import trio

from proxyd import ipc
from proxyd.log import get_logger
from proxyd.master.sd_notify import child_environment
from proxyd.master.watchdog import WatchState

if TYPE_CHECKING:
    from proxyd.master.master import Master
    from proxyd.master.worker_pool import WorkerPool

WORKER_COMMAND_ENV = "PROXYD_WORKER_COMMAND"
# A worker that exits with this code cannot run with what it was given (a broken
# install, an epoch it cannot compile): restarting it would only loop.
EXIT_CANNOT_START = 3
# The first worker of a slot (and a replacement) must be Ready this soon.
FIRST_READY_TIMEOUT_S = 10.0
# A worker silent this long (no StatsReport, no Ready) is killed and replaced
# (the default of --worker-heartbeat-timeout-s).
HEARTBEAT_TIMEOUT_S = 10.0
# A worker that closed its channel but did not exit gets this long before SIGKILL.
EXIT_AFTER_EOF_S = 2.0
# A worker that lived at least this long resets the backoff.
STABLE_AFTER_S = 10.0
# Beyond the drain time, how long a draining worker gets before it is killed.
DRAIN_GRACE_S = 5.0
# How often the master samples each worker's RSS when --worker-rss-limit-mb is set.
RSS_CHECK_INTERVAL_S = 1.0
# At most one RSS replacement per slot this often (or per drain time, if longer).
RSS_REPLACE_MIN_INTERVAL_S = 30.0
RSS_REPLACEMENTS_STAT = "server.proxyd.worker_rss_replacements"

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


class RssLimit:
    """When a slot's worker is replaced for its memory; values in, a decision out.

    ``limit_bytes`` 0 is no limit. After a replacement the slot is left alone for
    ``interval_s`` (the drain period, at least :data:`RSS_REPLACE_MIN_INTERVAL_S`): the
    old worker may still be draining, and a limit that even a fresh worker exceeds
    then costs one replacement per interval, not a storm.
    """

    def __init__(self, limit_bytes: int, interval_s: float) -> None:
        self.limit_bytes = limit_bytes
        self.interval_s = interval_s
        self._last_replaced: float | None = None

    def over(self, rss: int) -> bool:
        return self.limit_bytes > 0 and rss > self.limit_bytes

    def should_replace(self, rss: int, now: float) -> bool:
        if not self.over(rss):
            return False
        return self._last_replaced is None or now - self._last_replaced >= self.interval_s

    def replaced(self, now: float) -> None:
        self._last_replaced = now


@dataclass(eq=False)
class WorkerSlot:
    """What the master knows about one worker process in slot ``id``.

    ``WorkerPool.slots[id]`` is the slot's current worker; during an RSS replacement a
    second one (the replacement starting, then the old one draining) lives in
    ``WorkerPool.extra`` with the same ``id``.
    """

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
    rss_replacements: int = 0
    last_heard: float = 0.0  # trio.current_time()
    # Listener names whose sockets this worker holds.
    listeners: tuple[str, ...] = ()
    # Serialises everything sent to the worker, so Hello/AddSockets/Epoch stay in order.
    lock: trio.Lock = field(default_factory=trio.Lock)
    ps: psutil.Process | None = None
    # The last epoch it refused (0: none), why, and when (wall clock).
    refused_epoch: int = 0
    refused_reason: str = ""
    refused_at: float = 0.0
    ready: trio.Event = field(default_factory=trio.Event)  # its first Ready arrived
    exited: trio.Event = field(default_factory=trio.Event)
    draining: bool = False
    # The cell of the shared connection count this process writes (proxyd.cx_limit).
    cx_cell: int = -1
    # The worker watchdog's alerts for the current silence (proxyd.master.watchdog).
    watchdog: WatchState = field(default_factory=WatchState)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def rss(self) -> int:
        """Resident memory in bytes; 0 when it is not running (or just exited)."""
        if self.ps is None or not self.alive:
            return 0
        try:
            return int(self.ps.memory_info().rss)
        except psutil.Error:
            return 0  # it exited between the check and the read

    def last_refusal(self) -> dict[str, object] | None:
        """The last epoch it refused, why and when; None when it refused none."""
        if not self.refused_epoch:
            return None
        return {"epoch": self.refused_epoch, "reason": self.refused_reason, "at": self.refused_at}

    def info(self) -> dict[str, object]:
        """For ``proxyctl status``: pid, memory, CPU, epoch, the last refused epoch."""
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
            "rss_replacements": self.rss_replacements,
            "draining": self.draining,
            "last_refusal": self.last_refusal(),
        }


def worker_argv(
    ipc_fd: int, worker_id: int, cx_limit: tuple[int, int, int] | None = None
) -> list[str]:
    """``<python> -m proxyd.worker --ipc-fd FD --worker-id I``, and with ``cx_limit``
    (fd, cell, cells) the shared connection count's ``--cx-limit-*`` arguments.

    ``$PROXYD_WORKER_COMMAND`` (split like a shell would) replaces the part before
    ``--ipc-fd``: a wrapper such as ``taskset -c 2 python3 -m proxyd.worker``, or a
    profiler.
    """
    command = os.environ.get(WORKER_COMMAND_ENV)
    base = shlex.split(command) if command else [sys.executable, "-m", "proxyd.worker"]
    argv = [*base, "--ipc-fd", str(ipc_fd), "--worker-id", str(worker_id)]
    if cx_limit is not None:
        fd, cell, cells = cx_limit
        argv += [
            "--cx-limit-fd",
            str(fd),
            "--cx-limit-cell",
            str(cell),
            "--cx-limit-cells",
            str(cells),
        ]
    return argv


class WorkerSupervisor:
    """Runs slot ``slot.id`` for as long as the master runs.

    Every worker process of the slot is served (read loop, heartbeat watchdog) by a
    task in this supervisor's nursery, so a replaced worker goes on being served while
    it drains. Only the exit of the slot's *current* worker counts as a restart.
    """

    def __init__(self, master: Master, slot: WorkerSlot) -> None:
        self.master = master
        self.pool: WorkerPool = master.workers
        self.slot = slot  # the current worker
        self._backoff = Backoff()
        self._ever_ready = False
        # Set when a replacement in progress has become current or given up.
        self._replacing: trio.Event | None = None
        self._swapped = trio.Event()  # set (and renewed) when a replacement takes over
        options = master.options
        self.rss_limit = RssLimit(
            options.worker_rss_limit_mb * 1024 * 1024,
            max(options.drain_time_s, RSS_REPLACE_MIN_INTERVAL_S),
        )
        self._nursery: trio.Nursery

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            memory_watch = trio.CancelScope()
            if self.rss_limit.limit_bytes > 0:
                self.master.stats.ensure_counters([RSS_REPLACEMENTS_STAT])
                nursery.start_soon(self._watch_memory, memory_watch)
            await self._supervise()
            memory_watch.cancel()
            # Replaced workers still draining are served here until they exit (the
            # master's stop drains, stops and kills them like any other).

    async def _supervise(self) -> None:
        slot = self.slot
        while not self.master.stopping:
            if not await self._launch(slot):
                return
            slot = await self._wait_current_exited()
            if self.master.stopping:
                return
            code = slot.process.returncode if slot.process is not None else 1
            ready = slot.ready.is_set()
            lived = time.monotonic() - slot.started_mono
            if code == EXIT_CANNOT_START:
                why = (
                    f": it refused epoch {slot.refused_epoch}: {slot.refused_reason}"
                    if slot.refused_epoch
                    else "; see its log above"
                )
                self.master.fatal(f"worker {slot.id} cannot start (exit code {code}){why}")
                return
            if not self._ever_ready and not ready:
                self.master.fatal(
                    f"worker {slot.id} did not become ready within {FIRST_READY_TIMEOUT_S:g} s "
                    f"(exit code {code})"
                )
                return
            self._ever_ready = self._ever_ready or ready
            delay = self._backoff.next_delay(lived)
            slot = self._successor_of(slot, restarts=slot.restarts + 1)
            self.pool.slots[slot.id] = self.slot = slot
            log.warning(
                "worker_restart", worker_id=slot.id, delay_s=delay, restarts=slot.restarts,
                epoch=self.master.epoch.number,
            )  # fmt: skip
            await trio.sleep(delay)

    async def _wait_current_exited(self) -> WorkerSlot:
        """Wait until the slot's current worker exits (following replacements); it."""
        while True:
            slot, swapped = self.slot, self._swapped
            await _first_of(slot.exited.wait, swapped.wait)
            if self.slot is not slot:
                continue  # replaced: watch the replacement
            if not slot.exited.is_set():
                continue
            if self._replacing is not None:
                # A replacement is starting: it takes over (or fails) before we decide.
                await self._replacing.wait()
            if self.slot is slot:
                return slot

    @staticmethod
    def _successor_of(slot: WorkerSlot, restarts: int) -> WorkerSlot:
        return WorkerSlot(slot.id, restarts=restarts, rss_replacements=slot.rss_replacements)

    async def _launch(self, slot: WorkerSlot) -> bool:
        """Start a worker process for ``slot`` and serve it in the background."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        counts = self.master.cx_counts
        slot.cx_cell = self.master.cx_cells.acquire()
        cx_limit = (counts.fd, slot.cx_cell, counts.cells) if slot.cx_cell > 0 else None
        if cx_limit is None:
            log.error("worker_no_cx_limit_cell", worker_id=slot.id)
        try:
            proc = await trio.lowlevel.open_process(
                worker_argv(child.fileno(), slot.id, cx_limit),
                pass_fds=(child.fileno(), counts.fd),
                env=child_environment(os.environ, keep_notify=False),
            )
        except OSError as exc:
            self.master.cx_cells.release(slot.cx_cell)
            parent.close()
            if slot is self.slot:
                self.master.fatal(f"cannot start worker {slot.id}: {exc}")
            else:  # a replacement: the current worker goes on serving
                log.error("worker_start_failed", worker_id=slot.id, error=str(exc))
            return False
        finally:
            child.close()
        slot.process, slot.pid = proc, proc.pid
        slot.channel = ipc.Channel(trio.socket.from_stdlib_socket(parent))
        slot.epoch = slot.sent_epoch = 0
        slot.started_at, slot.started_mono = time.time(), time.monotonic()
        slot.last_heard = trio.current_time()
        try:
            slot.ps = psutil.Process(proc.pid)
            slot.ps.cpu_percent(interval=None)  # primes the CPU counter
        except psutil.Error:
            slot.ps = None
        log.info("worker_started", worker_id=slot.id, pid=proc.pid, epoch=self.master.epoch.number)
        self.pool.notify()
        self._nursery.start_soon(self._serve, slot, proc, slot.channel)
        return True

    async def _serve(self, slot: WorkerSlot, proc: trio.Process, channel: ipc.Channel) -> None:
        """Talk to one worker process until it exits."""
        read_all = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_loop, slot, channel, proc, read_all)
                nursery.start_soon(self._watchdog, slot, proc)
                await self.pool.send_hello(slot)
                await proc.wait()
                # What it said last (EpochRefused before "cannot start") is read first.
                with trio.move_on_after(EXIT_AFTER_EOF_S):
                    await read_all.wait()
                nursery.cancel_scope.cancel()
        finally:
            channel.close()
            slot.channel = None
            # Gauges are per process (two may share a slot while one drains).
            self.master.stats.drop_worker(proc.pid)
            # Its connections closed with it: they no longer count toward the limit.
            self.master.cx_cells.release(slot.cx_cell)
            slot.cx_cell = -1
            self.pool.forget(slot)
            slot.exited.set()
            self.pool.notify()
        code = proc.returncode
        expected = code == 0 and (self.master.stopping or slot.draining)
        log.log(
            20 if expected else 30,
            "worker_exited", worker_id=slot.id, pid=proc.pid, exit_code=code,
            epoch=self.master.epoch.number, draining=slot.draining,
        )  # fmt: skip

    async def _read_loop(
        self, slot: WorkerSlot, channel: ipc.Channel, proc: trio.Process, read_all: trio.Event
    ) -> None:
        while True:
            try:
                msg, fds = await channel.receive()
            except (EOFError, ConnectionResetError):
                read_all.set()
                break  # the worker exited (or is exiting): the usual end
            except (OSError, ipc.IpcError) as exc:
                log.error("worker_channel_error", worker_id=slot.id, error=str(exc))
                read_all.set()
                break
            for fd in fds:  # a worker never sends fds; do not leak any it did
                os.close(fd)
            slot.last_heard = trio.current_time()
            if isinstance(msg, ipc.StatsReport):
                self.master.stats.add_report(proc.pid, msg.counters, msg.gauges)
                if msg.histograms:
                    self.master.stats.add_histograms(msg.histograms)
            elif isinstance(msg, ipc.HostOutcomes):
                self.master.outlier.add_report(msg.outcomes)
            elif isinstance(msg, ipc.Heartbeat):
                pass  # last_heard, above, is all it says
            elif isinstance(msg, ipc.Ready):
                slot.epoch = msg.epoch
                if not slot.ready.is_set():
                    slot.ready.set()
                    log.info("worker_ready", worker_id=slot.id, pid=msg.pid, epoch=msg.epoch)
                    actions = self.master.overload.actions
                    if actions != ipc.OverloadActions():  # in force before it started
                        self._nursery.start_soon(self.pool.send, slot, actions)
                self.master.epochs.applied()
                self.pool.notify()
            elif isinstance(msg, ipc.PicksPeeked):
                self.master.peeks.deliver(msg)
            elif isinstance(msg, ipc.EpochRefused):
                slot.refused_epoch, slot.refused_reason = msg.epoch, msg.reason
                slot.refused_at = time.time()
                self.master.epochs.refused(slot, msg)
                self.pool.notify()
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

    async def _watchdog(self, slot: WorkerSlot, proc: trio.Process) -> None:
        """Kill a worker that is not ready in time or stops sending heartbeats."""
        with trio.move_on_after(FIRST_READY_TIMEOUT_S):
            await slot.ready.wait()
        if not slot.ready.is_set():
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

    # -- memory -----------------------------------------------------------------------

    async def _watch_memory(self, scope: trio.CancelScope) -> None:
        """Sample the current worker's RSS; replace it when it is above the limit."""
        with scope:
            while True:
                await trio.sleep(RSS_CHECK_INTERVAL_S)
                slot = self.slot
                if self.master.stopping or not slot.ready.is_set() or self._replacing is not None:
                    continue
                rss = slot.rss()
                if self.rss_limit.should_replace(rss, trio.current_time()):
                    self.rss_limit.replaced(trio.current_time())
                    await self.replace(slot, rss)

    async def replace(self, old: WorkerSlot, rss: int) -> None:
        """Start a replacement for ``old`` on the same sockets; once it is Ready, make it
        the slot's worker and drain ``old`` (killed if it outlives the drain time)."""
        done = self._replacing = trio.Event()
        new = self._successor_of(old, restarts=old.restarts)
        new.rss_replacements += 1
        limit_mb = self.master.options.worker_rss_limit_mb
        log.warning(
            "worker_rss_over_limit", worker_id=old.id, pid=old.pid, rss=rss,
            limit_mb=limit_mb, epoch=self.master.epoch.number,
        )  # fmt: skip
        self.pool.extra.append(new)
        try:
            if not await self._launch(new):
                self.pool.forget(new)
                return
            with trio.move_on_after(FIRST_READY_TIMEOUT_S + 1.0):
                await _first_of(new.ready.wait, new.exited.wait)
            if not new.ready.is_set() or self.master.stopping or self.slot is not old:
                log.error(
                    "worker_rss_replacement_failed", worker_id=old.id, pid=old.pid,
                    new_pid=new.pid, reason="not ready" if not new.ready.is_set() else "stopping",
                )  # fmt: skip
                if new.alive and new.process is not None:
                    new.process.kill()
                return
            self.slot = new
            self.pool.swap(old, new)
            self._swapped.set()
            self._swapped = trio.Event()
            done.set()
            # An epoch published while the replacement started reaches it now.
            await self.pool.send_epoch(new)
            self.master.stats.add_counter(RSS_REPLACEMENTS_STAT)
            log.warning(
                "worker_rss_replaced", worker_id=old.id, old_pid=old.pid, new_pid=new.pid,
                rss=rss, limit_mb=limit_mb, epoch=self.master.epoch.number,
            )  # fmt: skip
        finally:
            self._replacing = None
            done.set()
        self._nursery.start_soon(self._drain_replaced, old)

    async def _drain_replaced(self, old: WorkerSlot) -> None:
        drain_s = self.master.options.drain_time_s
        old.draining = True
        if await self.pool.send(old, ipc.Drain(drain_s)):
            with trio.move_on_after(drain_s + DRAIN_GRACE_S):
                await old.exited.wait()
        if old.alive and old.process is not None:
            log.warning("worker_killed", worker_id=old.id, pid=old.pid, reason="drain time over")
            old.process.kill()


async def _first_of(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return as soon as any of ``waits`` returns."""
    async with trio.open_nursery() as nursery:
        for wait in waits:

            async def one(wait: Callable[[], Awaitable[object]] = wait) -> None:
                await wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(one)
