"""proxyd.worker.deadlines on trio's virtual clock: exact firing, moves, clears, pruning."""

from __future__ import annotations

import trio
import trio.testing

from proxyd.worker.deadlines import INF, Deadline, DeadlineKind, Timers


def run(fn) -> None:
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def test_fires_exactly_when_due_and_only_once() -> None:
    fired: list[tuple[float, DeadlineKind]] = []

    async def main() -> None:
        timers = Timers()
        d = Deadline(lambda d: fired.append((trio.current_time(), d.kind)))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timers.run)
            await trio.sleep(0)
            t0 = trio.current_time()
            timers.set(d, DeadlineKind.ROUTE, 2.5)
            await trio.sleep(10)
            assert fired == [(t0 + 2.5, DeadlineKind.ROUTE)]
            assert d.at == INF
            nursery.cancel_scope.cancel()

    run(main)


def test_moving_later_and_earlier_and_clearing() -> None:
    fired: list[tuple[str, float]] = []

    async def main() -> None:
        timers = Timers()
        a = Deadline(lambda d: fired.append(("a", trio.current_time())))
        b = Deadline(lambda d: fired.append(("b", trio.current_time())))
        c = Deadline(lambda d: fired.append(("c", trio.current_time())))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timers.run)
            await trio.sleep(0)
            t0 = trio.current_time()
            timers.set(a, DeadlineKind.IDLE, 5)
            timers.set(a, DeadlineKind.IDLE, 8)  # later: the same entry, re-queued at 5
            timers.set(b, DeadlineKind.IDLE, 3600)
            timers.set(b, DeadlineKind.ROUTE, 1)  # earlier than the timer's sleep
            timers.set(c, DeadlineKind.ROUTE, 2)
            timers.clear(c)
            await trio.sleep(20)
            assert fired == [("b", t0 + 1), ("a", t0 + 8)]
            assert timers.statistics()["armed"] == 0
            nursery.cancel_scope.cancel()

    run(main)


def test_idle_timers_do_no_periodic_work() -> None:
    """With one far deadline the timer task wakes once, when it is due."""
    wakes = 0

    class CountingTimers(Timers):
        def fire_due(self, now: float) -> None:
            nonlocal wakes
            wakes += 1
            super().fire_due(now)

    async def main() -> None:
        timers = CountingTimers()
        d = Deadline(lambda d: None)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timers.run)
            await trio.sleep(0)
            timers.set(d, DeadlineKind.IDLE, 3600)
            await trio.sleep(3599)
            assert wakes == 0
            await trio.sleep(2)
            assert wakes == 1
            nursery.cancel_scope.cancel()

    run(main)


def test_stale_entries_are_pruned() -> None:
    async def main() -> None:
        timers = Timers()
        ds = [Deadline(lambda d: None) for _ in range(100)]
        for _ in range(200):
            for d in ds:
                timers.set(d, DeadlineKind.ROUTE, 100)
                timers.clear(d)
                timers.set(d, DeadlineKind.ROUTE, 1)  # earlier than its entry: a push
                timers.set(d, DeadlineKind.IDLE, 1000)
                timers.clear(d)
        stats = timers.statistics()
        assert stats["armed"] == 0
        assert stats["entries"] <= 2 * 100 + Timers.PRUNE_SLACK + 1

    run(main)


def test_deadline_cancels_only_its_scope() -> None:
    """Two streams: the one whose deadline passes is cancelled, the other finishes."""
    results: dict[str, str] = {}

    async def stream(name: str, timers: Timers, timeout: float, work: float) -> None:
        with trio.CancelScope() as scope:
            d = Deadline(lambda d: scope.cancel())
            timers.set(d, DeadlineKind.ROUTE, timeout)
            await trio.sleep(work)
            timers.clear(d)
            results[name] = "done"
        if scope.cancelled_caught:
            results[name] = f"timed out: {d.kind.value}"

    async def main() -> None:
        timers = Timers()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timers.run)
            async with trio.open_nursery() as streams:
                streams.start_soon(stream, "slow", timers, 1.0, 5.0)
                streams.start_soon(stream, "fast", timers, 1.0, 0.5)
            nursery.cancel_scope.cancel()
        assert results == {"slow": "timed out: timeout", "fast": "done"}

    run(main)
