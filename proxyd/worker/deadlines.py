"""Exact per-stream and per-connection deadlines on trio's clock.

Every timeout of the request path (idle, request headers, request, route, stream idle,
drain) is a :class:`Deadline`: a small object owned by one connection or stream that
knows when it is due, why (:class:`DeadlineKind`) and what to cancel when it fires (a
``trio.CancelScope`` around only what it belongs to). :class:`Timers` keeps them in one
heap per worker and sleeps, in one task, until the earliest is due: nothing is scanned
periodically, an idle worker sleeps until its first idle timeout, and a deadline fires
when trio's clock reaches it (so tests can run it on ``trio.testing.MockClock``).

Moving a deadline is the common operation (every request moves its connection's
deadline two or three times) and must cost next to nothing: a cancel scope's own
deadline costs several microseconds to enter or move, so the heap here is lazy. A
:class:`Deadline` has at most a few entries in the heap: moving it later only updates
the object (its entry, when it comes due, is pushed again at the new time); moving it
earlier than its earliest entry pushes one more. Entries of deadlines that were cleared
are dropped when they come due, and the heap is rebuilt when stale entries outnumber
live ones, so memory stays proportional to the open connections.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections.abc import Callable

import trio

INF = math.inf


class DeadlineKind(enum.Enum):
    """Why a deadline is set; its value is the name of Envoy's setting."""

    IDLE = "idle_timeout"  # waiting for the next request (close quietly)
    REQUEST_HEADERS = "request_headers_timeout"  # reading a head (408)
    REQUEST = "request_timeout"  # the whole request must have arrived (408)
    ROUTE = "timeout"  # the route's timeout, waiting for the upstream (504 UT)
    STREAM_IDLE = "stream_idle_timeout"  # nothing moved (408 / 504 SI, or a reset)
    DRAIN = "drain_timeout"  # a drained listener's idle connection (close quietly)


class Deadline:
    """When something must end, and why. ``fire`` is called once it is due.

    ``at`` is trio's clock (``INF`` for none); change it only with :meth:`Timers.set`
    and :meth:`Timers.clear`."""

    __slots__ = ("at", "kind", "fire", "queued_at")

    def __init__(self, fire: Callable[[Deadline], None]) -> None:
        self.at = INF
        self.kind = DeadlineKind.IDLE
        self.fire = fire
        # The earliest time this deadline has an entry in the heap (INF: none known).
        self.queued_at = INF


class Timers:
    """The worker's deadlines: a lazy heap and one task (:meth:`run`) that fires them."""

    __slots__ = ("_heap", "_seq", "_wake", "_armed", "_prune_at", "now")

    # Rebuild the heap when it holds this many more entries than twice the live ones.
    PRUNE_SLACK = 1024

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._seq = 0
        # The cancel scope the timer task sleeps in; its deadline is the heap's first.
        self._wake: trio.CancelScope | None = None
        self._armed = 0
        self._prune_at = self.PRUNE_SLACK
        # trio's clock: trio.current_time until run() binds the clock's own method
        # (cheaper on the request path).
        self.now: Callable[[], float] = trio.current_time

    def statistics(self) -> dict[str, int]:
        return {"entries": len(self._heap), "armed": self._armed}

    def set(self, d: Deadline, kind: DeadlineKind, seconds: float) -> None:
        """``d`` is due ``seconds`` from now (INF: never) because of ``kind``."""
        if seconds == INF:
            self.clear(d)
            return
        at = self.now() + seconds
        if d.at == INF:
            self._armed += 1
        d.at = at
        d.kind = kind
        if at < d.queued_at:
            self._push(d, at)

    def set_at(self, d: Deadline, kind: DeadlineKind, at: float) -> None:
        """``d`` is due at ``at`` on trio's clock."""
        if at == INF:
            self.clear(d)
            return
        if d.at == INF:
            self._armed += 1
        d.at = at
        d.kind = kind
        if at < d.queued_at:
            self._push(d, at)

    def clear(self, d: Deadline) -> None:
        if d.at != INF:
            self._armed -= 1
            d.at = INF

    def _push(self, d: Deadline, at: float) -> None:
        d.queued_at = at
        self._seq += 1
        heap = self._heap
        heapq.heappush(heap, (at, self._seq, d))
        wake = self._wake
        if wake is not None and at < wake.deadline:
            wake.deadline = at
        if len(heap) > self._prune_at:
            self._prune()

    def _prune(self) -> None:
        """Drop entries of cleared deadlines and duplicates: one entry per live one."""
        live: dict[int, Deadline] = {}
        for _, _, d in self._heap:
            d.queued_at = INF
            if d.at != INF:
                live[id(d)] = d
        self._heap = []
        for d in live.values():
            self._seq += 1
            d.queued_at = d.at
            self._heap.append((d.at, self._seq, d))
        heapq.heapify(self._heap)
        self._prune_at = 2 * len(self._heap) + self.PRUNE_SLACK
        if self._wake is not None:
            self._wake.deadline = self._heap[0][0] if self._heap else INF

    def fire_due(self, now: float) -> None:
        """Fire every deadline due at ``now``; re-queue entries whose deadline moved."""
        while self._heap and self._heap[0][0] <= now:
            at, _, d = heapq.heappop(self._heap)
            if d.queued_at == at:
                d.queued_at = INF
            if d.at <= now:
                self._armed -= 1
                d.at = INF
                d.fire(d)
            elif d.at != INF and d.at < d.queued_at:
                self._push(d, d.at)

    async def run(self) -> None:
        """The timer task: sleep until the earliest deadline, fire what is due, repeat."""
        self.now = trio.lowlevel.current_clock().current_time
        while True:
            with trio.CancelScope(deadline=self._heap[0][0] if self._heap else INF) as wake:
                self._wake = wake
                await trio.sleep_forever()
            self._wake = None
            self.fire_due(trio.current_time())
