"""``proxyctl explain``'s question to the workers: which host would each one pick next.

:meth:`PickPeeks.ask` sends ``ipc.PeekPicks`` to every current, ready worker and waits
(a bounded time) for their ``ipc.PicksPeeked`` answers, which the worker supervisor's
read loop hands to :meth:`PickPeeks.deliver`. A worker that is gone, busy past the
timeout, or restarting is simply missing from the answer.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from proxyd import ipc

if TYPE_CHECKING:
    from proxyd.master.worker_pool import WorkerPool


@dataclass
class _Question:
    expected: int
    answers: dict[int, ipc.PicksPeeked] = field(default_factory=dict)
    done: trio.Event = field(default_factory=trio.Event)


class PickPeeks:
    def __init__(self) -> None:
        self._tokens = itertools.count(1)
        self._open: dict[int, _Question] = {}

    async def ask(
        self, workers: WorkerPool, clusters: tuple[str, ...], timeout_s: float = 2.0
    ) -> dict[int, ipc.PicksPeeked]:
        """Worker id → its answer, for the workers that answered within ``timeout_s``."""
        token = next(self._tokens)
        slots = [s for s in workers.slots if s.alive and s.ready.is_set()]
        question = self._open[token] = _Question(len(slots))
        try:
            for slot in slots:
                if not await workers.send(slot, ipc.PeekPicks(token, clusters)):
                    question.expected -= 1
            if len(question.answers) >= question.expected:
                question.done.set()
            with trio.move_on_after(timeout_s):
                await question.done.wait()
        finally:
            del self._open[token]
        return dict(question.answers)

    def deliver(self, msg: ipc.PicksPeeked) -> None:
        """A worker's answer (late answers, to a question given up on, are dropped)."""
        question = self._open.get(msg.token)
        if question is None:
            return
        question.answers[msg.worker_id] = msg
        if len(question.answers) >= question.expected:
            question.done.set()
