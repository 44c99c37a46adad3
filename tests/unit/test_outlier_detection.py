"""Outlier detection decisions with values only: outcome runs and times in, ejections out.

Expected behaviour is Envoy's (outlier_detection_impl.cc): see the docstring of
proxyd.master.outlier.detector.
"""

from __future__ import annotations

import copy
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import yaml

from proxyd.config import compile_bootstrap
from proxyd.epoch import Cluster, Endpoint, Epoch, OutlierDetection
from proxyd.errors import ConfigError
from proxyd.master.outlier import OutlierDetector
from proxyd.master.outlier.detector import ClusterDetector, success_rate_threshold
from proxyd.stats import StatsStore
from proxyd.worker.outcomes import (
    CONNECT_FAILED,
    ERROR_5XX,
    GATEWAY_ERROR,
    OK,
    RESET,
    TIMEOUT,
    OutcomeLog,
    OutcomeStore,
)

HOSTS = [f"10.0.0.{i}:80" for i in range(1, 6)]


def detector(n_hosts: int = 2, **kw: Any) -> tuple[ClusterDetector, Counter[str]]:
    stats: Counter[str] = Counter()
    d = ClusterDetector(OutlierDetection(**kw), lambda s: stats.update([s]))
    d.set_hosts(HOSTS[:n_hosts])
    return d, stats


A, B = HOSTS[0], HOSTS[1]


# -- the worker's log ---------------------------------------------------------------------


def test_outcome_log_is_run_length_in_order() -> None:
    log = OutcomeLog()
    for status in (200, 204, 500, 503, 502, 404):
        log.response(status)
    log.connect_failed()
    log.connect_failed()
    log.reset()
    log.timeout()
    assert log.take() == [OK, 2, ERROR_5XX, 1, GATEWAY_ERROR, 2, OK, 1, CONNECT_FAILED, 2, RESET, 1, TIMEOUT, 1]  # fmt: skip
    assert log.take() == []


def test_outcome_store_reports_only_hosts_with_outcomes() -> None:
    store = OutcomeStore()
    store.log("c", A).response(500)
    store.log("c", B)
    assert store.log("c", A) is store.log("c", A)
    assert store.report() == {"c": {A: [ERROR_5XX, 1]}}
    assert store.report() == {}


# -- consecutive detectors ------------------------------------------------------------------


def test_consecutive_5xx_ejects_at_the_threshold() -> None:
    d, stats = detector(consecutive_5xx=3, max_ejection_percent=50)
    d.record(A, [ERROR_5XX, 2], 0.0)
    assert not d.is_ejected(A)
    d.record(A, [ERROR_5XX, 1], 0.1)
    assert d.is_ejected(A) and not d.is_ejected(B)
    assert d.changed
    assert stats["ejections_detected_consecutive_5xx"] == 1
    assert stats["ejections_enforced_consecutive_5xx"] == 1
    assert stats["ejections_enforced_total"] == 1
    assert stats["ejections_total"] == 1 and stats["ejections_consecutive_5xx"] == 1
    assert d.ejections_active == 1


def test_a_success_breaks_the_streak() -> None:
    d, _ = detector(consecutive_5xx=3, max_ejection_percent=50)
    d.record(A, [ERROR_5XX, 2, OK, 1, ERROR_5XX, 2], 0.0)
    assert not d.is_ejected(A)
    d.record(A, [OK, 1], 0.0)  # a second worker's report: still no streak of 3
    d.record(A, [ERROR_5XX, 2], 0.0)
    assert not d.is_ejected(A)
    d.record(A, [ERROR_5XX, 1], 0.0)
    assert d.is_ejected(A)


def test_streak_spans_reports_of_two_workers() -> None:
    d, _ = detector(consecutive_5xx=4, max_ejection_percent=50)
    d.record(A, [OK, 10, ERROR_5XX, 2], 0.0)
    d.record(A, [ERROR_5XX, 2], 0.0)
    assert d.is_ejected(A)


