"""Envoy's outlier detector for one cluster, without I/O: outcomes and times in,
ejections out.

:class:`ClusterDetector` is Envoy's ``DetectorImpl`` with one :class:`HostMonitor`
(``DetectorHostMonitorImpl``) per host (``outlier_detection_impl.cc``). Feed it the
outcome runs workers report (:meth:`ClusterDetector.record`, see
:mod:`proxyd.worker.outcomes` for the kinds) and call :meth:`ClusterDetector.tick`
every ``interval``; read :meth:`ClusterDetector.is_ejected`. The rules, all Envoy's:

* **consecutive** detectors count on every outcome: a 5xx (``consecutive_5xx``), a
  502/503/504 (``consecutive_gateway_failure``), and with
  ``split_external_local_origin_errors`` a local-origin failure (connect failure,
  reset, timeout: ``consecutive_local_origin_failure``); without the split those map to
  503 and 504 and count as 5xx and gateway failures. A counter that reaches its
  threshold detects once; the detection resets it, and a host already ejected
  ignores it. Anything else resets the counters it breaks.
* on every **interval**: ejected hosts whose time is over come back (their counters
  reset); the **success rate** (``mean - stdev_factor/1000 × stdev`` over the hosts
  with ``success_rate_request_volume`` requests in the last interval, when at least
  ``success_rate_minimum_hosts`` have) and **failure percentage** (at least
  ``failure_percentage_threshold`` % failed, among ``failure_percentage_minimum_hosts``
  hosts with ``failure_percentage_request_volume`` requests) detectors run, for
  external and (when split) local-origin outcomes; the ejection multiplier of a host
  back for at least one interval goes down by one.
* an **ejection** happens when the ejected share including this host stays within
  ``max_ejection_percent`` (or none is ejected and ``always_eject_one_host``), and
  then with the ``enforcing_*`` probability; it lasts min(base_ejection_time ×
  multiplier, max_ejection_time) plus up to ``max_ejection_time_jitter``, where the
  multiplier goes up by one per ejection while base × multiplier < max + base.
* with ``successful_active_health_check_uneject_host`` (the default), an active health
  check that passes with the host healthy after it ends the host's ejection at once
  (:meth:`ClusterDetector.health_check_passed`); the ejection multiplier stays.

Stats go through ``count(name)`` with Envoy's names under ``outlier_detection.``:
``ejections_detected_<type>``, ``ejections_enforced_<type>``,
``ejections_enforced_total``, ``ejections_overflow`` and the deprecated
``ejections_total``, ``ejections_consecutive_5xx``, ``ejections_success_rate``.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from proxyd.epoch import OutlierDetection
from proxyd.worker.outcomes import CONNECT_FAILED, ERROR_5XX, GATEWAY_ERROR, OK

COUNTERS = (
    "ejections_consecutive_5xx",
    "ejections_detected_consecutive_5xx",
    "ejections_detected_consecutive_gateway_failure",
    "ejections_detected_success_rate",
    "ejections_detected_failure_percentage",
    "ejections_enforced_consecutive_5xx",
    "ejections_enforced_consecutive_gateway_failure",
    "ejections_enforced_success_rate",
    "ejections_enforced_failure_percentage",
    "ejections_detected_consecutive_local_origin_failure",
    "ejections_enforced_consecutive_local_origin_failure",
    "ejections_detected_local_origin_success_rate",
    "ejections_enforced_local_origin_success_rate",
    "ejections_detected_local_origin_failure_percentage",
    "ejections_enforced_local_origin_failure_percentage",
    "ejections_enforced_total",
    "ejections_overflow",
    "ejections_success_rate",
    "ejections_total",
    # Envoy 1.40 registers it too (degraded-host detection, not configurable here): 0.
    "ejections_detected_degradation",
)


class EjectionType(enum.Enum):
    """Envoy's OutlierEjectionType; the value is its stat name suffix."""

    CONSECUTIVE_5XX = "consecutive_5xx"
    CONSECUTIVE_GATEWAY_FAILURE = "consecutive_gateway_failure"
    CONSECUTIVE_LOCAL_ORIGIN_FAILURE = "consecutive_local_origin_failure"
    SUCCESS_RATE = "success_rate"
    SUCCESS_RATE_LOCAL_ORIGIN = "local_origin_success_rate"
    FAILURE_PERCENTAGE = "failure_percentage"
    FAILURE_PERCENTAGE_LOCAL_ORIGIN = "local_origin_failure_percentage"


