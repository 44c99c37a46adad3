"""Slow start: a host's weight ramps up over a window after it joins (Envoy's
``slow_start_config`` of ROUND_ROBIN and LEAST_REQUEST).

Envoy's formula (``EdfLoadBalancerBase::applySlowStartFactor``): while a host has been
in its healthy state for less than ``slow_start_window``, its weight is scaled by::

    max(min_weight_percent, time_factor ** (1 / aggression))
    time_factor = max(elapsed_ms, 1) / window_ms

(``time_factor`` itself when aggression is 1; an aggression that is not above 0, or not
a number, counts as 1, as Envoy logs and does). A host is in slow start from when it
joined the cluster, or, on a cluster with active health checks, from when a check last
turned it healthy: the master stamps that moment on the endpoint
(``Endpoint.active_since``, CLOCK_MONOTONIC seconds, shared by every process on the
machine; 0: not in slow start) and the balancer reads the clock at each pick of an
earliest-deadline-first schedule, as Envoy's does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SlowStart:
    """A cluster's slow start: its window (seconds), aggression and minimum weight
    fraction (min_weight_percent / 100)."""

    window_s: float
    aggression: float = 1.0
    min_weight: float = 0.1

    def factor(self, elapsed_s: float) -> float:
        """What a host's weight is multiplied by ``elapsed_s`` seconds after it entered
        slow start (1.0 once the window is over)."""
        window_ms = int(self.window_s * 1000)
        elapsed_ms = int(elapsed_s * 1000)
        if elapsed_ms >= window_ms:
            return 1.0
        time_factor = max(elapsed_ms, 1) / window_ms
        aggression = self.aggression
        if not aggression > 0.0 or math.isnan(aggression):
            aggression = 1.0
        if aggression != 1.0:
            time_factor = time_factor ** (1.0 / aggression)
        return max(time_factor, self.min_weight)

    def in_window(self, active_since: float, now: float) -> bool:
        """Whether a host stamped ``active_since`` is in slow start at ``now``."""
        return active_since > 0.0 and now - active_since < self.window_s
