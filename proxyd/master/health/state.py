"""The health of one host under active checking: Envoy's state machine, without I/O.

:class:`HostHealth` is Envoy's ``ActiveHealthCheckSession`` bookkeeping
(``health_checker_base_impl.cc``): feed it each check's :class:`Result` with
:meth:`HostHealth.record`, and it says whether the host's health changed
(:class:`Transition`); :func:`next_interval` says how long to wait before the next
check. The rules, all Envoy's:

* a host starts unhealthy (``FAILED_ACTIVE_HC``); the **first** check that passes makes
  it healthy at once, later ones need ``healthy_threshold`` passes in a row;
* a healthy host turns unhealthy after ``unhealthy_threshold`` network failures
  (connect refused or reset, timeout) or retriable statuses in a row, and **at once**
  on any other failure (an unexpected HTTP status);
* a timeout while the host is unhealthy adds the ``ACTIVE_HC_TIMEOUT`` flag; any other
  result clears it;
* the next check waits ``interval`` (a passing check), ``unhealthy_interval`` (a
  failing one), ``healthy_edge_interval`` / ``unhealthy_edge_interval`` while a change
  is pending (some passes or failures seen, threshold not reached yet), or the
  no-traffic intervals while the cluster has never made an upstream connection; plus
  the jitter.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from proxyd.epoch import HealthCheck


class Result(enum.Enum):
    """What one check found (Envoy's HealthCheckFailureType, plus success)."""

    SUCCESS = "success"
    # The host answered, wrongly (e.g. an HTTP status not in expected_statuses).
    ACTIVE_FAILURE = "active"
    # An HTTP status in retriable_statuses: counts toward unhealthy_threshold.
    RETRIABLE_FAILURE = "retriable"
    # Connect refused, connection reset or closed before an answer.
    NETWORK_FAILURE = "network"
    # No answer within the timeout.
    TIMEOUT = "timeout"

    @property
    def is_network(self) -> bool:
        return self in (Result.NETWORK_FAILURE, Result.TIMEOUT)


class Transition(enum.Enum):
    """Envoy's HealthTransition."""

    UNCHANGED = "unchanged"
    CHANGED = "changed"
    # Passes (or failures) seen, but not enough yet to change the host's health.
    CHANGE_PENDING = "pending"


@dataclass
class HostHealth:
    """Health bookkeeping for one host. Starts unhealthy, before its first check."""

    healthy: bool = False
    timed_out: bool = False  # Envoy's ACTIVE_HC_TIMEOUT flag
    first_check: bool = True
    num_healthy: int = 0
    num_unhealthy: int = 0

    def record(self, result: Result, hc: HealthCheck) -> Transition:
        """Apply one check's result; how the host's health changed."""
        if result is Result.SUCCESS:
            return self._success(hc)
        return self._failure(result, hc)

    def _success(self, hc: HealthCheck) -> Transition:
        self.num_unhealthy = 0
        transition = Transition.UNCHANGED
        if not self.healthy:
            self.num_healthy += 1
            if self.first_check or self.num_healthy >= hc.healthy_threshold:
                self.healthy = True
                self.timed_out = False
                self.num_healthy = 0
                transition = Transition.CHANGED
            else:
                transition = Transition.CHANGE_PENDING
        self.first_check = False
        return transition

    def _failure(self, result: Result, hc: HealthCheck) -> Transition:
        self.num_healthy = 0
        transition = Transition.UNCHANGED
        if self.healthy:
            self.num_unhealthy += 1
            immediate = result is Result.ACTIVE_FAILURE
            if immediate or self.num_unhealthy >= hc.unhealthy_threshold:
                self.healthy = False
                self.num_unhealthy = 0
                transition = Transition.CHANGED
            else:
                transition = Transition.CHANGE_PENDING
        self.timed_out = result is Result.TIMEOUT and not self.healthy
        self.first_check = False
        return transition

    def flags(self) -> tuple[str, ...]:
        """Envoy's health flag names for this host's active-check state."""
        out: list[str] = []
        if not self.healthy:
            out.append("failed_active_hc")
            if self.timed_out:
                out.append("active_hc_timeout")
        return tuple(out)


def base_interval(
    hc: HealthCheck, after_success: bool, transition: Transition, has_traffic: bool
) -> float:
    """Envoy's HealthCheckerImplBase::interval, before jitter, in seconds."""
    pending = transition is Transition.CHANGE_PENDING
    if not has_traffic:
        if after_success and not pending:
            return hc.no_traffic_healthy_interval_s
        return hc.no_traffic_interval_s
    if after_success:
        return hc.healthy_edge_interval_s if pending else hc.interval_s
    return hc.unhealthy_edge_interval_s if pending else hc.unhealthy_interval_s


def with_jitter(hc: HealthCheck, base_s: float, rng: random.Random, jitter_s: float) -> float:
    """Envoy's intervalWithJitter: add up to ``interval_jitter_percent`` of the base and
    up to ``jitter_s``, in whole milliseconds; never less than 1 ms."""
    base_ms = int(round(base_s * 1000))
    percent_mod = hc.interval_jitter_percent * base_ms // 100
    if percent_mod > 0:
        base_ms += rng.randrange(percent_mod)
    jitter_ms = int(round(jitter_s * 1000))
    if jitter_ms > 0:
        base_ms += rng.randrange(jitter_ms)
    return max(1, base_ms) / 1000


def next_interval(
    hc: HealthCheck,
    result: Result,
    transition: Transition,
    has_traffic: bool,
    rng: random.Random,
) -> float:
    """Seconds until the next check after a check with ``result``."""
    base = base_interval(hc, result is Result.SUCCESS, transition, has_traffic)
    return with_jitter(hc, base, rng, hc.interval_jitter_s)


def initial_delay(hc: HealthCheck, rng: random.Random) -> float:
    """Before the first check: 0, or up to ``initial_jitter`` (Envoy's onInitialInterval)."""
    if hc.initial_jitter_s <= 0:
        return 0.0
    return with_jitter(hc, 0.0, rng, hc.initial_jitter_s)
