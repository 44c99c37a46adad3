"""How an epoch reaches the workers, and what happens when one is refused.

:meth:`EpochPublisher.publish` is the one place the master publishes an epoch (a reload,
an xDS update, a DNS answer, a health or outlier change): it checks the epoch the way a
worker will compile it (:mod:`proxyd.protocol.epoch_check`), so a worker is never sent
one it would refuse; an epoch that fails raises ``EpochRejected`` and nothing changes.

What only a worker can find out (an access-log file it cannot open) it reports with
``ipc.EpochRefused`` and goes on running the epoch it had. The master records it on the
worker's slot (``proxyctl status``, ``/server_info``), logs it once
(``worker_epoch_refused``), counts it (:data:`EPOCH_REFUSED_STAT`) and *reverts*: the
last epoch every worker applied is published again under a new number, so the master
and its workers agree and a worker started later gets what the others run. A reload
waits for every worker's ``Ready`` or ``EpochRefused`` (:meth:`wait_answered`, at most
:data:`ACK_TIMEOUT_S`) and fails naming the workers and the reason.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import trio

from proxyd import ipc
from proxyd.epoch import Epoch
from proxyd.log import get_logger
from proxyd.protocol.epoch_check import EpochChecker, EpochRejected
from proxyd.worker.stats import WORKER_EXCEPTIONS_STAT

if TYPE_CHECKING:
    from proxyd.master.master import Master
    from proxyd.master.workers import WorkerSlot

# How long a reload (or an xDS update, or a revert) waits for every worker to apply or
# refuse the new epoch.
ACK_TIMEOUT_S = 10.0
# Counted each time a worker refuses an epoch (EpochRefused).
EPOCH_REFUSED_STAT = "server.proxyd.worker_epoch_refused"

log = get_logger("proxyd.master")


def refusal_text(refused: list[WorkerSlot]) -> str:
    """ "workers 0 (pid 11), 1 (pid 12) refused epoch 7: <reason>", one part per reason."""
    by_reason: dict[str, list[str]] = {}
    for w in refused:
        by_reason.setdefault(w.refused_reason, []).append(f"{w.id} (pid {w.pid})")
    number = refused[0].refused_epoch
    return "; ".join(
        f"worker{'s' if len(ws) > 1 else ''} {', '.join(ws)} refused epoch {number}: {reason}"
        for reason, ws in by_reason.items()
    )


class EpochPublisher:
    def __init__(self, master: Master) -> None:
        self.master = master
        # Held while an epoch is built and published (reload, xDS, DNS, health, hot
        # restart), so epochs go out one at a time and in order.
        self.lock = trio.Lock()
        self.checker = EpochChecker()
        # The last epoch every worker applied, and the template it came from: what a
        # refused epoch is reverted to.
        self.good = master.epoch
        self.good_template = master.epoch
        self.nursery: trio.Nursery | None = None  # the master's, once it runs
        self._last_rejection = ""
        master.stats.ensure_counters([EPOCH_REFUSED_STAT, WORKER_EXCEPTIONS_STAT])

    async def publish(self, epoch: Epoch, reason: str) -> None:
        """Check ``epoch`` as a worker will compile it (EpochRejected, and nothing
        changes, when a worker would refuse it), make it the master's, send it to
        every worker."""
        self.checker.check(epoch)
        self.master.set_epoch(epoch)
        log.info(
            "epoch_published", epoch=epoch.number, reason=reason,
            listeners=len(epoch.listeners), clusters=len(epoch.clusters),
        )  # fmt: skip
        await self.master.workers.publish()

    def rejected(self, reason: str, exc: EpochRejected) -> None:
        """An epoch built for ``reason`` (dns, health_check, xds, ...) would be refused
        by the workers: the running one stays. Logged once while the error repeats."""
        if str(exc) != self._last_rejection:
            self._last_rejection = str(exc)
            log.error("epoch_rejected", reason=reason, error=str(exc), epoch=self.master.epoch.number)  # fmt: skip

    # -- the workers' answers -----------------------------------------------------------

    def applied(self) -> None:
        """A worker sent Ready: once every worker runs the current epoch, it is what a
        refused epoch is reverted to, and the log says so (``epoch_applied``, with each
        worker's pid)."""
        m = self.master
        if m.epoch.number and self.good is not m.epoch and m.workers.all_applied(m.epoch.number):
            self.good, self.good_template = m.epoch, m.template
            log.info(
                "epoch_applied", epoch=m.epoch.number,
                workers={str(w.id): w.pid for w in m.workers.slots if w.alive},
            )  # fmt: skip

    def refused(self, worker: WorkerSlot, msg: ipc.EpochRefused) -> None:
        """``worker`` refused epoch ``msg.epoch`` and runs the one it had (its slot has
        the refusal already): log it, and revert the others, unless whoever published
        it waits for the answers and reverts itself."""
        m = self.master
        m.stats.add_counter(EPOCH_REFUSED_STAT)
        log.error(
            "worker_epoch_refused", worker_id=worker.id, pid=msg.pid, epoch=msg.epoch,
            running_epoch=worker.epoch, reason=msg.reason,
        )  # fmt: skip
        started = worker.ready.is_set()  # else it exits with "cannot start"
        if started and msg.epoch == m.epoch.number and not m.stopping and self.nursery:
            self.nursery.start_soon(self._revert_refused, msg.epoch)

    async def _revert_refused(self, number: int) -> None:
        async with self.lock:
            if not self.master.stopping and self.master.epoch.number == number:
                await self.revert(number)

    async def wait_answered(self, number: int) -> list[WorkerSlot]:
        """Wait (at most ACK_TIMEOUT_S) until every worker applied or refused epoch
        ``number``; those that refused it."""
        workers = self.master.workers
        with trio.move_on_after(ACK_TIMEOUT_S):
            await workers.wait_epoch_answered(number)
        slow = workers.unanswered(number)
        if slow:
            log.warning(
                "epoch_not_acknowledged", epoch=number, timeout_s=ACK_TIMEOUT_S,
                workers=[w.id for w in slow],
            )  # fmt: skip
        return [w for w in workers.slots if w.refused_epoch == number]

    async def revert(self, refused: int) -> None:
        """Workers refused epoch ``refused``: publish the last epoch every worker
        applied again, under a new number (called with :attr:`lock` held)."""
        m = self.master
        if not self.good.number:
            return  # no epoch was ever applied everywhere: nothing to go back to
        m.template = self.good_template
        epoch = dataclasses.replace(self.good, number=m.epoch.number + 1)
        await self.publish(epoch, reason=f"revert: epoch {refused} refused")
        await self.wait_answered(epoch.number)
        self.close_unwanted(epoch.number)

    # -- listening sockets --------------------------------------------------------------

    def close_unwanted(self, number: int) -> tuple[str, ...]:
        """Close the sockets of listeners the current epoch (``number``) does not have:
        now if every worker applied it, else once they all have. Their names."""
        m = self.master
        wanted = {listener.name for listener in m.epoch.listeners}
        removed = tuple(n for n in m.sockets.names() if n not in wanted)
        if m.workers.all_applied(number):
            for name in removed:
                m.sockets.close(name)
        elif removed and self.nursery is not None:
            # Closing now could pull a socket from under a worker still on the old
            # epoch; close once everyone has moved on.
            self.nursery.start_soon(self._close_when_acked, number, removed)
        return removed

    async def _close_when_acked(self, number: int, names: tuple[str, ...]) -> None:
        m = self.master
        await m.workers.wait_epoch_acked(number)
        wanted = {listener.name for listener in m.epoch.listeners}
        for name in names:
            if name not in wanted:
                m.sockets.close(name)
