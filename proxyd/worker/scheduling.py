"""The two trio scheduler costs a proxied request pays at each of its waits, made
cheaper without changing what trio does.

A keep-alive HTTP/1 request suspends its task twice (:func:`yield_now` before reading
the upstream's answer and before reading the client's next request), and trio's run
loop pays for each step of a task:

* ``"before_task_step" in runner.instruments`` and two more such tests per step: trio
  keeps its instruments in a ``collections.UserDict`` subclass, so every ``in`` is a
  Python-level ``__contains__`` call (about six a request). :func:`use_dict_instruments`
  gives the running loop the same instruments in a ``dict`` subclass with the same
  methods, whose ``in`` is the dict's own (C).
* :func:`trio.lowlevel.cancel_shielded_checkpoint` is a coroutine function awaiting a
  generator that yields trio's message: two frames and an ``Outcome.unwrap()`` call
  per yield. :func:`yield_now` yields the same message from one generator.

Both rely on names inside ``trio._core``; each is used only when those names are what
this module expects, and otherwise trio's own public path is (the behaviour is the
same either way; tests/unit/test_scheduling.py checks both).
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import trio
from outcome import Value as _Value


def _private(module: str, name: str) -> Any:
    """trio's private ``module.name``, or None where trio's layout differs."""
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:  # pragma: no cover - another trio layout
        return None


_trio_run: Any = _private("trio._core", "_run")
_Instruments: Any = _private("trio._core._instrumentation", "Instruments")
_CSC: Any = _private("trio._core._traps", "CancelShieldedCheckpoint")


def _make_yield_now() -> Callable[[], Awaitable[None]]:
    if _CSC is None:  # pragma: no cover - another trio layout
        return trio.lowlevel.cancel_shielded_checkpoint

    @types.coroutine
    def yield_now() -> Generator[Any, Any, None]:
        """trio.lowlevel.cancel_shielded_checkpoint in one generator: a trip through the
        run queue, not a cancellation point."""
        sent = yield _CSC
        if sent.__class__ is not _Value:
            sent.unwrap()  # (trio sends Value(None) after this message)

    return yield_now


yield_now = _make_yield_now()


if _Instruments is not None:

    class DictInstruments(dict[str, dict[Any, None]]):
        """trio's ``Instruments`` with a dict's own ``in``: same hooks, same methods."""

        __slots__ = ()

        @property
        def data(self) -> DictInstruments:
            return self

        add_instrument = _Instruments.add_instrument
        remove_instrument = _Instruments.remove_instrument
        call = _Instruments.call


def use_dict_instruments() -> bool:
    """Give the running trio loop its instruments in a ``dict``; True when it did (it
    does nothing where trio's layout is not the one expected)."""
    if _trio_run is None or _Instruments is None:  # pragma: no cover
        return False
    runner: Any = getattr(_trio_run.GLOBAL_RUN_CONTEXT, "runner", None)
    current: Any = getattr(runner, "instruments", None)
    if type(current) is not _Instruments or not isinstance(getattr(current, "data", None), dict):
        return False
    try:
        runner.instruments = DictInstruments(current.data)
    except AttributeError:  # pragma: no cover - a runner that cannot take it
        return False
    return True
