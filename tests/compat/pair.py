"""One real Envoy and one proxyd on the same bootstrap, asked the same cases.

A compat scenario starts each proxy once and sends it all its cases (CI time: one process
pair per scenario, never one per case). :func:`run_pair` runs Envoy first, then proxyd,
with the same YAML; ``play`` sends the cases, given a function that names a listener's
port; ``pick`` keeps the stats the scenario compares (proxyd's workers report stats in
batches, so its side is read once it says what Envoy said, or after a few seconds,
and the test then shows the difference).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.compat.envoy_runner import EnvoyRunner
from tests.support import ProxydProcess, wait_for

PortOf = Callable[[str], int]


@dataclass
class Side:
    replies: dict[str, Any]
    stats: dict[str, int]


@dataclass
class Pair:
    envoy: Side
    proxyd: Side


def _no_stats(stats: dict[str, int]) -> dict[str, int]:
    return {}


def run_pair(
    text: str,
    workdir: Path,
    play: Callable[[PortOf], dict[str, Any]],
    pick: Callable[[dict[str, int]], dict[str, int]] = _no_stats,
    ready: Callable[[Callable[[], dict[str, int]]], bool] | None = None,
    stats_timeout: float = 5.0,
) -> Pair:
    """``ready``, when given, is waited for (on each proxy's stats) before playing:
    e.g. until active health checking has marked the hosts."""
    with EnvoyRunner(text) as envoy:
        if ready is not None:
            wait_for(lambda: ready(envoy.stats), timeout=10)
        envoy_side = Side(play(envoy.listener_port), pick(envoy.stats()))
    with ProxydProcess(workdir, text, concurrency=1) as p:
        if ready is not None:
            wait_for(lambda: ready(p.stats), timeout=10)
        replies = play(p.listener_port)
        try:
            wait_for(lambda: pick(p.stats()) == envoy_side.stats, timeout=stats_timeout)
        except TimeoutError:
            pass  # compared (and shown) by the test
        proxyd_side = Side(replies, pick(p.stats()))
    return Pair(envoy_side, proxyd_side)
