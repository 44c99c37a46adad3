"""The master's workers as a group: who is in which slot, what they are sent, stopping.

:class:`WorkerPool` holds one :class:`~proxyd.master.workers.WorkerSlot` per slot (the
slot's *current* worker) and the *extra* workers that share a slot with it for a while:
a replacement that is starting, or a replaced worker that is draining (see
``WorkerSupervisor.replace``). Messages to a worker go through :meth:`send_hello` and
:meth:`send_epoch`; :meth:`stop` is the workers' part of a graceful or fast stop.

``wait_changed`` wakes whoever waits for "a worker started, exited or acknowledged an
epoch" (the master's live check, reloads waiting for acknowledgements, the stop).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import trio

from proxyd import ipc
from proxyd.log import get_logger
from proxyd.master.workers import DRAIN_GRACE_S, WorkerSlot

if TYPE_CHECKING:
    from proxyd.master.master import Master

# How long workers get to exit after Stop before they are killed.
STOP_GRACE_S = 2.0

log = get_logger("proxyd.master")


class WorkerPool:
    def __init__(self, master: Master, concurrency: int) -> None:
        self.master = master
        self.slots = [WorkerSlot(i) for i in range(concurrency)]
        # Workers beside their slot's current one: starting replacements, draining ones.
        self.extra: list[WorkerSlot] = []
        self._changed = trio.Event()  # replaced after each set

    # -- who is there -----------------------------------------------------------------

    def processes(self) -> Iterator[WorkerSlot]:
        """Every worker process the master started and still tracks."""
        yield from self.slots
        yield from self.extra

    def any_alive(self) -> bool:
        return any(w.alive for w in self.processes())

    def swap(self, old: WorkerSlot, new: WorkerSlot) -> None:
        """``new`` becomes its slot's current worker; ``old`` (if alive) drains beside it."""
        if new in self.extra:
            self.extra.remove(new)
        self.slots[new.id] = new
        if old.alive and old not in self.extra:
            self.extra.append(old)
        self.notify()

    def forget(self, worker: WorkerSlot) -> None:
        """A worker outside the slots exited (or was never adopted)."""
        if worker in self.extra:
            self.extra.remove(worker)

    def notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        """Wait until a worker starts, exits or acknowledges an epoch."""
        await self._changed.wait()

    async def wait_epoch_acked(self, number: int) -> None:
        """Wait until every live current worker applied epoch ``number`` (or a later one).

        Draining workers do not count: they accept nothing new."""
        while any(s.alive and s.epoch < number for s in self.slots):
            await self.wait_changed()

    async def wait_epoch_answered(self, number: int) -> None:
        """Wait until every live current worker applied epoch ``number`` (or a later
        one) or refused it."""
        while self.unanswered(number):
            await self.wait_changed()

    def unanswered(self, number: int) -> list[WorkerSlot]:
        """Live current workers that neither applied nor refused epoch ``number``."""
        return [s for s in self.slots if s.alive and max(s.epoch, s.refused_epoch) < number]

    def all_applied(self, number: int) -> bool:
        """Every live current worker runs epoch ``number`` (or a later one)."""
        return all(s.epoch >= number for s in self.slots if s.alive)

    async def wait_exited(self) -> None:
        while self.any_alive():
            await self.wait_changed()

    # -- what they are sent -----------------------------------------------------------

    async def send_hello(self, slot: WorkerSlot) -> None:
        """First words to a new worker: its sockets, then the current epoch."""
        master = self.master
        async with slot.lock:
            channel = slot.channel
            if channel is None:
                return
            names = tuple(listener.name for listener in master.epoch.listeners)
            fds = master.sockets.fds_for(slot.id, names)
            try:
                await channel.send(ipc.Hello(slot.id, ipc.WIRE_VERSION, names, len(fds)), fds)
                slot.listeners = names
                await channel.send(ipc.EpochMsg(master.epoch))
                slot.sent_epoch = master.epoch.number
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.warning("worker_send_failed", worker_id=slot.id, error=str(exc))

    async def send_epoch(self, slot: WorkerSlot) -> None:
        """The master's current epoch, unless ``slot`` has it already."""
        master = self.master
        async with slot.lock:
            channel, epoch = slot.channel, master.epoch
            if channel is None or slot.sent_epoch >= epoch.number:
                return
            wanted = tuple(listener.name for listener in epoch.listeners)
            missing = tuple(n for n in wanted if n not in slot.listeners)
            try:
                if missing:
                    fds = master.sockets.fds_for(slot.id, missing)
                    await channel.send(ipc.AddSockets(missing, len(fds)), fds)
                await channel.send(ipc.EpochMsg(epoch))
                slot.sent_epoch = epoch.number
                slot.listeners = wanted
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.warning("worker_send_failed", worker_id=slot.id, error=str(exc))

    async def publish(self) -> None:
        """Send the current epoch to every current worker."""
        async with trio.open_nursery() as nursery:
            for slot in self.slots:
                nursery.start_soon(self.send_epoch, slot)

    async def send(self, worker: WorkerSlot, msg: Any) -> bool:
        """One message to one worker; False when it is gone already."""
        async with worker.lock:
            if worker.channel is None:
                return False
            try:
                await worker.channel.send(msg)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                return False  # the worker is gone already; its supervisor sees the exit
        return True

    async def broadcast(self, msg: Any) -> None:
        for worker in list(self.processes()):
            await self.send(worker, msg)

    # -- stopping ---------------------------------------------------------------------

    async def stop(self, drain_time_s: float | None, escalated: trio.Event) -> None:
        """Drain every worker within ``drain_time_s`` (None: no drain, or ``escalated``
        cuts it short), then Stop, then kill whatever is left."""
        epoch = self.master.epoch.number
        if drain_time_s is not None:
            await self.broadcast(ipc.Drain(drain_time_s))
            with trio.move_on_after(drain_time_s + DRAIN_GRACE_S):
                async with trio.open_nursery() as race:

                    async def exited() -> None:
                        await self.wait_exited()
                        race.cancel_scope.cancel()

                    async def fast() -> None:
                        await escalated.wait()
                        race.cancel_scope.cancel()

                    race.start_soon(exited)
                    race.start_soon(fast)
        if self.any_alive():
            log.info("master_stopping_workers", epoch=epoch)
            await self.broadcast(ipc.Stop())
            with trio.move_on_after(STOP_GRACE_S):
                await self.wait_exited()
        for worker in list(self.processes()):
            if worker.alive and worker.process is not None:
                log.warning("worker_killed", worker_id=worker.id, pid=worker.pid)
                worker.process.kill()
        with trio.move_on_after(STOP_GRACE_S):
            await self.wait_exited()

    # -- views ------------------------------------------------------------------------

    def rss_total(self) -> int:
        """Resident memory of every worker (psutil.Error when one exited meanwhile)."""
        return sum(w.ps.memory_info().rss for w in self.processes() if w.ps is not None and w.alive)