def test_gateway_errors_count_as_5xx_and_the_first_threshold_wins() -> None:
    d, stats = detector(
        consecutive_5xx=3, consecutive_gateway_failure=5,
        enforcing_consecutive_gateway_failure=100, max_ejection_percent=50,
    )  # fmt: skip
    d.record(A, [GATEWAY_ERROR, 5], 0.0)
    assert d.is_ejected(A)
    assert stats["ejections_enforced_consecutive_5xx"] == 1
    assert stats["ejections_detected_consecutive_gateway_failure"] == 0  # already ejected


def test_gateway_failure_detected_but_not_enforced_by_default() -> None:
    d, stats = detector(consecutive_5xx=100, consecutive_gateway_failure=2, max_ejection_percent=50)
    d.record(A, [GATEWAY_ERROR, 4], 0.0)
    assert not d.is_ejected(A)
    # Each detection resets the counter: two detections in four errors.
    assert stats["ejections_detected_consecutive_gateway_failure"] == 2
    assert stats["ejections_enforced_consecutive_gateway_failure"] == 0
    assert stats["ejections_enforced_total"] == 0


def test_a_plain_5xx_breaks_a_gateway_streak() -> None:
    d, stats = detector(
        consecutive_5xx=100, consecutive_gateway_failure=2,
        enforcing_consecutive_gateway_failure=100, max_ejection_percent=50,
    )  # fmt: skip
    d.record(A, [GATEWAY_ERROR, 1, ERROR_5XX, 1, GATEWAY_ERROR, 1], 0.0)
    assert not d.is_ejected(A)
    d.record(A, [GATEWAY_ERROR, 1], 0.0)
    assert d.is_ejected(A)
    assert stats["ejections_enforced_consecutive_gateway_failure"] == 1


@pytest.mark.parametrize("kind", [CONNECT_FAILED, RESET, TIMEOUT])
def test_local_origin_errors_are_gateway_errors_without_the_split(kind: int) -> None:
    d, stats = detector(consecutive_5xx=3, max_ejection_percent=50)
    d.record(A, [kind, 3], 0.0)
    assert d.is_ejected(A)
    assert stats["ejections_enforced_consecutive_5xx"] == 1


def test_split_local_origin_failures_have_their_own_counter() -> None:
    d, stats = detector(
        split_external_local_origin_errors=True, consecutive_5xx=2,
        consecutive_local_origin_failure=3, max_ejection_percent=50,
    )  # fmt: skip
    d.record(A, [CONNECT_FAILED, 2, OK, 1, CONNECT_FAILED, 2], 0.0)
    assert not d.is_ejected(A)  # the connected request reset the local streak
    d.record(A, [CONNECT_FAILED, 1], 0.0)
    assert d.is_ejected(A)
    assert stats["ejections_enforced_consecutive_local_origin_failure"] == 1
    assert stats["ejections_detected_consecutive_5xx"] == 0


def test_split_reset_after_connect_is_a_success_then_a_failure() -> None:
    d, _ = detector(
        split_external_local_origin_errors=True, consecutive_local_origin_failure=2,
        max_ejection_percent=50,
    )  # fmt: skip
    d.record(A, [RESET, 10, TIMEOUT, 10], 0.0)
    assert not d.is_ejected(A)  # each connect success restarts the count
    d.record(A, [CONNECT_FAILED, 1], 0.0)
    assert d.is_ejected(A)
    one, _ = detector(
        split_external_local_origin_errors=True, consecutive_local_origin_failure=1,
        max_ejection_percent=50,
    )  # fmt: skip
    one.record(A, [TIMEOUT, 1], 0.0)
    assert one.is_ejected(A)


def test_split_5xx_is_still_counted_as_5xx() -> None:
    d, stats = detector(split_external_local_origin_errors=True, consecutive_5xx=2, max_ejection_percent=50)  # fmt: skip
    d.record(A, [CONNECT_FAILED, 4], 0.0)
    assert not d.is_ejected(A)  # local failures are not 5xx once split (threshold 5)
    d.record(A, [ERROR_5XX, 2], 0.0)
    assert d.is_ejected(A)
    assert stats["ejections_enforced_consecutive_5xx"] == 1


