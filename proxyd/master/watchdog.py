"""Envoy's watchdogs (``watchdogs.worker_watchdog``, ``main_thread_watchdog``) in
proxyd's process model.

Envoy's guard dog checks, every *loop interval* (the smallest enabled timeout), when
each thread's event loop last touched its watchdog. proxyd's workers are processes:

* **worker watchdog** (:class:`WorkerWatchdog`, a task in the master): a worker's loop
  sends a ``Heartbeat`` every half loop interval (``Epoch.heartbeat_interval_s``), and
  the master checks every loop interval how long each ready worker has been silent. A
  silence longer than ``miss_timeout`` counts once in ``workers.watchdog_miss`` and
  ``server.worker_<id>.watchdog_miss``, longer than ``megamiss_timeout`` once in the
  ``watchdog_mega_miss`` pair (once per silence, as Envoy counts). Longer than
  ``kill_timeout`` (plus a jitter up to ``max_kill_timeout_jitter``, drawn once): Envoy
  aborts the whole process; proxyd kills that worker, which the supervisor restarts on
  the same sockets. When at least max(2, ceil(workers × ``multikill_threshold``))
  workers are silent longer than ``multikill_timeout``, proxyd stops with an error, as
  Envoy's multikill ends the whole process.
* **main-thread watchdog** (:class:`MainThreadWatchdog`): a task in the master's loop
  touches a timestamp every half loop interval; a thread (not on trio's loop, so it runs
  while the loop is stuck) checks it and counts ``main_thread.watchdog_miss`` /
  ``server.main_thread.watchdog_miss`` (and mega), folded into the stats by the loop
  when it runs again. Past ``kill_timeout`` the master aborts (SIGABRT), as Envoy does;
  its workers see the channel close and exit, and systemd restarts the service.

Envoy's watchdog ``actions`` (extensions) are refused by the allow-list walk.
"""

from __future__ import annotations

import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from proxyd.log import get_logger

if TYPE_CHECKING:
    from proxyd.config.overload import Watchdog
    from proxyd.master.master import Master

log = get_logger("proxyd.master.watchdog")


@dataclass
class WatchState:
    """One watched loop's alerts: reset when it is heard from after the last alert."""

    miss_alerted: bool = False
    megamiss_alerted: bool = False
    last_alert: float = -1.0  # the last_heard time of the silence that was alerted


def worker_stat_names(concurrency: int) -> list[str]:
    names = ["workers.watchdog_miss", "workers.watchdog_mega_miss"]
    for i in range(concurrency):
        names += [f"server.worker_{i}.watchdog_miss", f"server.worker_{i}.watchdog_mega_miss"]
    return names


MAIN_THREAD_STATS = (
    "main_thread.watchdog_miss",
    "main_thread.watchdog_mega_miss",
    "server.main_thread.watchdog_miss",
    "server.main_thread.watchdog_mega_miss",
)


def alerts(state: WatchState, wd: Watchdog, last_heard: float, now: float) -> tuple[bool, bool]:
    """(miss, megamiss) newly due for a loop last heard from at ``last_heard``; sans-IO."""
    if state.last_alert < last_heard:
        state.miss_alerted = state.megamiss_alerted = False
    silent = now - last_heard
    miss = megamiss = False
    if wd.miss_s > 0 and silent > wd.miss_s and not state.miss_alerted:
        state.miss_alerted = miss = True
        state.last_alert = last_heard
    if wd.megamiss_s > 0 and silent > wd.megamiss_s and not state.megamiss_alerted:
        state.megamiss_alerted = megamiss = True
        state.last_alert = last_heard
    return miss, megamiss


def kill_timeout(wd: Watchdog) -> float:
    """kill_timeout plus Envoy's jitter, drawn once; 0 when disabled."""
    if wd.kill_s <= 0:
        return 0.0
    return wd.kill_s + (
        random.uniform(0, wd.max_kill_jitter_s) if wd.max_kill_jitter_s > 0 else 0.0
    )


