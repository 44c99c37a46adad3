"""proxyd.worker.scheduling: the cheaper yield and the dict instruments behave as trio's."""

from __future__ import annotations

import trio

from proxyd.worker.scheduling import DictInstruments, use_dict_instruments, yield_now


def test_yield_now_lets_other_tasks_run_first() -> None:
    order: list[str] = []

    async def other() -> None:
        order.append("other")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            order.append("before")
            # (trio shuffles each batch of ready tasks: two yields put this task in a
            # batch after the new task's.)
            assert await yield_now() is None
            await yield_now()
            order.append("after")

    trio.run(main)
    assert order == ["before", "other", "after"]


def test_yield_now_is_not_a_cancellation_point() -> None:
    reached: list[bool] = []

    async def main() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            await yield_now()  # shielded: goes on
            reached.append(True)
            await trio.lowlevel.checkpoint()  # a real checkpoint: cancelled here
            reached.append(False)
        assert scope.cancelled_caught

    trio.run(main)
    assert reached == [True]


class Recorder(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps = 0
        self.scheduled = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1

    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        self.scheduled += 1


def test_dict_instruments_keep_instruments_working() -> None:
    at_start = Recorder()
    added = Recorder()

    async def main() -> None:
        assert use_dict_instruments()
        runner = trio._core._run.GLOBAL_RUN_CONTEXT.runner
        assert type(runner.instruments) is DictInstruments
        assert "before_task_step" in runner.instruments  # the one given to trio.run
        trio.lowlevel.add_instrument(added)
        for _ in range(3):
            await yield_now()
        trio.lowlevel.remove_instrument(added)
        steps = added.steps
        await yield_now()
        assert added.steps == steps  # removed: called no more
        assert "task_scheduled" in runner.instruments  # at_start's is still there
        trio.lowlevel.remove_instrument(at_start)
        assert "before_task_step" not in runner.instruments

    trio.run(main, instruments=[at_start])
    assert at_start.steps >= 4 and at_start.scheduled >= 4
    assert added.steps >= 3 and added.scheduled >= 3


def test_failing_instrument_is_removed_as_trio_does() -> None:
    class Broken(trio.abc.Instrument):
        calls = 0

        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            Broken.calls += 1
            raise RuntimeError("broken instrument")

    async def main() -> None:
        use_dict_instruments()
        trio.lowlevel.add_instrument(Broken())
        await yield_now()
        await yield_now()

    trio.run(main)
    assert Broken.calls == 1