def test_unknown_host_is_ignored() -> None:
    d, stats = detector(consecutive_5xx=1)
    d.record("10.9.9.9:80", [ERROR_5XX, 5], 0.0)
    assert not stats and not d.changed


# -- ejection limits, enforcement, timing ---------------------------------------------------


def test_max_ejection_percent_and_always_eject_one_host() -> None:
    d, stats = detector(consecutive_5xx=1)  # default 10 %: one of two hosts is 50 %
    d.record(A, [ERROR_5XX, 1], 0.0)
    assert not d.is_ejected(A)
    assert stats["ejections_overflow"] == 1 and stats["ejections_detected_consecutive_5xx"] == 1
    d, stats = detector(consecutive_5xx=1, always_eject_one_host=True)
    d.record(A, [ERROR_5XX, 1], 0.0)
    d.record(B, [ERROR_5XX, 1], 0.0)
    assert d.is_ejected(A) and not d.is_ejected(B)
    assert stats["ejections_overflow"] == 1
    d, _ = detector(n_hosts=4, consecutive_5xx=1, max_ejection_percent=50)
    for h in HOSTS[:4]:
        d.record(h, [ERROR_5XX, 1], 0.0)
    assert d.ejections_active == 2


def test_enforcing_zero_detects_without_ejecting() -> None:
    d, stats = detector(consecutive_5xx=2, enforcing_consecutive_5xx=0, max_ejection_percent=50)
    d.record(A, [ERROR_5XX, 6], 0.0)
    assert not d.is_ejected(A)
    assert stats["ejections_detected_consecutive_5xx"] == 3
    assert stats["ejections_total"] == 3 and stats["ejections_enforced_total"] == 0


def test_enforcing_percentage_is_a_probability() -> None:
    stats: Counter[str] = Counter()
    cfg = OutlierDetection(consecutive_5xx=1, enforcing_consecutive_5xx=30, max_ejection_percent=100)  # fmt: skip
    d = ClusterDetector(cfg, lambda s: stats.update([s]), random.Random(7))
    d.set_hosts([A])
    now = 0.0
    for _ in range(1000):
        d.record(A, [ERROR_5XX, 1], now)
        if d.is_ejected(A):
            now += 1000.0
            d.tick(now)  # back in service (and the backoff decays)
            now += 1000.0
            d.tick(now)
    assert stats["ejections_detected_consecutive_5xx"] == 1000
    assert 200 < stats["ejections_enforced_consecutive_5xx"] < 400


def test_ejection_time_grows_with_each_ejection_up_to_the_max() -> None:
    d, _ = detector(
        consecutive_5xx=1, base_ejection_time_s=2.0, max_ejection_time_s=5.0,
        interval_s=1.0, max_ejection_percent=50,
    )  # fmt: skip
    d.record(A, [ERROR_5XX, 1], 0.5)
    d.tick(1.0)
    d.tick(2.0)
    assert d.is_ejected(A)  # 1.5 s of 2 s
    d.tick(3.0)
    assert not d.is_ejected(A)
    # Counters were reset on the way back: one more error is not enough... unless the
    # threshold is 1, as here: ejected again at once, now for 2 × 2 s.
    d.record(A, [ERROR_5XX, 1], 3.0)
    assert d.is_ejected(A)
    d.tick(6.0)
    assert d.is_ejected(A)
    d.tick(7.0)
    assert not d.is_ejected(A)
    d.record(A, [ERROR_5XX, 1], 7.0)  # third: min(3 × 2 s, 5 s) = 5 s
    d.tick(11.0)
    assert d.is_ejected(A)
    d.tick(12.0)
    assert not d.is_ejected(A)