# The counter each consecutive detector resets when it detects.
_COUNTER_OF = {
    EjectionType.CONSECUTIVE_5XX: "consecutive_5xx",
    EjectionType.CONSECUTIVE_GATEWAY_FAILURE: "consecutive_gateway",
    EjectionType.CONSECUTIVE_LOCAL_ORIGIN_FAILURE: "consecutive_local",
}


@dataclass
class Bucket:
    """Requests and successes in one interval (Envoy's SuccessRateAccumulatorBucket)."""

    total: int = 0
    success: int = 0


class HostMonitor:
    """What the detector knows of one host."""

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.consecutive_local = 0
        # Success-rate buckets: the interval being counted, and the last full one.
        self.external, self.local = Bucket(), Bucket()
        self.last_external, self.last_local = Bucket(), Bucket()
        self.ejected = False
        self.num_ejections = 0
        self.backoff = 0  # Envoy's ejectTimeBackoff: the ejection time multiplier
        self.last_ejection: float | None = None
        self.last_unejection: float | None = None
        self.jitter_s = 0.0
        # Shown by /clusters (-1: not computed in the last interval).
        self.success_rate = -1.0
        self.local_success_rate = -1.0

    def reset_consecutive(self) -> None:
        self.consecutive_5xx = self.consecutive_gateway = self.consecutive_local = 0


