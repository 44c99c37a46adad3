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
import time
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
    DRAIN = "drain_timeout"  # a drained listener's or connection's idle connection: closed
    CONNECTION_DURATION = "max_connection_duration"  # the connection drains
    STREAM_DURATION = "max_stream_duration"  # 408 / 504 "downstream duration timeout"


class Deadline:
    """When something must end, and why. ``fire`` is called once it is due.

    ``at`` is on the clock of :attr:`Timers.now` (``INF`` for none); change it only
    with :meth:`Timers.set` and :meth:`Timers.clear`."""

    __slots__ = ("at", "kind", "fire", "queued_at")

    def __init__(self, fire: Callable[[Deadline], None]) -> None:
        self.at = INF
        self.kind = DeadlineKind.IDLE
        self.fire = fire
        # The earliest time this deadline has an entry in the heap (INF: none known).
        self.queued_at = INF


class Timers:
    """The worker's deadlines: a lazy heap and one task (:meth:`run`) that fires them."""

    __slots__ = ("_heap", "_seq", "_wake", "_armed", "_prune_at", "now", "_to_trio")

    # Rebuild the heap when it holds this many more entries than twice the live ones.
    PRUNE_SLACK = 1024

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._seq = 0
        # The cancel scope the timer task sleeps in; its deadline is the heap's first.
        self._wake: trio.CancelScope | None = None
        self._armed = 0
        self._prune_at = self.PRUNE_SLACK
        # The timers' clock: trio's until run() binds a cheaper one. Under trio's
        # SystemClock (perf_counter plus a fixed offset) it is time.perf_counter itself,
        # a C call on the request path; ``_to_trio`` is what to add to get trio's time.
        self.now: Callable[[], float] = trio.current_time
        self._to_trio = 0.0

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
        """``d`` is due at ``at`` on the timers' clock (:attr:`now`)."""
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
        if wake is not None and at + self._to_trio < wake.deadline:
            wake.deadline = at + self._to_trio
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
            self._wake.deadline = self._heap[0][0] + self._to_trio if self._heap else INF

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
        self._bind_clock()
        while True:
            first = self._heap[0][0] + self._to_trio if self._heap else INF
            with trio.CancelScope(deadline=first) as wake:
                self._wake = wake
                await trio.sleep_forever()
            self._wake = None
            self.fire_due(self.now())

    def _bind_clock(self) -> None:
        """Use time.perf_counter when trio's clock is it plus a fixed offset (trio's
        SystemClock), else the clock's own method (a test's MockClock). Deadlines
        already set keep their meaning: they move by the difference."""
        clock = trio.lowlevel.current_clock()
        offset = getattr(clock, "offset", None)
        now: Callable[[], float] = clock.current_time
        to_trio = 0.0
        if (
            isinstance(offset, float)
            and abs(clock.current_time() - (time.perf_counter() + offset)) < 1e-3
        ):
            now, to_trio = time.perf_counter, offset
        shift = self._to_trio - to_trio
        if shift:
            self._heap = [(at + shift, seq, d) for at, seq, d in self._heap]
            for d in {id(d): d for _, _, d in self._heap}.values():
                if d.at != INF:
                    d.at += shift
                if d.queued_at != INF:
                    d.queued_at += shift
        self.now = now
        self._to_trio = to_trio