def test_backoff_decays_while_the_host_stays_in() -> None:
    d, _ = detector(consecutive_5xx=1, base_ejection_time_s=2.0, interval_s=1.0, max_ejection_percent=50)  # fmt: skip
    m = d.hosts[A]
    d.record(A, [ERROR_5XX, 1], 0.0)
    d.tick(2.0)
    assert not d.is_ejected(A) and m.backoff == 1
    d.tick(2.5)  # back for less than an interval: no change
    assert m.backoff == 1
    d.tick(3.0)
    assert m.backoff == 0
    d.record(A, [ERROR_5XX, 1], 3.0)  # ejected for base time again
    d.tick(5.0)
    assert not d.is_ejected(A)


def test_counters_reset_when_the_host_comes_back() -> None:
    d, _ = detector(consecutive_5xx=3, base_ejection_time_s=1.0, max_ejection_percent=50)
    d.record(A, [ERROR_5XX, 5], 0.0)  # ejected at 3, two more while out
    d.tick(1.0)
    assert not d.is_ejected(A)
    d.record(A, [ERROR_5XX, 2], 1.0)
    assert not d.is_ejected(A)


def test_jitter_adds_up_to_max_ejection_time_jitter() -> None:
    stats: Counter[str] = Counter()
    cfg = OutlierDetection(consecutive_5xx=1, base_ejection_time_s=2.0, max_ejection_time_jitter_s=1.0, max_ejection_percent=50)  # fmt: skip
    times = set()
    for seed in range(20):
        d = ClusterDetector(cfg, lambda s: stats.update([s]), random.Random(seed))
        d.set_hosts([A, B])
        d.record(A, [ERROR_5XX, 1], 0.0)
        times.add(d.ejection_time(d.hosts[A]))
    assert all(2.0 <= t <= 3.0 for t in times) and len(times) > 5


def test_removed_host_no_longer_counts_as_ejected() -> None:
    d, _ = detector(consecutive_5xx=1, max_ejection_percent=50)
    d.record(A, [ERROR_5XX, 1], 0.0)
    assert d.ejections_active == 1
    d.set_hosts([B, HOSTS[2]])
    assert d.ejections_active == 0 and not d.is_ejected(A)


# -- success rate and failure percentage ----------------------------------------------------


def test_success_rate_threshold_is_envoys_example() -> None:
    assert success_rate_threshold([50, 100, 100, 100, 100], 1.9) == pytest.approx(52.0)


def _interval(d: ClusterDetector, rates: dict[str, tuple[int, int]], now: float) -> None:
    """One interval of traffic (successes, 5xx per host), then the tick."""
    for host, (ok, bad) in rates.items():
        d.record(host, [OK, ok] + ([ERROR_5XX, bad] if bad else []), now)
    d.tick(now + 10.0)


def test_success_rate_ejects_the_outlier() -> None:
    d, stats = detector(n_hosts=5, consecutive_5xx=1000, max_ejection_percent=20)
    rates = {h: (100, 0) for h in HOSTS}
    rates[HOSTS[4]] = (50, 50)
    _interval(d, rates, 0.0)
    assert d.is_ejected(HOSTS[4])
    assert [h for h in HOSTS if d.is_ejected(h)] == [HOSTS[4]]
    assert stats["ejections_detected_success_rate"] == 1
    assert stats["ejections_enforced_success_rate"] == 1
    assert d.hosts[HOSTS[0]].success_rate == 100.0


def test_success_rate_needs_enough_hosts_with_enough_volume() -> None:
    d, stats = detector(n_hosts=5, consecutive_5xx=1000, max_ejection_percent=20)
    rates = {h: (100, 0) for h in HOSTS}
    rates[HOSTS[3]] = (50, 0)  # below success_rate_request_volume (100)
    rates[HOSTS[4]] = (50, 50)
    _interval(d, rates, 0.0)
    assert not any(d.is_ejected(h) for h in HOSTS)
    assert stats["ejections_detected_success_rate"] == 0
    # Only the last full interval counts: an idle interval forgets the errors.
    d.tick(30.0)
    assert d.hosts[HOSTS[4]].success_rate == -1.0