class ClusterDetector:
    """Outlier detection for the hosts of one cluster (keys: ``ip:port`` labels)."""

    def __init__(
        self,
        config: OutlierDetection,
        count: Callable[[str], None],
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.count = count
        self.rng = rng or random.Random()
        self.hosts: dict[str, HostMonitor] = {}
        # Set when a host was ejected or came back; the owner clears it.
        self.changed = False

    # -- hosts ------------------------------------------------------------------------

    def set_hosts(self, hosts: Iterable[str]) -> None:
        """The cluster's hosts now: monitors for new ones, gone ones forgotten."""
        wanted = list(dict.fromkeys(hosts))
        for host in list(self.hosts):
            if host not in wanted:
                del self.hosts[host]
        for host in wanted:
            if host not in self.hosts:
                self.hosts[host] = HostMonitor()

    def is_ejected(self, host: str) -> bool:
        monitor = self.hosts.get(host)
        return monitor is not None and monitor.ejected

    @property
    def ejections_active(self) -> int:
        return sum(1 for m in self.hosts.values() if m.ejected)

    # -- outcomes ---------------------------------------------------------------------

    def record(self, host: str, runs: list[int], now: float) -> None:
        """One worker's ``[kind, count, ...]`` runs for ``host``, in order."""
        monitor = self.hosts.get(host)
        if monitor is None:
            return  # the host left the cluster since the worker saw it
        split = self.config.split_external_local_origin_errors
        for i in range(0, len(runs) - 1, 2):
            kind, n = runs[i], runs[i + 1]
            if n <= 0:
                continue
            if kind in (OK, ERROR_5XX, GATEWAY_ERROR):
                if split:
                    self._local_success(monitor, n)
                self._http(monitor, kind, n, now)
            elif not split:
                # Local-origin errors as HTTP codes: 503 (connect failure, reset) or
                # 504 (timeout), both gateway errors.
                self._http(monitor, GATEWAY_ERROR, n, now)
            elif kind == CONNECT_FAILED:
                self._local_failures(monitor, n, now)
            else:  # RESET, TIMEOUT: connected (a local success), then failed
                self._local_success_then_failure(monitor, n, now)

    def _http(self, m: HostMonitor, kind: int, n: int, now: float) -> None:
        """Envoy's putHttpResponseCode, ``n`` times."""
        m.external.total += n
        if kind == OK:
            m.external.success += n
            m.consecutive_5xx = m.consecutive_gateway = 0
            return
        cfg = self.config
        if kind == GATEWAY_ERROR:
            self._advance(
                m, n, now,
                ("consecutive_gateway", cfg.consecutive_gateway_failure, EjectionType.CONSECUTIVE_GATEWAY_FAILURE),
                ("consecutive_5xx", cfg.consecutive_5xx, EjectionType.CONSECUTIVE_5XX),
            )  # fmt: skip
        else:
            m.consecutive_gateway = 0
            self._advance(
                m, n, now, ("consecutive_5xx", cfg.consecutive_5xx, EjectionType.CONSECUTIVE_5XX)
            )

    def _local_success(self, m: HostMonitor, n: int) -> None:
        m.local.total += n
        m.local.success += n
        m.consecutive_local = 0

    def _local_failures(self, m: HostMonitor, n: int, now: float) -> None:
        m.local.total += n
        threshold = self.config.consecutive_local_origin_failure
        self._advance(
            m, n, now,
            ("consecutive_local", threshold, EjectionType.CONSECUTIVE_LOCAL_ORIGIN_FAILURE),
        )  # fmt: skip

    def _local_success_then_failure(self, m: HostMonitor, n: int, now: float) -> None:
        """``n`` times: a local success (the counter back to 0), then a failure."""
        threshold = self.config.consecutive_local_origin_failure
        m.local.total += 2 * n
        m.local.success += n
        if threshold != 1:
            m.consecutive_local = 1
            return
        for _ in range(n):  # every pair detects; stop once the host is out
            m.consecutive_local = 1
            self._consecutive(m, EjectionType.CONSECUTIVE_LOCAL_ORIGIN_FAILURE, now)
            if m.ejected:
                m.consecutive_local = 1
                return

    def _advance(
        self, m: HostMonitor, n: int, now: float, *counters: tuple[str, int, EjectionType]
    ) -> None:
        """Add ``n`` to each counter, one event at a time in effect: a counter that
        reaches its threshold detects (gateway before 5xx, as Envoy posts them)."""
        while n > 0:
            step = n
            for attr, threshold, _type in counters:
                value = getattr(m, attr)
                if value < threshold:
                    step = min(step, threshold - value)
            reached = []
            for attr, threshold, kind in counters:
                value = getattr(m, attr)
                if value < threshold and value + step == threshold:
                    reached.append(kind)
                setattr(m, attr, value + step)
            n -= step
            for kind in reached:
                self._consecutive(m, kind, now)

    def _consecutive(self, m: HostMonitor, kind: EjectionType, now: float) -> None:
        """Envoy's onConsecutiveErrorWorker."""
        if m.ejected:
            return
        self.count(f"ejections_detected_{kind.value}")
        self._eject(m, kind, now)
        if kind is EjectionType.CONSECUTIVE_5XX:
            self.count("ejections_consecutive_5xx")  # deprecated, still counted
        setattr(m, _COUNTER_OF[kind], 0)

    # -- ejection ---------------------------------------------------------------------

    def _enforced(self, kind: EjectionType) -> bool:
        cfg = self.config
        percent = {
            EjectionType.CONSECUTIVE_5XX: cfg.enforcing_consecutive_5xx,
            EjectionType.CONSECUTIVE_GATEWAY_FAILURE: cfg.enforcing_consecutive_gateway_failure,
            EjectionType.CONSECUTIVE_LOCAL_ORIGIN_FAILURE: cfg.enforcing_consecutive_local_origin_failure,
            EjectionType.SUCCESS_RATE: cfg.enforcing_success_rate,
            EjectionType.SUCCESS_RATE_LOCAL_ORIGIN: cfg.enforcing_local_origin_success_rate,
            EjectionType.FAILURE_PERCENTAGE: cfg.enforcing_failure_percentage,
            EjectionType.FAILURE_PERCENTAGE_LOCAL_ORIGIN: cfg.enforcing_failure_percentage_local_origin,
        }[kind]  # fmt: skip
        # Envoy's featureEnabled: a random number mod 100 below the percentage.
        return percent >= 100 or (percent > 0 and self.rng.randrange(100) < percent)

    def _eject(self, m: HostMonitor, kind: EjectionType, now: float) -> None:
        """Envoy's ejectHost: the max_ejection_percent check, then enforcement."""
        cfg = self.config
        active = self.ejections_active
        ejected_percent = 100.0 * (active + 1) / len(self.hosts)
        allowed = ejected_percent <= min(100, cfg.max_ejection_percent)
        if cfg.always_eject_one_host and active == 0:
            allowed = True
        if not allowed:
            self.count("ejections_overflow")
            return
        if kind in (EjectionType.CONSECUTIVE_5XX, EjectionType.SUCCESS_RATE):
            self.count("ejections_total")  # deprecated, still counted
        if not self._enforced(kind):
            return
        self.count("ejections_enforced_total")
        self.count(f"ejections_enforced_{kind.value}")
        m.ejected = True
        m.num_ejections += 1
        m.last_ejection = now
        jitter_ms = int(round(cfg.max_ejection_time_jitter_s * 1000))
        m.jitter_s = self.rng.randint(0, jitter_ms) / 1000 if jitter_ms > 0 else 0.0
        if (
            m.backoff * cfg.base_ejection_time_s
            < cfg.max_ejection_time_s + cfg.base_ejection_time_s
        ):
            m.backoff += 1
        self.changed = True

    def ejection_time(self, m: HostMonitor) -> float:
        """How long ``m``'s current ejection lasts (before the interval rounds it up)."""
        cfg = self.config
        return min(cfg.base_ejection_time_s * m.backoff, cfg.max_ejection_time_s) + m.jitter_s

    def health_check_passed(self, host: str, now: float) -> None:
        """An active health check passed and left ``host`` healthy: with
        ``successful_active_health_check_uneject_host`` (Envoy's default) that ends
        its ejection, as Envoy's DetectorImpl does from the health checker's
        callback."""
        m = self.hosts.get(host)
        if m is not None and m.ejected and self.config.successful_active_health_check_uneject_host:
            self._uneject(m, now)

    def _uneject(self, m: HostMonitor, now: float) -> None:
        m.ejected = False
        m.reset_consecutive()
        m.last_unejection = now
        self.changed = True

    # -- the interval -----------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Envoy's onIntervalTimer: un-eject, swap buckets, run the rate detectors."""
        for m in self.hosts.values():
            if m.ejected and m.last_ejection is not None:
                if now - m.last_ejection >= self.ejection_time(m):
                    self._uneject(m, now)
            m.last_external, m.external = m.external, Bucket()
            m.last_local, m.local = m.local, Bucket()
            m.success_rate = m.local_success_rate = -1.0
        self._rates(local=False, now=now)
        self._rates(local=True, now=now)
        interval = self.config.interval_s
        for m in self.hosts.values():
            if (
                not m.ejected
                and m.last_unejection is not None
                and now - m.last_unejection >= interval
                and m.backoff
            ):
                m.backoff -= 1

    def _rates(self, local: bool, now: float) -> None:
        """Envoy's processSuccessRateEjections for external or local-origin outcomes."""
        cfg = self.config
        if len(self.hosts) < cfg.success_rate_minimum_hosts and len(self.hosts) < cfg.failure_percentage_minimum_hosts:  # fmt: skip
            return
        sr_hosts: list[tuple[HostMonitor, float]] = []
        fp_hosts: list[tuple[HostMonitor, float]] = []
        for m in self.hosts.values():
            if m.ejected:
                continue
            bucket = m.last_local if local else m.last_external
            if not bucket.total:
                continue
            rate = bucket.success * 100.0 / bucket.total
            if bucket.total >= min(cfg.success_rate_request_volume, cfg.failure_percentage_request_volume):  # fmt: skip
                if local:
                    m.local_success_rate = rate
                else:
                    m.success_rate = rate
            if bucket.total >= cfg.success_rate_request_volume:
                sr_hosts.append((m, rate))
            if bucket.total >= cfg.failure_percentage_request_volume:
                fp_hosts.append((m, rate))
        if sr_hosts and len(sr_hosts) >= cfg.success_rate_minimum_hosts:
            threshold = success_rate_threshold([r for _, r in sr_hosts], cfg.success_rate_stdev_factor / 1000.0)  # fmt: skip
            kind = EjectionType.SUCCESS_RATE_LOCAL_ORIGIN if local else EjectionType.SUCCESS_RATE
            for m, rate in sr_hosts:
                if rate < threshold:
                    self.count("ejections_success_rate")  # deprecated, still counted
                    self.count(f"ejections_detected_{kind.value}")
                    self._eject_unless_out(m, kind, now)
        if fp_hosts and len(fp_hosts) >= cfg.failure_percentage_minimum_hosts:
            kind = EjectionType.FAILURE_PERCENTAGE_LOCAL_ORIGIN if local else EjectionType.FAILURE_PERCENTAGE  # fmt: skip
            for m, rate in fp_hosts:
                if 100.0 - rate >= cfg.failure_percentage_threshold:
                    self.count(f"ejections_detected_{kind.value}")
                    self._eject_unless_out(m, kind, now)

    def _eject_unless_out(self, m: HostMonitor, kind: EjectionType, now: float) -> None:
        # Envoy calls ejectHost here without checking; a host ejected by the success
        # rate detector a moment ago cannot be ejected twice, so it is skipped.
        if not m.ejected:
            self._eject(m, kind, now)


def success_rate_threshold(rates: list[float], stdev_factor: float) -> float:
    """Envoy's successRateEjectionThreshold: mean - factor × (population) stdev.

    >>> success_rate_threshold([50, 100, 100, 100, 100], 1.9)
    52.0
    """
    mean = sum(rates) / len(rates)
    variance = sum((r - mean) ** 2 for r in rates) / len(rates)
    return mean - stdev_factor * math.sqrt(variance)