class WorkerWatchdog:
    def __init__(self, master: Master) -> None:
        self.master = master
        master.stats.ensure_counters(worker_stat_names(master.options.concurrency))

    async def run(self) -> None:
        wd = None
        kill_s = 0.0
        while True:
            current = self.master.loaded.watchdogs.worker
            if current is not wd:  # first, or a reload changed it
                wd, kill_s = current, kill_timeout(current)
            await trio.sleep(wd.loop_interval_s)
            if not self.master.draining:
                self.step(wd, kill_s, trio.current_time())

    def step(self, wd: Watchdog, kill_s: float, now: float) -> None:
        stats = self.master.stats
        silent_past_multikill = []
        for worker in list(self.master.workers.processes()):
            if not worker.alive or not worker.ready.is_set() or worker.process is None:
                continue
            miss, megamiss = alerts(worker.watchdog, wd, worker.last_heard, now)
            if miss:
                stats.add_counter("workers.watchdog_miss")
                stats.add_counter(f"server.worker_{worker.id}.watchdog_miss")
            if megamiss:
                stats.add_counter("workers.watchdog_mega_miss")
                stats.add_counter(f"server.worker_{worker.id}.watchdog_mega_miss")
            silent = now - worker.last_heard
            if kill_s > 0 and silent > kill_s:
                log.error(
                    "watchdog_kill", worker_id=worker.id, pid=worker.pid,
                    silent_s=round(silent, 3), kill_timeout_s=kill_s,
                )  # fmt: skip
                worker.process.kill()
                continue
            if wd.multikill_s > 0 and silent > wd.multikill_s:
                silent_past_multikill.append(worker)
        registered = self.master.options.concurrency
        needed = max(2, math.ceil(registered * wd.multikill_threshold_percent / 100.0))
        if wd.multikill_s > 0 and len(silent_past_multikill) >= needed:
            self.master.fatal(
                f"watchdog multikill: {len(silent_past_multikill)} of {registered} workers "
                f"silent for more than {wd.multikill_s:g} s"
            )


class MainThreadWatchdog:
    """The master loop's own watchdog: a touch task on the loop, a checking thread."""

    def __init__(self, master: Master) -> None:
        self.master = master
        self._touched = time.monotonic()
        # Misses and megamisses: seen by the thread (only it writes), and counted in
        # the stats by the loop (only it writes).
        self._seen = [0, 0]
        self._counted = [0, 0]
        self._stop = threading.Event()
        master.stats.ensure_counters(MAIN_THREAD_STATS)

    async def run(self) -> None:
        thread = threading.Thread(target=self._check, name="proxyd-main-watchdog", daemon=True)
        thread.start()
        try:
            while True:
                self._touched = time.monotonic()
                self._fold()
                await trio.sleep(self.master.loaded.watchdogs.main_thread.loop_interval_s / 2)
        finally:
            self._stop.set()

    def _fold(self) -> None:
        seen = list(self._seen)
        misses, megamisses = seen[0] - self._counted[0], seen[1] - self._counted[1]
        if misses or megamisses:
            self._counted = seen
            stats = self.master.stats
            for prefix in ("main_thread.", "server.main_thread."):
                stats.add_counter(prefix + "watchdog_miss", misses)
                stats.add_counter(prefix + "watchdog_mega_miss", megamisses)

    def _check(self) -> None:
        state = WatchState()
        wd = self.master.loaded.watchdogs.main_thread
        kill_s = kill_timeout(wd)
        while not self._stop.wait(wd.loop_interval_s):
            current = self.master.loaded.watchdogs.main_thread
            if current is not wd:  # a reload changed it
                wd, kill_s = current, kill_timeout(current)
            touched, now = self._touched, time.monotonic()
            miss, megamiss = alerts(state, wd, touched, now)
            self._seen[0] += miss
            self._seen[1] += megamiss
            if kill_s > 0 and now - touched > kill_s:
                log.critical(
                    "watchdog_kill", thread="main_thread", silent_s=round(now - touched, 3)
                )
                os.kill(os.getpid(), signal.SIGABRT)
                return