def test_failure_percentage_ejects_when_enforced() -> None:
    d, stats = detector(
        n_hosts=5, consecutive_5xx=1000, max_ejection_percent=100,
        enforcing_failure_percentage=100, success_rate_minimum_hosts=100,
    )  # fmt: skip
    rates = {h: (60, 0) for h in HOSTS}
    rates[HOSTS[0]] = (5, 55)  # 91.7 % failures ≥ 85
    rates[HOSTS[1]] = (10, 50)  # 83.3 %: stays
    _interval(d, rates, 0.0)
    assert [h for h in HOSTS if d.is_ejected(h)] == [HOSTS[0]]
    assert stats["ejections_enforced_failure_percentage"] == 1
    assert stats["ejections_detected_failure_percentage"] == 1


def test_failure_percentage_detected_only_by_default() -> None:
    d, stats = detector(n_hosts=5, consecutive_5xx=1000, max_ejection_percent=100, success_rate_minimum_hosts=100)  # fmt: skip
    rates = {h: (60, 0) for h in HOSTS}
    rates[HOSTS[0]] = (5, 55)
    _interval(d, rates, 0.0)
    assert not d.is_ejected(HOSTS[0])
    assert stats["ejections_detected_failure_percentage"] == 1


def test_local_origin_success_rate_when_split() -> None:
    d, stats = detector(
        n_hosts=5, split_external_local_origin_errors=True, consecutive_local_origin_failure=1000,
        max_ejection_percent=20,
    )  # fmt: skip
    for h in HOSTS[:4]:
        d.record(h, [OK, 200], 0.0)
    bad = HOSTS[4]
    for _ in range(100):
        d.record(bad, [OK, 1, CONNECT_FAILED, 1], 0.0)
    d.tick(10.0)
    assert d.is_ejected(bad)
    assert stats["ejections_enforced_local_origin_success_rate"] == 1
    assert d.hosts[bad].local_success_rate == pytest.approx(50.0)


# -- the master's manager -------------------------------------------------------------------


def test_manager_applies_ejections_to_the_epoch() -> None:
    od = OutlierDetection(consecutive_5xx=2, max_ejection_percent=50, interval_s=0.05, base_ejection_time_s=0.1)  # fmt: skip
    eps = (Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80))
    epoch = Epoch(1, (), (Cluster("c", "STATIC", 1.0, "ROUND_ROBIN", eps, outlier_detection=od),))
    stats = StatsStore()

    async def main() -> None:
        det = OutlierDetector(stats)
        first = det.apply(epoch)
        assert first is epoch
        det.add_report({"c": {"10.0.0.1:80": [ERROR_5XX, 2]}, "other": {"x:1": [0, 1]}})
        with trio.fail_after(1):
            await det.wait_changed()
        decided = det.apply(epoch)
        assert [e.ejected for e in decided.clusters[0].endpoints] == [True, False]
        assert stats.gauge("cluster.c.outlier_detection.ejections_active") == 1
        assert stats.counter("cluster.c.outlier_detection.ejections_enforced_consecutive_5xx") == 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(det.run)
            with trio.fail_after(2):
                await det.wait_changed()  # back after the ejection time
            nursery.cancel_scope.cancel()
        assert not any(e.ejected for e in det.apply(decided).clusters[0].endpoints)
        off = Epoch(2, (), (Cluster("c", "STATIC", 1.0, "ROUND_ROBIN", eps),))
        assert det.apply(off) is off
        assert "cluster.c.outlier_detection.ejections_active" not in stats.gauges()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# -- configuration --------------------------------------------------------------------------

GOOD: dict[str, Any] = yaml.safe_load(
    (Path(__file__).parent / "config_corpus" / "good-full.yaml").read_text()
)
PATH = "static_resources.clusters[0].outlier_detection"


def _compile(od: dict[str, Any], **cluster_fields: Any) -> OutlierDetection | None:
    data = copy.deepcopy(GOOD)
    c = data["static_resources"]["clusters"][0]
    c.pop("health_checks", None)
    c.update(cluster_fields, outlier_detection=od)
    return compile_bootstrap(data, "conf.yaml").epoch_template.clusters[0].outlier_detection


def test_config_defaults_are_envoys() -> None:
    assert _compile({}) == OutlierDetection()
    od = _compile({"base_ejection_time": "400s", "consecutive_5xx": 0, "interval": "0.5s"})
    assert od is not None
    assert od.max_ejection_time_s == 400.0 and od.consecutive_5xx == 0 and od.interval_s == 0.5


def test_config_every_field() -> None:
    od = _compile(
        {
            "consecutive_5xx": 3, "interval": "1s", "base_ejection_time": "2s",
            "max_ejection_percent": 50, "enforcing_consecutive_5xx": 90,
            "enforcing_success_rate": 80, "success_rate_minimum_hosts": 3,
            "success_rate_request_volume": 10, "success_rate_stdev_factor": 1000,
            "consecutive_gateway_failure": 4, "enforcing_consecutive_gateway_failure": 70,
            "split_external_local_origin_errors": True, "consecutive_local_origin_failure": 6,
            "enforcing_consecutive_local_origin_failure": 60,
            "enforcing_local_origin_success_rate": 50, "failure_percentage_threshold": 40,
            "enforcing_failure_percentage": 30, "enforcing_failure_percentage_local_origin": 20,
            "failure_percentage_minimum_hosts": 2, "failure_percentage_request_volume": 7,
            "max_ejection_time": "9s", "max_ejection_time_jitter": "0.5s",
            "always_eject_one_host": True, "successful_active_health_check_uneject_host": False,
        }
    )  # fmt: skip
    assert od == OutlierDetection(
        3, 1.0, 2.0, 50, 90, 80, 3, 10, 1000, 4, 70, True, 6, 60, 50, 40, 30, 20, 2, 7,
        9.0, 0.5, True, False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("od", "cluster_fields", "where", "reason"),
    [
        ({"max_ejection_time": "1s", "base_ejection_time": "2s"}, {}, "max_ejection_time", "cannot be smaller than base_ejection_time"),
        ({"max_ejection_percent": 101}, {}, "max_ejection_percent", "less than or equal to 100"),
        ({"interval": "0s"}, {}, "interval", "greater than 0s"),
        ({"monitors": [{"name": "x"}]}, {}, "monitors", "field not supported by proxyd"),
        ({"max_ejection_time_jitter": "-1s"}, {}, "max_ejection_time_jitter", "must not be negative"),
    ],
)  # fmt: skip
def test_config_errors(
    od: dict[str, Any], cluster_fields: dict[str, Any], where: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _compile(od, **cluster_fields)
    assert info.value.path == f"{PATH}.{where}"
    assert reason in info.value.reason


@pytest.mark.parametrize(("od", "uneject"), [({}, True), ({"successful_active_health_check_uneject_host": False}, False)])  # fmt: skip
def test_config_health_checks_with_outlier_detection(od: dict[str, Any], uneject: bool) -> None:
    hc = [{"timeout": "1s", "interval": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1, "tcp_health_check": {}}]  # fmt: skip
    compiled = _compile(od, health_checks=hc)
    assert compiled is not None
    assert compiled.successful_active_health_check_uneject_host is uneject


def test_a_failure_asks_for_an_early_report() -> None:
    """Only a failure outcome flags the store for the worker's early send; a report
    clears the flag."""
    from proxyd.worker.outcomes import OutcomeStore

    store = OutcomeStore()
    log = store.log("c", "127.0.0.1:80")
    log.response(200)
    assert not store.failures_pending
    log.response(503)
    assert store.failures_pending
    assert store.report() == {"c": {"127.0.0.1:80": [0, 1, 2, 1]}}
    assert not store.failures_pending
    log.connect_failed()
    assert store.failures_pending
